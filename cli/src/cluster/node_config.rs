//! `yr start`'s settings as one typed struct, [`StartConfig`], and where its values come from:
//! defaults < the settings file (`-c FILE`) < each `-s KEY=VALUE` in order < explicit flags.
//! `yr config template` prints the defaults as a commented TOML file; `yr config dump` prints
//! the effective settings of a `yr start` command line, in the same form.
//!
//! Keys are the flags' names without dashes (`shm-size`); openYuanrong's underscore spelling
//! (`shm_size`) is the same key. Invariants: an unknown key, in a file or in `--set`, is refused
//! naming it and the closest known key; a refused value names its key, the value and where it
//! was given; [`render`] of any config parses back to that config (the template to the
//! defaults); [`KEYS`] documents exactly the keys the struct has (a test checks both).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::component::EtcdAuthFlags;
use crate::config::{self, ConfigError};
use crate::defaults;

/// `yr start`'s command line. Every setting is also a key of [`StartConfig`] (`-c FILE`,
/// `-s KEY=VALUE`); a flag given here overrides both (see this module). Flags have no
/// defaults of their own: the defaults are [`StartConfig::default`]'s. Multi-word flags also
/// answer to openYuanrong's underscore spelling (`--master_address`).
#[derive(Args, Debug, Default)]
pub struct StartArgs {
    /// A settings file (TOML; `yr config template` prints one with every key and its default).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub(super) config: Option<PathBuf>,
    /// Override one setting, KEY=VALUE (VALUE a TOML literal, or text); repeatable. Applied over
    /// the file, under explicit flags.
    #[arg(short = 's', long = "set", value_name = "KEY=VALUE")]
    pub(super) set: Vec<String>,
    /// Start a master node: etcd, function master and this node's worker components. Without
    /// it the node is a worker that joins the master at --master_address; with it and
    /// --master_address, a standby master of that master's cluster (its etcd joins the
    /// cluster's etcd, and its function master takes over if the active one fails).
    #[arg(long, conflicts_with = "worker")]
    pub(super) master: bool,
    /// Start a worker node (the default role when a master address is given).
    #[arg(long)]
    pub(super) worker: bool,
    /// The master to join (openYuanrong's `http://IP:PORT`, or host:port), for a worker.
    #[arg(long, visible_alias = "master_address")]
    pub(super) master_address: Option<String>,
    /// The join token `yr start --master` printed (`yr token --join` on the master prints it
    /// again), for a worker.
    #[arg(long, visible_alias = "join_token")]
    pub(super) join_token: Option<String>,
    /// The cluster secret data workers prove to each other on their transfer ports (a file,
    /// mode 0600). A master creates `<session>/cluster-secret` unless given one; a worker node
    /// receives the master's when it joins, unless given one.
    #[arg(long, alias = "cluster_secret")]
    pub(super) cluster_secret: Option<PathBuf>,
    /// Use an existing etcd instead of starting one (comma-separated URLs).
    #[arg(long, alias = "etcd_endpoints")]
    pub(super) etcd_endpoints: Option<String>,
    /// How to reach that etcd (its CA, a client certificate, a user); a worker of such a
    /// cluster is given the same.
    #[command(flatten)]
    pub(super) etcd_auth: crate::component::EtcdAuthFlags,
    /// Session folder (default: <timestamp> in this user's session root, $XDG_RUNTIME_DIR/yr or
    /// /tmp/yr-<uid>).
    #[arg(long, alias = "session_dir")]
    pub(super) session_dir: Option<PathBuf>,
    /// `auto`: pick free ports (to run several nodes on one host); default: the standard ports.
    #[arg(long)]
    pub(super) ports: Option<String>,
    /// Shared memory for this node's data worker (default: a third of memory).
    #[arg(long, alias = "shm_size", value_parser = crate::util::size_arg)]
    pub(super) shm_size: Option<u64>,
    /// Allocate and map the data worker's shared memory at start (faster first puts).
    #[arg(long, alias = "prefault_shm")]
    pub(super) prefault_shm: bool,
    /// Encrypt the bytes of every object transfer this node takes part in (AES-256-GCM);
    /// default: transfers are authenticated at the handshake and travel in the clear.
    #[arg(long, alias = "encrypt_transfers")]
    pub(super) encrypt_transfers: bool,
    /// CPU this node offers, in millicores.
    #[arg(long)]
    pub(super) cpu: Option<u64>,
    /// Memory this node offers, in MiB.
    #[arg(long)]
    pub(super) memory: Option<u64>,
    /// Node labels, key=value, repeatable (added to the settings' labels).
    #[arg(long = "label")]
    pub(super) labels: Vec<String>,
    /// Custom resources, name=amount, repeatable (added to the settings' resources).
    #[arg(long = "resource")]
    pub(super) resources: Vec<String>,
    /// Stop stateless instances idle this long (ms), down to each function's minimum (master;
    /// default 60000).
    #[arg(long, alias = "idle_timeout_ms")]
    pub(super) idle_timeout_ms: Option<u64>,
    /// Address every service of this node listens on (default 127.0.0.1). The default keeps
    /// the node reachable from this host only; another address is announced with a warning.
    #[arg(long)]
    pub(super) bind: Option<Ipv4Addr>,
    /// Serve the REST services (master) over HTTPS with this PEM certificate chain (with
    /// --rest-tls-key); default plain HTTP.
    #[arg(long, alias = "rest_tls_cert")]
    pub(super) rest_tls_cert: Option<PathBuf>,
    /// The PEM private key of --rest-tls-cert.
    #[arg(long, alias = "rest_tls_key")]
    pub(super) rest_tls_key: Option<PathBuf>,
    /// Largest REST request body (master; default 64MiB).
    #[arg(long, alias = "max_body", value_parser = crate::util::size_arg)]
    pub(super) max_body: Option<u64>,
    /// The Python interpreter of this node's python3.x function processes; it must import the
    /// yr package (default: $YR_PYTHON, else the active virtual environment or the one `make`
    /// builds when the package is installed there, else `python3` on PATH).
    #[arg(long)]
    pub(super) python: Option<String>,
}

impl StartArgs {
    /// The node's effective settings: defaults, then the file, then `--set`, then the flags.
    pub fn resolve(&self) -> Result<StartConfig, ConfigError> {
        resolve(self)
    }
}

/// Which ports a node listens on (`ports = "standard"` or `"auto"` in a settings file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortMode {
    /// The standard ports ([`Ports::STANDARD`]).
    Standard,
    /// Free ports the executor picks, so several nodes can share a host.
    Auto,
}

/// Every setting of `yr start`, with its default.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct StartConfig {
    /// A master node (a new cluster) rather than a worker that joins one.
    pub master: bool,
    /// The master a worker joins (`http://IP:PORT` or host:port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_address: Option<String>,
    /// The cluster's join token (a worker).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
    /// The cluster secret's file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_secret: Option<PathBuf>,
    /// An existing etcd's endpoints (a list, or text separated by commas); none: a master
    /// starts its own.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "endpoint_list"
    )]
    pub etcd_endpoints: Option<Vec<String>>,
    /// The session folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_dir: Option<PathBuf>,
    /// `standard` or `auto`.
    pub ports: PortMode,
    /// The data worker's shared memory.
    #[serde(skip_serializing_if = "Option::is_none", with = "config::size::option")]
    pub shm_size: Option<u64>,
    pub prefault_shm: bool,
    /// Seal every object transfer this node takes part in.
    pub encrypt_transfers: bool,
    /// Millicores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u64>,
    /// MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub resources: BTreeMap<String, f64>,
    pub idle_timeout_ms: u64,
    pub bind: Ipv4Addr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rest_tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rest_tls_key: Option<PathBuf>,
    #[serde(with = "config::size")]
    pub max_body: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// How to reach an etcd given with `etcd-endpoints`: an `[etcd-auth]` table, as in the
    /// components' settings files. Last, because TOML puts tables after plain keys.
    pub etcd_auth: EtcdAuthFlags,
}

impl Default for StartConfig {
    fn default() -> Self {
        StartConfig {
            master: false,
            master_address: None,
            join_token: None,
            cluster_secret: None,
            etcd_endpoints: None,
            session_dir: None,
            ports: PortMode::Standard,
            shm_size: None,
            prefault_shm: false,
            encrypt_transfers: false,
            cpu: None,
            memory: None,
            labels: BTreeMap::new(),
            resources: BTreeMap::new(),
            idle_timeout_ms: defaults::IDLE_TIMEOUT_MS,
            bind: Ipv4Addr::LOCALHOST,
            rest_tls_cert: None,
            rest_tls_key: None,
            max_body: config::default_max_body(),
            python: None,
            etcd_auth: EtcdAuthFlags::default(),
        }
    }
}

/// `etcd-endpoints` as a list or as text separated by commas.
fn endpoint_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum E {
        Text(String),
        List(Vec<String>),
    }
    let list = match E::deserialize(d)? {
        E::Text(t) => vec![t],
        E::List(l) => l,
    };
    let joined = list.join(",");
    config::endpoints("etcd-endpoints", &joined)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(e.to_string()))
}

/// A key's documentation in the template: its name, what it means, and an example for a key
/// with no default value (shown commented out).
pub struct KeyDoc {
    pub name: &'static str,
    pub doc: &'static str,
    pub example: Option<&'static str>,
}

const fn key(name: &'static str, doc: &'static str, example: Option<&'static str>) -> KeyDoc {
    KeyDoc { name, doc, example }
}

/// The top-level keys, in the template's order.
pub const KEYS: &[KeyDoc] = &[
    key(
        "master",
        "Start a master node (a new cluster: etcd, function master and scheduler, REST services, \
         and this node's worker components). false: a worker that joins `master-address`.",
        None,
    ),
    key(
        "master-address",
        "The master a worker joins: openYuanrong's http://IP:PORT, or IP:PORT.",
        Some("\"http://10.0.0.1:22770\""),
    ),
    key(
        "join-token",
        "The join token `yr start --master` printed (`yr token --join` prints it again); a \
         worker needs it.",
        Some("\"<secret>.<hash>\""),
    ),
    key(
        "cluster-secret",
        "The cluster secret's file (mode 0600). Default: a master makes <session>/cluster-secret; \
         a worker receives the master's when it joins.",
        Some("\"/etc/yr/cluster-secret\""),
    ),
    key(
        "etcd-endpoints",
        "An existing etcd to use instead of starting one (master), as a list. Default: the \
         master starts its own; a worker uses its master's.",
        Some("[\"https://10.0.0.5:2379\"]"),
    ),
    key(
        "session-dir",
        "The session folder. Default: <timestamp> in this user's session root \
         ($XDG_RUNTIME_DIR/yr or /tmp/yr-<uid>), with a `latest` link.",
        Some("\"/var/run/yr/node1\""),
    ),
    key(
        "ports",
        "\"standard\": openYuanrong's ports (etcd 32379/32380, function master 22770, proxy \
         22772, agent 58866, frontend 8888, meta service 31182, data 31501); \"auto\": free ports, \
         so several nodes share a host.",
        None,
    ),
    key(
        "shm-size",
        "Shared memory of this node's data worker (bytes, or text with a unit). Default: a third \
         of memory.",
        Some("\"4GiB\""),
    ),
    key(
        "prefault-shm",
        "Allocate and map the shared memory at start (faster first puts).",
        None,
    ),
    key(
        "encrypt-transfers",
        "Encrypt the bytes of every object transfer this node takes part in (AES-256-GCM); by \
         default only the handshake is protected and bytes travel in the clear at wire speed.",
        None,
    ),
    key(
        "cpu",
        "CPU this node offers, in millicores. Default: every core.",
        Some("4000"),
    ),
    key(
        "memory",
        "Memory this node offers, in MiB. Default: all memory.",
        Some("8192"),
    ),
    key(
        "labels",
        "Node labels for affinity, name = \"value\".",
        None,
    ),
    key(
        "resources",
        "Custom resources this node offers, name = amount.",
        None,
    ),
    key(
        "idle-timeout-ms",
        "How long a stateless instance may sit idle before the scheduler stops it, down to its \
         function's minimum (master).",
        None,
    ),
    key(
        "bind",
        "The address every service of this node listens on. 127.0.0.1 keeps the node reachable \
         from this host only; other nodes need this host's address.",
        None,
    ),
    key(
        "rest-tls-cert",
        "Serve the REST services over HTTPS with this PEM certificate chain (with \
         rest-tls-key; master). Default: plain HTTP.",
        Some("\"/etc/yr/rest.pem\""),
    ),
    key(
        "rest-tls-key",
        "The PEM private key of rest-tls-cert.",
        Some("\"/etc/yr/rest.key\""),
    ),
    key("max-body", "The largest REST request body (master).", None),
    key(
        "python",
        "The interpreter of python3.x function processes; it must import the yr package. \
         Default: $YR_PYTHON, else the active virtual environment or the one `make` builds, \
         else python3 on PATH.",
        Some("\"/opt/venv/bin/python\""),
    ),
    key(
        "etcd-auth",
        "How to reach an etcd given with etcd-endpoints (its CA, a client certificate, a user).",
        None,
    ),
];

/// The keys of the `[etcd-auth]` table.
pub const ETCD_AUTH_KEYS: &[KeyDoc] = &[
    key(
        "etcd-ca",
        "The CA that signed etcd's server certificate (PEM): etcd is reached over TLS.",
        Some("\"/etc/etcd/ca.pem\""),
    ),
    key(
        "etcd-cert",
        "A client certificate for etcd (PEM, with etcd-key and etcd-ca).",
        Some("\"/etc/etcd/client.pem\""),
    ),
    key(
        "etcd-key",
        "The private key of etcd-cert (PEM).",
        Some("\"/etc/etcd/client.key\""),
    ),
    key(
        "etcd-user",
        "An etcd user (etcd's own authentication), with etcd-password-file.",
        Some("\"yr\""),
    ),
    key(
        "etcd-password-file",
        "The file holding etcd-user's password (one line).",
        Some("\"/etc/yr/etcd-password\""),
    ),
];

fn names(keys: &[KeyDoc]) -> Vec<&'static str> {
    keys.iter().map(|k| k.name).collect()
}

/// Spells every struct key of `t` as this crate does and refuses unknown ones: the top level,
/// and the `etcd-auth` table (labels and resources hold the user's own names, kept as given).
fn check_keys(t: toml::Table, origin: &str) -> Result<toml::Table, ConfigError> {
    let top = names(KEYS);
    let auth = names(ETCD_AUTH_KEYS);
    let mut out = toml::Table::new();
    for (k, v) in t {
        let n = config::normalize_key(&k);
        let Some(known) = top.iter().find(|x| **x == n) else {
            return Err(ConfigError::Unknown {
                suggestion: config::closest(&k, &top),
                key: k,
                origin: origin.into(),
            });
        };
        let v = match (*known, v) {
            ("etcd-auth", toml::Value::Table(inner)) => {
                let mut o = toml::Table::new();
                for (ik, iv) in inner {
                    let n = config::normalize_key(&ik);
                    if !auth.contains(&n.as_str()) {
                        return Err(ConfigError::Unknown {
                            suggestion: config::closest(&ik, &auth),
                            key: format!("etcd-auth.{ik}"),
                            origin: origin.into(),
                        });
                    }
                    o.insert(n, iv);
                }
                toml::Value::Table(o)
            }
            (_, v) => v,
        };
        out.insert(n, v);
    }
    Ok(out)
}

/// Deserializes the layered table; a refused value is reported with its key, its value and
/// where it was given (each key alone is tried against the defaults to find the culprit).
fn typed(t: toml::Table, origins: &BTreeMap<String, String>) -> Result<StartConfig, ConfigError> {
    match toml::Value::Table(t.clone()).try_into::<StartConfig>() {
        Ok(c) => Ok(c),
        Err(whole) => {
            for (k, v) in t {
                let mut one = toml::Table::new();
                one.insert(k.clone(), v.clone());
                if let Err(e) = toml::Value::Table(one).try_into::<StartConfig>() {
                    let key = KEYS
                        .iter()
                        .find(|d| d.name == k)
                        .map_or("config", |d| d.name);
                    return Err(ConfigError::Setting {
                        key,
                        value: v.to_string(),
                        origin: origins.get(&k).cloned().unwrap_or_default(),
                        problem: e.message().trim().to_string(),
                    });
                }
            }
            Err(ConfigError::invalid(
                "config",
                "",
                whole.message().trim().to_string(),
            ))
        }
    }
}

/// The effective settings of a `yr start` command line.
pub fn resolve(a: &StartArgs) -> Result<StartConfig, ConfigError> {
    let mut table = toml::Table::new();
    let mut origins = BTreeMap::new();
    if let Some(path) = &a.config {
        let origin = format!("in {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::invalid("config", path.display().to_string(), e.to_string())
        })?;
        let t: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError::invalid(
                "config",
                path.display().to_string(),
                format!("not TOML: {}", e.message()),
            )
        })?;
        let t = check_keys(t, &origin)?;
        for k in t.keys() {
            origins.insert(k.clone(), origin.clone());
        }
        config::merge(&mut table, t);
    }
    for entry in &a.set {
        let t = check_keys(config::set_entry(entry)?, "in --set")?;
        for k in t.keys() {
            origins.insert(k.clone(), format!("in --set {entry}"));
        }
        config::merge(&mut table, t);
    }
    let mut c = typed(table, &origins)?;
    apply_flags(a, &mut c)?;
    check_pairs(&c)?;
    Ok(c)
}

/// Explicit flags over the layered settings; repeatable flags add to the settings' maps.
fn apply_flags(a: &StartArgs, c: &mut StartConfig) -> Result<(), ConfigError> {
    fn set<T: Clone>(to: &mut Option<T>, from: &Option<T>) {
        if from.is_some() {
            to.clone_from(from);
        }
    }
    if a.master {
        c.master = true;
    }
    if a.worker {
        c.master = false;
    }
    set(&mut c.master_address, &a.master_address);
    set(&mut c.join_token, &a.join_token);
    set(&mut c.cluster_secret, &a.cluster_secret);
    if let Some(e) = &a.etcd_endpoints {
        c.etcd_endpoints = Some(config::endpoints("etcd-endpoints", e)?);
    }
    if a.etcd_auth.any() {
        c.etcd_auth = a.etcd_auth.clone();
    }
    set(&mut c.session_dir, &a.session_dir);
    if let Some(p) = &a.ports {
        c.ports = match p.as_str() {
            "auto" => PortMode::Auto,
            "standard" => PortMode::Standard,
            other => {
                return Err(ConfigError::invalid(
                    "ports",
                    other,
                    "expected `auto` (without --ports: the standard ports)",
                ))
            }
        };
    }
    set(&mut c.shm_size, &a.shm_size);
    if a.prefault_shm {
        c.prefault_shm = true;
    }
    if a.encrypt_transfers {
        c.encrypt_transfers = true;
    }
    set(&mut c.cpu, &a.cpu);
    set(&mut c.memory, &a.memory);
    c.labels.extend(config::key_values("label", &a.labels)?);
    c.resources
        .extend(config::amounts("resource", &a.resources)?);
    if let Some(ms) = a.idle_timeout_ms {
        c.idle_timeout_ms = ms;
    }
    if let Some(b) = a.bind {
        c.bind = b;
    }
    set(&mut c.rest_tls_cert, &a.rest_tls_cert);
    set(&mut c.rest_tls_key, &a.rest_tls_key);
    if let Some(m) = a.max_body {
        c.max_body = m;
    }
    set(&mut c.python, &a.python);
    Ok(())
}

/// Settings that only make sense together (the flags' parser checks the same for flags; a file
/// or `--set` reaches here without it).
fn check_pairs(c: &StartConfig) -> Result<(), ConfigError> {
    let pair = |field: &'static str, given: bool, needs: &str, has: bool| {
        if given && !has {
            Err(ConfigError::Missing {
                field,
                message: format!("{field} needs {needs} too"),
            })
        } else {
            Ok(())
        }
    };
    pair(
        "rest-tls-cert",
        c.rest_tls_cert.is_some(),
        "rest-tls-key",
        c.rest_tls_key.is_some(),
    )?;
    pair(
        "rest-tls-key",
        c.rest_tls_key.is_some(),
        "rest-tls-cert",
        c.rest_tls_cert.is_some(),
    )?;
    let e = &c.etcd_auth;
    pair(
        "etcd-cert",
        e.etcd_cert.is_some(),
        "etcd-key and etcd-ca",
        e.etcd_key.is_some() && e.etcd_ca.is_some(),
    )?;
    pair(
        "etcd-key",
        e.etcd_key.is_some(),
        "etcd-cert",
        e.etcd_cert.is_some(),
    )?;
    pair(
        "etcd-user",
        e.etcd_user.is_some(),
        "etcd-password-file",
        e.etcd_password_file.is_some(),
    )?;
    pair(
        "etcd-password-file",
        e.etcd_password_file.is_some(),
        "etcd-user",
        e.etcd_user.is_some(),
    )?;
    for k in c.labels.keys() {
        if k.is_empty() {
            return Err(ConfigError::invalid("label", "", "a label needs a name"));
        }
    }
    Ok(())
}

/// What [`render`] leaves out of its output.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Everything is printed (the template: it has none).
    Show,
    /// The join token is replaced by a comment (a dump may be pasted where others read it).
    Hide,
}

/// Writes `doc` as `#` comment lines of at most about 96 columns.
fn comment(out: &mut String, doc: &str) {
    let mut line = String::from("#");
    for word in doc.split_whitespace() {
        if line.len() + 1 + word.len() > 96 && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

/// One key of `table` (the serialized config) with its comment: its value, or, when it has
/// none, a commented example.
fn render_key(out: &mut String, d: &KeyDoc, table: &toml::Table, secrets: Secrets) {
    comment(out, d.doc);
    match table.get(d.name) {
        Some(_) if secrets == Secrets::Hide && d.name == "join-token" => {
            let _ = writeln!(out, "# {} = (given; not shown)", d.name);
        }
        Some(v) => {
            let _ = writeln!(out, "{} = {v}", d.name);
        }
        None => {
            let _ = writeln!(out, "# {} = {}", d.name, d.example.unwrap_or("\"\""));
        }
    }
    out.push('\n');
}

/// `c` as a commented TOML settings file, every key in [`KEYS`]'s order; it parses back to `c`
/// (with `Secrets::Show`).
pub fn render(c: &StartConfig, secrets: Secrets) -> String {
    let table = match toml::Value::try_from(c) {
        Ok(toml::Value::Table(t)) => t,
        // Every field serializes (a unit test renders a full config); nothing else to show.
        _ => toml::Table::new(),
    };
    let mut out = String::from(
        "# yr start settings (yr start -c FILE). Keys may also be spelt with underscores \
         (shm_size);\n# `-s KEY=VALUE` overrides one, and explicit flags override both.\n\n",
    );
    for d in KEYS.iter().filter(|d| d.name != "etcd-auth") {
        render_key(&mut out, d, &table, secrets);
    }
    if let Some(d) = KEYS.iter().find(|d| d.name == "etcd-auth") {
        comment(&mut out, d.doc);
        out.push_str("[etcd-auth]\n");
        let inner = match table.get("etcd-auth") {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => toml::Table::new(),
        };
        for d in ETCD_AUTH_KEYS {
            render_key(&mut out, d, &inner, secrets);
        }
    }
    out
}

/// Test support: `yr start`'s flags parsed as its command line is; panics if clap refuses them.
#[cfg(test)]
pub(super) fn start_args(flags: &[&str]) -> StartArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Start {
        #[command(flatten)]
        a: StartArgs,
    }
    match Start::try_parse_from(std::iter::once("yr-start").chain(flags.iter().copied())) {
        Ok(s) => s.a,
        Err(e) => panic!("{flags:?}: {e}"),
    }
}

/// `yr config`: the settings `yr start` takes.
#[derive(clap::Subcommand)]
pub enum ConfigCmd {
    /// Print a commented settings file with every key and its default (`yr start -c FILE`).
    Template,
    /// Print the effective settings of a `yr start` command line (same flags), as a settings
    /// file; the join token is not shown.
    Dump(Box<StartArgs>),
}

/// Runs `yr config ...`.
pub fn config(c: ConfigCmd) -> anyhow::Result<()> {
    let text = match c {
        ConfigCmd::Template => render(&StartConfig::default(), Secrets::Show),
        ConfigCmd::Dump(a) => render(&a.resolve()?, Secrets::Hide),
    };
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(flags: &[&str]) -> Result<StartConfig, ConfigError> {
        resolve(&start_args(flags))
    }

    fn file(text: &str) -> (tempfile::NamedTempFile, String) {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut f, text.as_bytes()).expect("write");
        let p = f.path().display().to_string();
        (f, p)
    }

    fn full() -> StartConfig {
        StartConfig {
            master: true,
            master_address: Some("http://10.0.0.1:22770".into()),
            join_token: Some("abc.def".into()),
            cluster_secret: Some("/s/secret".into()),
            etcd_endpoints: Some(vec!["https://e1:2379".into(), "https://e2:2379".into()]),
            session_dir: Some("/s".into()),
            ports: PortMode::Auto,
            shm_size: Some(1 << 30),
            prefault_shm: true,
            encrypt_transfers: true,
            cpu: Some(1500),
            memory: Some(2048),
            labels: [("zone".to_string(), "a".to_string())].into(),
            resources: [("gpu".to_string(), 2.0), ("fpga".to_string(), 0.5)].into(),
            idle_timeout_ms: 1500,
            bind: Ipv4Addr::new(10, 1, 2, 3),
            rest_tls_cert: Some("/c.pem".into()),
            rest_tls_key: Some("/c.key".into()),
            max_body: 1 << 20,
            python: Some("/venv/bin/python".into()),
            etcd_auth: EtcdAuthFlags {
                etcd_ca: Some("/e/ca.pem".into()),
                etcd_cert: Some("/e/c.pem".into()),
                etcd_key: Some("/e/c.key".into()),
                etcd_user: Some("yr".into()),
                etcd_password_file: Some("/e/pw".into()),
            },
        }
    }

    #[test]
    fn the_template_parses_back_to_the_defaults() {
        let t = render(&StartConfig::default(), Secrets::Show);
        let back: StartConfig = toml::from_str(&t).unwrap_or_else(|e| panic!("{e}\n{t}"));
        assert_eq!(back, StartConfig::default());
        // Every key is in it, set or commented out.
        for d in KEYS.iter().chain(ETCD_AUTH_KEYS) {
            assert!(
                t.lines().any(|l| l.starts_with(&format!("{} = ", d.name))
                    || l.starts_with(&format!("# {} = ", d.name))
                    || l == format!("[{}]", d.name)),
                "{} missing from the template:\n{t}",
                d.name
            );
        }
        // And a file is what its keys say: the template with the comments removed from every
        // example is a valid, non-default settings file.
        let uncommented: String = t
            .lines()
            .map(|l| {
                let known = KEYS
                    .iter()
                    .chain(ETCD_AUTH_KEYS)
                    .any(|d| l.starts_with(&format!("# {} = ", d.name)));
                if known {
                    l.trim_start_matches("# ")
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let examples: StartConfig =
            toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(examples.cpu, Some(4000));
        assert_eq!(examples.shm_size, Some(4 << 30));
    }

    #[test]
    fn a_rendered_config_parses_back_to_itself_and_documents_every_key() {
        let c = full();
        let t = render(&c, Secrets::Show);
        let back: StartConfig = toml::from_str(&t).unwrap_or_else(|e| panic!("{e}\n{t}"));
        assert_eq!(back, c);
        // KEYS lists exactly the struct's keys.
        let Ok(toml::Value::Table(table)) = toml::Value::try_from(&c) else {
            panic!("serializes as a table")
        };
        let mut got: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut want = names(KEYS);
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        let Some(toml::Value::Table(auth)) = table.get("etcd-auth") else {
            panic!("etcd-auth is a table")
        };
        let mut got: Vec<&str> = auth.keys().map(String::as_str).collect();
        let mut want = names(ETCD_AUTH_KEYS);
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        // A dump hides the join token.
        let hidden = render(&c, Secrets::Hide);
        assert!(!hidden.contains("abc.def"), "{hidden}");
        assert!(hidden.contains("# join-token = (given; not shown)"));
    }

    #[test]
    fn layers_apply_in_order_defaults_file_set_flags() {
        let (_f, path) = file(
            "master = true\ncpu = 1000\nmemory = 512\nshm_size = \"64MiB\"\n\
             labels = { zone = \"a\", rack = \"r1\" }\nports = \"auto\"\n",
        );
        let c = resolved(&["-c", &path]).expect("file");
        assert!(c.master);
        assert_eq!(
            (c.cpu, c.memory, c.shm_size),
            (Some(1000), Some(512), Some(64 << 20))
        );
        assert_eq!(c.ports, PortMode::Auto);
        assert_eq!(c.idle_timeout_ms, defaults::IDLE_TIMEOUT_MS, "a default");
        // --set over the file, in order; dotted keys reach into tables, which merge.
        let c = resolved(&[
            "-c",
            &path,
            "-s",
            "cpu=2000",
            "--set",
            "cpu=3000",
            "-s",
            "labels.zone=b",
            "-s",
            "bind=10.0.0.7",
            "-s",
            "master_address=http://10.0.0.1:22770",
        ])
        .expect("set");
        assert_eq!(c.cpu, Some(3000));
        assert_eq!(c.memory, Some(512));
        assert_eq!(c.labels.get("zone").map(String::as_str), Some("b"));
        assert_eq!(c.labels.get("rack").map(String::as_str), Some("r1"));
        assert_eq!(c.bind, Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(c.master_address.as_deref(), Some("http://10.0.0.1:22770"));
        // Explicit flags over both; repeatable flags add to the maps.
        let c = resolved(&[
            "-c", &path, "-s", "cpu=2000", "--cpu", "500", "--label", "zone=c", "--label",
            "gpu=yes", "--worker", "--ports", "standard",
        ])
        .expect("flags");
        assert_eq!(c.cpu, Some(500));
        assert!(!c.master, "--worker over the file's master = true");
        assert_eq!(c.ports, PortMode::Standard);
        assert_eq!(
            c.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
            ["gpu=yes", "rack=r1", "zone=c"]
        );
        // Without any layer: the defaults.
        assert_eq!(resolved(&[]).expect("none"), StartConfig::default());
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key_and_the_closest_known_one() {
        let (_f, path) = file("master = true\nshm-sise = \"1GiB\"\n");
        let e = resolved(&["-c", &path]).expect_err("unknown key");
        let text = e.to_string();
        assert!(text.contains("\"shm-sise\""), "{text}");
        assert!(text.contains(&path), "{text}");
        assert!(text.contains("did you mean \"shm-size\""), "{text}");
        let e = resolved(&["-s", "memroy=10"]).expect_err("unknown --set key");
        assert!(
            e.to_string().contains("\"memroy\"") && e.to_string().contains("\"memory\""),
            "{e}"
        );
        let e = resolved(&["-s", "etcd_auth.etcd_cafile=/x"]).expect_err("unknown inner key");
        assert!(e.to_string().contains("etcd-auth.etcd_cafile"), "{e}");
        assert!(e.to_string().contains("\"etcd-ca\""), "{e}");
        let e = resolved(&["-s", "frobnicate=1"]).expect_err("nothing close");
        assert!(e.to_string().contains("yr config template"), "{e}");
        // Underscores are openYuanrong's spelling of the same keys.
        let c = resolved(&[
            "-s",
            "idle_timeout_ms=5",
            "-s",
            "etcd_auth.etcd_user=u",
            "-s",
            "etcd_auth.etcd_password_file=/pw",
        ])
        .expect("underscores");
        assert_eq!(c.idle_timeout_ms, 5);
        assert_eq!(c.etcd_auth.etcd_user.as_deref(), Some("u"));
        // Label names are the user's own: kept as given.
        let c = resolved(&["-s", "labels.my_zone=a"]).expect("label");
        assert!(c.labels.contains_key("my_zone"));
    }

    #[test]
    fn bad_values_name_the_key_the_value_and_where_it_was_given() {
        let e = resolved(&["-s", "cpu=lots"]).expect_err("not a number");
        assert_eq!(e.field(), "cpu");
        let text = e.to_string();
        assert!(
            text.starts_with("cpu = \"lots\" (in --set cpu=lots)"),
            "{text}"
        );
        let (_f, path) = file("ports = \"fast\"\n");
        let e = resolved(&["-c", &path]).expect_err("bad ports");
        assert_eq!(e.field(), "ports");
        assert!(e.to_string().contains(&path), "{e}");
        assert!(e.to_string().contains("\"fast\""), "{e}");
        assert_eq!(
            resolved(&["-s", "shm-size=huge"]).map_err(|e| e.field()),
            Err("shm-size")
        );
        assert_eq!(
            resolved(&["-s", "bind=nowhere"]).map_err(|e| e.field()),
            Err("bind")
        );
        assert_eq!(
            resolved(&["-s", "etcd-endpoints=[]"]).map_err(|e| e.field()),
            Err("etcd-endpoints")
        );
        assert_eq!(
            resolved(&["-s", "rest-tls-cert=/c.pem"]).map_err(|e| e.field()),
            Err("rest-tls-cert")
        );
        assert_eq!(resolved(&["-s", "cpu"]).map_err(|e| e.field()), Err("set"));
        assert_eq!(
            resolved(&["--ports", "9000"]).map_err(|e| e.field()),
            Err("ports")
        );
        assert_eq!(
            resolved(&["--label", "zone"]).map_err(|e| e.field()),
            Err("label")
        );
        let (_f, path) = file("cpu = [");
        assert_eq!(
            resolved(&["-c", &path]).map_err(|e| e.field()),
            Err("config")
        );
        assert_eq!(
            resolved(&["-c", "/nonexistent/yr.toml"]).map_err(|e| e.field()),
            Err("config")
        );
    }

    #[test]
    fn endpoints_are_a_list_or_text() {
        let c = resolved(&["-s", "etcd-endpoints=\"https://a:1, https://b:2\""]).expect("text");
        assert_eq!(
            c.etcd_endpoints,
            Some(vec!["https://a:1".to_string(), "https://b:2".to_string()])
        );
        let c = resolved(&["-s", "etcd-endpoints=[\"https://a:1\"]"]).expect("list");
        assert_eq!(c.etcd_endpoints, Some(vec!["https://a:1".to_string()]));
        let c = resolved(&["-s", "resources.gpu=2", "-s", "resources.fpga=0.5"]).expect("amounts");
        assert_eq!(c.resources.get("gpu"), Some(&2.0));
        assert_eq!(c.resources.get("fpga"), Some(&0.5));
    }
}
