//! Functions as the services take them: the one rule for what a function name is (used by the
//! master when a function is registered and by the REST routes when a call names one), the one
//! rule for every name that becomes a path ([`check_path_name`]: instance IDs, node IDs, function
//! names in paths), and the validated forms of what a function spec carries.
//!
//! Proto messages stay the wire and storage format; they become these types where they enter a
//! service (`TryFrom`), so the code past that point never re-checks a field or compares an enum's
//! raw `i32`:
//! - [`Spec`]: a [`FunctionSpec`] with its defaults filled and every field checked, its
//!   `runtime` decoded as a [`Runtime`] (native executables, or Python with its lifecycle hooks);
//! - [`Scheduling`] and [`Affinity`]: [`SchedulingOptions`] with each rule's kind decoded.
//!
//! Invariant: `Spec::try_from(spec.proto().clone())` gives `spec` back (filling defaults is
//! idempotent), so a spec read back from etcd converts exactly as it did at deploy.

use yr_proto::{AffinityKind, FunctionSpec, LabelAffinity, Resources, SchedulingOptions};

use crate::error::Error;

/// The longest function name.
pub const MAX_NAME: usize = 128;

/// The runtime of native executables (the default).
pub const RUNTIME: &str = "posix-custom-runtime";

/// The runtimes a spec may name, as its refusal lists them.
pub const SUPPORTED_RUNTIMES: &str = "posix-custom-runtime, python3, python3.<minor> (python3.9)";

/// The environment keys that make a Python function a driver's task rather than a function
/// service, any one of them (`TASK_ENV` of `yr/worker.py`, which decides the same way).
pub const PY_TASK_ENV: [&str; 3] = ["YR_PY_KIND", "YR_PY_FUNCTION", "YR_PY_FUNCTION_REF"];

/// How long an initializer may run unless the spec says.
pub const DEFAULT_INITIALIZER_TIMEOUT_MS: u32 = 60_000;
/// How long a pre_stop hook may run unless the spec says.
pub const DEFAULT_PRE_STOP_TIMEOUT_MS: u32 = 10_000;
/// The longest pre_stop hook (openYuanrong's limit for `extendedTimeout.pre_stop`, 180 s): the
/// agent waits this long (plus a margin) before it kills a stopping process.
pub const MAX_PRE_STOP_TIMEOUT_MS: u32 = 180_000;

/// What starts a function's processes, decided by its `runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// An executable from the function's code, linked with the Rust runtime.
    Custom,
    /// A Python interpreter running `python -m yr.worker` in the code folder. The minor version
    /// the name carries is not enforced: the node's interpreter runs it (openYuanrong's bodies
    /// name `python3.9` and the like; any Python 3 the host has serves them).
    Python,
}

impl Runtime {
    /// The runtime a spec's `runtime` names, if it is one this version starts: exactly
    /// `posix-custom-runtime`, `python3`, or `python3.` followed by digits.
    pub fn parse(name: &str) -> Option<Runtime> {
        if name == RUNTIME {
            return Some(Runtime::Custom);
        }
        let minor = name.strip_prefix("python3")?;
        if minor.is_empty() {
            return Some(Runtime::Python);
        }
        let digits = minor.strip_prefix('.')?;
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then_some(Runtime::Python)
    }
}

/// Checks a Python handler name `module.function` (the module may be dotted: `pkg.mod.fn`): every
/// part a Python identifier. `field` names the spec field in the error.
fn check_python_handler(field: &str, handler: &str) -> Result<(), Error> {
    let identifier = |p: &str| {
        let mut cs = p.chars();
        cs.next().is_some_and(|c| c == '_' || c.is_alphabetic())
            && cs.all(|c| c == '_' || c.is_alphanumeric())
    };
    if !handler.contains('.') || !handler.split('.').all(identifier) {
        return Err(Error::invalid(
            field,
            format!("{handler:?} must be module.function (the file module.py in the code folder)"),
        ));
    }
    Ok(())
}

/// Checks a function name: 1-128 characters of a-z, A-Z, 0-9, '-', '_' or '@' ('@' admits
/// openYuanrong's function-service names, `0@service@func`). The error names the field `name`.
pub fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(name_char) {
        return Err(Error::invalid(
            "name",
            format!("{name:?} must be 1-{MAX_NAME} characters of a-z, A-Z, 0-9, '-', '_' or '@'"),
        ));
    }
    Ok(())
}

/// The longest name that may become one component of a path (`NAME_MAX` of Linux file systems).
pub const MAX_PATH_NAME: usize = 255;

/// The one rule for a name that becomes a path component (an instance ID in the agent's
/// `instances/<id>/`, a node ID, a session folder's name): 1-255 characters of a-z, A-Z, 0-9,
/// '-', '_', '@' or '.', not starting with '.'. So an accepted name joined to a folder is always
/// a direct child of it: no '/', no NUL, not `.` or `..`, and not hidden. Every function name
/// ([`check_name`]) passes it, so an instance ID built from one (`<function>-<hex>`) does too.
/// `field` names what is refused in the error.
pub fn check_path_name(field: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_PATH_NAME
        && !name.starts_with('.')
        && name.chars().all(|c| name_char(c) || c == '.');
    if !ok {
        return Err(Error::invalid(
            field,
            format!(
                "{name:?} must be 1-{MAX_PATH_NAME} characters of a-z, A-Z, 0-9, '-', '_', '@' \
                 or '.', not starting with '.' (it becomes a file name)"
            ),
        ));
    }
    Ok(())
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '@'
}

/// One label affinity rule with its kind decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    /// Required, preferred or anti.
    pub kind: AffinityKind,
    /// The node label the rule looks at.
    pub key: String,
    /// The label values that match; empty: any value of `key` matches.
    pub values: Vec<String>,
}

impl Affinity {
    /// Whether a node with `labels` matches this rule's key and values.
    pub fn matches(&self, labels: &std::collections::HashMap<String, String>) -> bool {
        match labels.get(&self.key) {
            Some(v) => self.values.is_empty() || self.values.iter().any(|x| x == v),
            None => false,
        }
    }
}

impl TryFrom<&LabelAffinity> for Affinity {
    type Error = Error;

    fn try_from(a: &LabelAffinity) -> Result<Affinity, Error> {
        let kind = AffinityKind::try_from(a.kind).map_err(|_| {
            Error::invalid(
                "affinity.kind",
                format!(
                    "{} is not an affinity kind (required, preferred, anti)",
                    a.kind
                ),
            )
        })?;
        Ok(Affinity {
            kind,
            key: a.key.clone(),
            values: a.values.clone(),
        })
    }
}

impl From<&Affinity> for LabelAffinity {
    fn from(a: &Affinity) -> LabelAffinity {
        LabelAffinity {
            kind: a.kind.into(),
            key: a.key.clone(),
            values: a.values.clone(),
        }
    }
}

/// Where an instance may and would rather run: [`SchedulingOptions`] with its rules decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scheduling {
    /// Label rules, in the order given.
    pub affinity: Vec<Affinity>,
    /// Prefer the node that runs the fewest instances of the same function.
    pub spread: bool,
    /// The caller's node, tried first unless spreading ("local first"); empty: none.
    pub preferred_node: String,
}

impl Scheduling {
    /// These options with a create request's `extra` added: its rules after these, spreading if
    /// either asks for it, and its preferred node if it names one.
    pub fn merged(&self, extra: Option<Scheduling>) -> Scheduling {
        let mut s = self.clone();
        if let Some(extra) = extra {
            s.affinity.extend(extra.affinity);
            s.spread |= extra.spread;
            if !extra.preferred_node.is_empty() {
                s.preferred_node = extra.preferred_node;
            }
        }
        s
    }
}

impl TryFrom<&SchedulingOptions> for Scheduling {
    type Error = Error;

    fn try_from(o: &SchedulingOptions) -> Result<Scheduling, Error> {
        let affinity = o
            .affinity
            .iter()
            .enumerate()
            .map(|(i, a)| {
                Affinity::try_from(a).map_err(|e| match e {
                    Error::InvalidArgument { reason, .. } => {
                        Error::invalid(format!("scheduling.affinity[{i}].kind"), reason)
                    }
                    other => other,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Scheduling {
            affinity,
            spread: o.spread,
            preferred_node: o.preferred_node.clone(),
        })
    }
}

impl From<&Scheduling> for SchedulingOptions {
    fn from(s: &Scheduling) -> SchedulingOptions {
        SchedulingOptions {
            affinity: s.affinity.iter().map(LabelAffinity::from).collect(),
            spread: s.spread,
            preferred_node: s.preferred_node.clone(),
        }
    }
}

/// A function spec with its defaults filled and its fields checked; read-only (it derefs to the
/// [`FunctionSpec`] it stores), so the checks cannot be undone after the conversion.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    proto: FunctionSpec,
    scheduling: Scheduling,
    /// `proto.runtime`, decoded (named apart so that `spec.runtime` stays the proto's string).
    decoded_runtime: Runtime,
}

impl Spec {
    /// The spec as stored in etcd and sent over the wire.
    pub fn proto(&self) -> &FunctionSpec {
        &self.proto
    }

    /// The stored form, given up.
    pub fn into_proto(self) -> FunctionSpec {
        self.proto
    }

    /// What starts the function's processes.
    pub fn runtime(&self) -> Runtime {
        self.decoded_runtime
    }

    /// The function's scheduling options, decoded.
    pub fn scheduling(&self) -> &Scheduling {
        &self.scheduling
    }

    /// The function's resources per instance (filled: never zero cpu or memory).
    pub fn resources(&self) -> Resources {
        self.proto.resources.clone().unwrap_or_default()
    }

    /// This spec as deployed at `now_ms`: a first deployment is created now (unless the spec
    /// says when); an update keeps the creation time of `previous` and bumps its revision.
    pub fn deployed(mut self, previous: Option<&FunctionSpec>, now_ms: u64) -> Spec {
        match previous {
            Some(old) => {
                self.proto.created_unix_ms = old.created_unix_ms;
                self.proto.revision = old.revision + 1;
            }
            None if self.proto.created_unix_ms == 0 => self.proto.created_unix_ms = now_ms,
            None => {}
        }
        self
    }
}

impl std::ops::Deref for Spec {
    type Target = FunctionSpec;

    fn deref(&self) -> &FunctionSpec {
        &self.proto
    }
}

impl TryFrom<FunctionSpec> for Spec {
    type Error = Error;

    /// Fills defaults and checks the spec; the error names the field.
    fn try_from(mut spec: FunctionSpec) -> Result<Spec, Error> {
        check_name(&spec.name)?;
        if spec.version.is_empty() {
            spec.version = "latest".into();
        }
        if spec.runtime.is_empty() {
            spec.runtime = RUNTIME.into();
        }
        let runtime = Runtime::parse(&spec.runtime).ok_or_else(|| {
            Error::invalid(
                "runtime",
                format!(
                    "{:?} is not supported (supported: {SUPPORTED_RUNTIMES})",
                    spec.runtime
                ),
            )
        })?;
        // A Python function may come without code (a driver's functions travel pickled).
        if spec.code_path.is_empty() && runtime == Runtime::Custom {
            return Err(Error::invalid("code_path", "is required"));
        }
        if !spec.code_path.is_empty() && !std::path::Path::new(&spec.code_path).is_absolute() {
            return Err(Error::invalid(
                "code_path",
                format!("{:?} must be an absolute path", spec.code_path),
            ));
        }
        if spec.handler.is_empty() {
            spec.handler = spec.name.clone();
        }
        match runtime {
            Runtime::Python => {
                // A function service names its handler as module.function; a Python driver's
                // functions carry their code themselves (pickled, in the environment keys
                // [`PY_TASK_ENV`], which is how `yr.worker` tells the two apart) and name it
                // freely.
                if !PY_TASK_ENV.iter().any(|k| spec.env.contains_key(*k)) {
                    check_python_handler("handler", &spec.handler)?;
                }
                for (field, hook) in [
                    ("initializer", &spec.initializer),
                    ("pre_stop", &spec.pre_stop),
                ] {
                    if !hook.is_empty() {
                        check_python_handler(field, hook)?;
                    }
                }
            }
            Runtime::Custom => {
                // Silently skipping a hook would lose what the user asked for.
                for (field, hook) in [
                    ("initializer", &spec.initializer),
                    ("pre_stop", &spec.pre_stop),
                ] {
                    if !hook.is_empty() {
                        return Err(Error::invalid(
                            field,
                            format!("{hook:?}: lifecycle hooks run only in python3 runtimes, not {RUNTIME}"),
                        ));
                    }
                }
            }
        }
        if spec.initializer.is_empty() {
            spec.initializer_timeout_ms = 0;
        } else if spec.initializer_timeout_ms == 0 {
            spec.initializer_timeout_ms = DEFAULT_INITIALIZER_TIMEOUT_MS;
        }
        if spec.pre_stop.is_empty() {
            spec.pre_stop_timeout_ms = 0;
        } else if spec.pre_stop_timeout_ms == 0 {
            spec.pre_stop_timeout_ms = DEFAULT_PRE_STOP_TIMEOUT_MS;
        } else if spec.pre_stop_timeout_ms > MAX_PRE_STOP_TIMEOUT_MS {
            return Err(Error::invalid(
                "pre_stop_timeout_ms",
                format!(
                    "{} is more than the longest pre_stop, {MAX_PRE_STOP_TIMEOUT_MS} ms",
                    spec.pre_stop_timeout_ms
                ),
            ));
        }
        let r = spec.resources.get_or_insert_with(Resources::default);
        if r.cpu_millis == 0 {
            r.cpu_millis = 100;
        }
        if r.memory_mib == 0 {
            r.memory_mib = 64;
        }
        if spec.concurrency == 0 {
            spec.concurrency = 1;
        }
        if spec.max_instances == 0 {
            spec.max_instances = spec.min_instances.max(8);
        }
        if spec.min_instances > spec.max_instances {
            return Err(Error::invalid(
                "min_instances",
                format!(
                    "{} is more than max_instances {}",
                    spec.min_instances, spec.max_instances
                ),
            ));
        }
        if spec.timeout_ms == 0 {
            spec.timeout_ms = 30_000;
        }
        let scheduling = spec
            .scheduling
            .as_ref()
            .map(Scheduling::try_from)
            .transpose()?
            .unwrap_or_default();
        Ok(Spec {
            proto: spec,
            scheduling,
            decoded_runtime: runtime,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["hello", "0@svc@func", "a-b_c", &"x".repeat(MAX_NAME)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a/b", "a:b", "é", &"x".repeat(MAX_NAME + 1)] {
            let e = check_name(bad).expect_err(bad);
            assert!(e.to_string().starts_with("name: "), "{e}");
        }
    }

    #[test]
    fn path_names() {
        for good in [
            "f-0a1b2c3d4e5f",
            "0@svc@f-1",
            "host.example.com-00abcd",
            "a..b",
            "x",
        ] {
            assert!(check_path_name("id", good).is_ok(), "{good}");
        }
        let long = "x".repeat(MAX_PATH_NAME + 1);
        for bad in [
            "", ".", "..", ".hidden", "../x", "a/b", "/abs", "a\0b", "a b", "é", &long,
        ] {
            let e = check_path_name("instance_id", bad).expect_err(bad);
            assert!(e.to_string().starts_with("instance_id: "), "{e}");
        }
    }

    proptest::proptest! {
        /// Any accepted name joined to a folder names a direct child of that folder.
        #[test]
        fn an_accepted_path_name_stays_inside_its_folder(name in "\\PC{0,40}|[a-zA-Z0-9._@/-]{0,40}") {
            if check_path_name("n", &name).is_ok() {
                let base = std::path::Path::new("/base/dir");
                let joined = base.join(&name);
                proptest::prop_assert_eq!(joined.parent(), Some(base));
                let mut parts = joined.components().skip(3);
                proptest::prop_assert!(matches!(parts.next(), Some(std::path::Component::Normal(n)) if n == name.as_str()));
                proptest::prop_assert!(parts.next().is_none());
            }
        }

        /// Every function name is a path name, and so is an instance ID made from one.
        #[test]
        fn function_names_are_path_names(name in "[a-zA-Z0-9_@-]{1,128}", hex in "[0-9a-f]{12}") {
            proptest::prop_assert!(check_name(&name).is_ok());
            proptest::prop_assert!(check_path_name("n", &name).is_ok());
            let id = format!("{name}-{hex}");
            proptest::prop_assert!(check_path_name("n", &id).is_ok());
        }
    }

    fn minimal() -> FunctionSpec {
        FunctionSpec {
            name: "f".into(),
            code_path: "/srv/f".into(),
            ..Default::default()
        }
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("not an invalid argument: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_filled_once() {
        let s = Spec::try_from(minimal()).expect("valid");
        assert_eq!(s.version, "latest");
        assert_eq!(s.runtime, RUNTIME);
        assert_eq!(s.handler, "f");
        assert_eq!(
            (s.resources().cpu_millis, s.resources().memory_mib),
            (100, 64)
        );
        assert_eq!(
            (s.concurrency, s.max_instances, s.timeout_ms),
            (1, 8, 30_000)
        );
        assert_eq!(
            s.created_unix_ms, 0,
            "the clock is the caller's: see deployed"
        );
        let again = Spec::try_from(s.proto().clone()).expect("a filled spec stays valid");
        assert_eq!(again, s);
        let big_min = Spec::try_from(FunctionSpec {
            min_instances: 12,
            ..minimal()
        })
        .expect("valid");
        assert_eq!(big_min.max_instances, 12);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (
                FunctionSpec {
                    name: "".into(),
                    ..minimal()
                },
                "name",
            ),
            (
                FunctionSpec {
                    runtime: "python2.7".into(),
                    ..minimal()
                },
                "runtime",
            ),
            (
                FunctionSpec {
                    runtime: "python3.9".into(),
                    handler: "demo".into(),
                    ..minimal()
                },
                "handler",
            ),
            (
                FunctionSpec {
                    runtime: "python3.9".into(),
                    handler: "demo.handler".into(),
                    pre_stop: "demo.".into(),
                    ..minimal()
                },
                "pre_stop",
            ),
            (
                FunctionSpec {
                    initializer: "demo.init".into(),
                    ..minimal()
                },
                "initializer",
            ),
            (
                FunctionSpec {
                    runtime: "python3".into(),
                    handler: "demo.handler".into(),
                    pre_stop: "demo.pre_stop".into(),
                    pre_stop_timeout_ms: MAX_PRE_STOP_TIMEOUT_MS + 1,
                    ..minimal()
                },
                "pre_stop_timeout_ms",
            ),
            (
                FunctionSpec {
                    code_path: "".into(),
                    ..minimal()
                },
                "code_path",
            ),
            (
                FunctionSpec {
                    code_path: "rel/x".into(),
                    ..minimal()
                },
                "code_path",
            ),
            (
                FunctionSpec {
                    min_instances: 3,
                    max_instances: 2,
                    ..minimal()
                },
                "min_instances",
            ),
            (
                FunctionSpec {
                    scheduling: Some(SchedulingOptions {
                        affinity: vec![
                            LabelAffinity::default(),
                            LabelAffinity {
                                kind: 9,
                                ..Default::default()
                            },
                        ],
                        ..Default::default()
                    }),
                    ..minimal()
                },
                "scheduling.affinity[1].kind",
            ),
        ];
        for (spec, field) in cases {
            let e = Spec::try_from(spec).expect_err(field);
            assert_eq!(field_of(e), field);
        }
    }

    #[test]
    fn runtimes_by_name() {
        for (name, want) in [
            ("posix-custom-runtime", Some(Runtime::Custom)),
            ("python3", Some(Runtime::Python)),
            ("python3.6", Some(Runtime::Python)),
            ("python3.11", Some(Runtime::Python)),
            ("python3.", None),
            ("python3.x", None),
            ("python3.9 ", None),
            ("python310", None),
            ("python2.7", None),
            ("python", None),
            ("node", None),
        ] {
            assert_eq!(Runtime::parse(name), want, "{name}");
        }
        let e = Spec::try_from(FunctionSpec {
            runtime: "node".into(),
            ..minimal()
        })
        .expect_err("node is not a runtime");
        let text = e.to_string();
        assert!(
            text.contains("\"node\"") && text.contains("python3") && text.contains(RUNTIME),
            "the refusal names the runtime and what is supported: {text}"
        );
    }

    #[test]
    fn python_specs_fill_their_hooks() {
        let s = Spec::try_from(FunctionSpec {
            runtime: "python3.9".into(),
            code_path: String::new(),
            handler: "pkg.demo.handler".into(),
            initializer: "demo.init".into(),
            pre_stop: "demo.pre_stop".into(),
            pre_stop_timeout_ms: 2_000,
            ..minimal()
        })
        .expect("a Python function needs no code path");
        assert_eq!(s.runtime(), Runtime::Python);
        assert_eq!(
            (s.initializer_timeout_ms, s.pre_stop_timeout_ms),
            (DEFAULT_INITIALIZER_TIMEOUT_MS, 2_000)
        );
        assert_eq!(Spec::try_from(s.proto().clone()).expect("still valid"), s);
        // Timeouts without their hook mean nothing and are dropped.
        let bare = Spec::try_from(FunctionSpec {
            runtime: "python3".into(),
            handler: "m.f".into(),
            initializer_timeout_ms: 5,
            pre_stop_timeout_ms: 5,
            ..minimal()
        })
        .expect("valid");
        assert_eq!(
            (bare.initializer_timeout_ms, bare.pre_stop_timeout_ms),
            (0, 0)
        );
        // A driver's functions name their handler freely.
        let task = Spec::try_from(FunctionSpec {
            runtime: "python3".into(),
            handler: "f".into(),
            code_path: String::new(),
            env: [("YR_PY_FUNCTION_REF".to_string(), "ab12".to_string())].into(),
            ..minimal()
        })
        .expect("valid");
        assert_eq!(task.handler, "f");
        assert_eq!(
            Spec::try_from(minimal()).expect("valid").runtime(),
            Runtime::Custom
        );
    }

    #[test]
    fn deploying_keeps_history() {
        let first = Spec::try_from(minimal()).expect("valid").deployed(None, 5);
        assert_eq!((first.created_unix_ms, first.revision), (5, 0));
        let second = Spec::try_from(minimal())
            .expect("valid")
            .deployed(Some(first.proto()), 9);
        assert_eq!((second.created_unix_ms, second.revision), (5, 1));
    }

    #[test]
    fn scheduling_round_trips_and_merges() {
        let o = SchedulingOptions {
            affinity: vec![LabelAffinity {
                kind: AffinityKind::AffinityAnti.into(),
                key: "gpu".into(),
                values: vec![],
            }],
            spread: false,
            preferred_node: "a".into(),
        };
        let s = Scheduling::try_from(&o).expect("valid");
        assert_eq!(s.affinity[0].kind, AffinityKind::AffinityAnti);
        assert_eq!(SchedulingOptions::from(&s), o);
        let extra = Scheduling {
            affinity: vec![Affinity {
                kind: AffinityKind::AffinityRequired,
                key: "zone".into(),
                values: vec!["x".into()],
            }],
            spread: true,
            preferred_node: String::new(),
        };
        let m = s.merged(Some(extra));
        assert_eq!(m.affinity.len(), 2);
        assert!(m.spread);
        assert_eq!(
            m.preferred_node, "a",
            "an empty preferred node keeps the function's"
        );
        assert_eq!(s.merged(None), s);
    }
}
