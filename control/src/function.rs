//! Functions as the services take them: the one rule for what a function name is (used by the
//! master when a function is registered and by the REST routes when a call names one), and the
//! validated forms of what a function spec carries.
//!
//! Proto messages stay the wire and storage format; they become these types where they enter a
//! service (`TryFrom`), so the code past that point never re-checks a field or compares an enum's
//! raw `i32`:
//! - [`Spec`]: a [`FunctionSpec`] with its defaults filled and every field checked;
//! - [`Scheduling`] and [`Affinity`]: [`SchedulingOptions`] with each rule's kind decoded.
//!
//! Invariant: `Spec::try_from(spec.proto().clone())` gives `spec` back (filling defaults is
//! idempotent), so a spec read back from etcd converts exactly as it did at deploy.

use yr_proto::{AffinityKind, FunctionSpec, LabelAffinity, Resources, SchedulingOptions};

use crate::error::Error;

/// The longest function name.
pub const MAX_NAME: usize = 128;

/// The only runtime this version starts.
pub const RUNTIME: &str = "posix-custom-runtime";

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
        if spec.runtime != RUNTIME {
            return Err(Error::invalid(
                "runtime",
                format!("{:?} is not supported ({RUNTIME} is)", spec.runtime),
            ));
        }
        if spec.code_path.is_empty() {
            return Err(Error::invalid("code_path", "is required"));
        }
        if !std::path::Path::new(&spec.code_path).is_absolute() {
            return Err(Error::invalid(
                "code_path",
                format!("{:?} must be an absolute path", spec.code_path),
            ));
        }
        if spec.handler.is_empty() {
            spec.handler = spec.name.clone();
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
                    runtime: "python3".into(),
                    ..minimal()
                },
                "runtime",
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
