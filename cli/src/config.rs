//! What the settings of `yr component` and `yr start` share: the error that names the setting it
//! refuses, the checks every kind of setting needs (a KEY=VALUE pair, an amount, an endpoint
//! list, a value that must not be empty), and sizes in settings files.
//!
//! Settings are named as on the command line, without the dashes (`shm-size`); a settings file
//! uses the same names as keys, so one name finds a setting in both. openYuanrong spells its
//! flags and keys with underscores (`--master_address`, `shm_size`): [`normalize_key`] makes
//! those the same names.
//!
//! Layered settings (`yr start -c FILE -s KEY=VALUE`) are built here as TOML tables: a file's
//! table, then each `--set` entry ([`set_entry`]) merged over it ([`merge`]); an unknown key is
//! refused naming the key and the closest known one ([`closest`]).

use std::collections::HashMap;
use std::fmt;

use crate::defaults;

/// A setting that failed validation, named by its flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The value given for `field` is refused, for `problem`.
    Invalid {
        /// The setting's name: its flag without the dashes, its key in a file.
        field: &'static str,
        /// The value as given.
        value: String,
        /// Why it is refused.
        problem: String,
    },
    /// A key of a settings file or of `--set` that names no setting.
    Unknown {
        /// The key as given.
        key: String,
        /// Where it was given: a file's path, or `--set`.
        origin: String,
        /// The known key closest to it, if any is close.
        suggestion: Option<&'static str>,
    },
    /// The value of `key` in a settings file or `--set` is refused, for `problem`.
    Setting {
        /// The setting's name (its key).
        key: &'static str,
        /// The value as given (TOML).
        value: String,
        /// Where it was given: a file's path, or `--set`.
        origin: String,
        /// Why it is refused.
        problem: String,
    },
    /// `field` (or one of the alternatives `message` names) must be given here.
    Missing {
        /// The setting's name: its flag without the dashes, its key in a file.
        field: &'static str,
        /// What to give, in the user's terms.
        message: String,
    },
}

impl ConfigError {
    /// The value `value` of `field` is refused for `problem`.
    pub fn invalid(
        field: &'static str,
        value: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            field,
            value: value.into(),
            problem: problem.into(),
        }
    }

    /// The name of the setting this error is about (`config` for a key that names none).
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::Invalid { field, .. } | ConfigError::Missing { field, .. } => field,
            ConfigError::Setting { key, .. } => key,
            ConfigError::Unknown { .. } => "config",
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid {
                field,
                value,
                problem,
            } => write!(f, "--{field} {value:?}: {problem}"),
            ConfigError::Unknown {
                key,
                origin,
                suggestion,
            } => {
                write!(f, "unknown setting {key:?} ({origin})")?;
                match suggestion {
                    Some(k) => write!(f, "; did you mean {k:?}?"),
                    None => f.write_str("; `yr config template` lists every setting"),
                }
            }
            ConfigError::Setting {
                key,
                value,
                origin,
                problem,
            } => write!(f, "{key} = {value} ({origin}): {problem}"),
            ConfigError::Missing { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// `KEY=VALUE` with a non-empty key.
pub fn key_value(field: &'static str, s: &str) -> Result<(String, String), ConfigError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(ConfigError::invalid(field, s, "expected KEY=VALUE")),
    }
}

/// Every item of a repeatable `KEY=VALUE` setting.
pub fn key_values(
    field: &'static str,
    items: &[String],
) -> Result<Vec<(String, String)>, ConfigError> {
    items.iter().map(|s| key_value(field, s)).collect()
}

/// A repeatable `NAME=AMOUNT` setting (custom resources), amounts as numbers.
pub fn amounts(field: &'static str, items: &[String]) -> Result<HashMap<String, f64>, ConfigError> {
    let mut out = HashMap::new();
    for s in items {
        let (k, v) = key_value(field, s)?;
        let n: f64 = v.parse().map_err(|_| {
            ConfigError::invalid(field, s.as_str(), format!("{v:?} is not a number"))
        })?;
        out.insert(k, n);
    }
    Ok(out)
}

/// A comma-separated list of endpoints, blanks dropped; at least one.
pub fn endpoints(field: &'static str, s: &str) -> Result<Vec<String>, ConfigError> {
    let list: Vec<String> = s
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if list.is_empty() {
        return Err(ConfigError::invalid(field, s, "names no endpoint"));
    }
    Ok(list)
}

/// A value that must not be empty (an address, an ID).
pub fn required(field: &'static str, s: String) -> Result<String, ConfigError> {
    if s.trim().is_empty() {
        return Err(ConfigError::invalid(field, s, "must not be empty"));
    }
    Ok(s)
}

/// A setting's name as this crate spells it: openYuanrong's underscores become dashes
/// (`shm_size` is `shm-size`).
pub fn normalize_key(key: &str) -> String {
    key.trim().replace('_', "-")
}

/// The name in `known` closest to `key` (a few edits away, or one containing the other), to
/// suggest for a misspelt setting.
pub fn closest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let key = normalize_key(key);
    let best = known
        .iter()
        .map(|k| (edit_distance(&key, k), *k))
        .min_by_key(|(d, _)| *d)?;
    if best.0 <= (key.len() / 3).max(2) {
        return Some(best.1);
    }
    known
        .iter()
        .find(|k| key.len() >= 3 && (k.contains(key.as_str()) || key.contains(**k)))
        .copied()
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// One `--set KEY=VALUE` as a TOML table: VALUE is a TOML literal (`2048`, `true`,
/// `"text"`, `{ zone = "a" }`), or else taken as text, so `-s bind=10.0.0.1` needs no quotes;
/// a dotted KEY reaches into a table (`-s labels.zone=a`).
pub fn set_entry(entry: &str) -> Result<toml::Table, ConfigError> {
    let refused = |problem: &str| ConfigError::invalid("set", entry, problem);
    let (key, value) = entry
        .split_once('=')
        .filter(|(k, _)| !k.trim().is_empty())
        .ok_or_else(|| refused("expected KEY=VALUE"))?;
    let key = key.trim();
    // A key is a bare TOML key, dotted or not: nothing that could end the key early.
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(refused(
            "KEY must be a setting's name (letters, digits, `-`, `_`, `.`)",
        ));
    }
    let value = value.trim();
    let literal = format!("{key} = {value}");
    if let Ok(t) = literal.parse::<toml::Table>() {
        return Ok(t);
    }
    let text = format!("{key} = {}", toml::Value::String(value.to_string()));
    text.parse::<toml::Table>()
        .map_err(|e| refused(&format!("not KEY=VALUE: {e}")))
}

/// Merges `over` into `base`: tables merge key by key, anything else replaces.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// [`defaults::MAX_BODY`] in bytes.
pub fn default_max_body() -> u64 {
    // A constant of this crate (a unit test parses it), not input.
    yr_datastore::parse_size(defaults::MAX_BODY).expect("defaults::MAX_BODY is a size")
}

/// A size in a settings file: a number of bytes, or text with a unit as on the command line
/// (`64MiB`).
pub mod size {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }

    /// Writes the size as text with the largest binary unit that divides it (`64MiB`), as a
    /// person would write it; a number of bytes if none does.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        match text(*v) {
            Some(t) => s.serialize_str(&t),
            None => s.serialize_u64(*v),
        }
    }

    /// `n` bytes with the largest binary unit that divides it, if one does.
    pub fn text(n: u64) -> Option<String> {
        const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
        UNITS
            .iter()
            .find(|(shift, _)| n != 0 && n.is_multiple_of(1u64 << shift))
            .map(|(shift, unit)| format!("{}{unit}", n >> shift))
    }

    /// Reads a number of bytes or a size with a unit.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Size::deserialize(d)? {
            Size::Bytes(n) => Ok(n),
            Size::Text(t) => yr_datastore::parse_size(&t).map_err(D::Error::custom),
        }
    }

    /// The same for an optional size.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes the size, if any, as [`super::serialize`] does.
        pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            #[derive(serde::Serialize)]
            struct Wrap(#[serde(with = "super")] u64);
            match v {
                Some(n) => s.serialize_some(&Wrap(*n)),
                None => s.serialize_none(),
            }
        }

        /// Reads a number of bytes or a size with a unit.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] u64);
            Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(n)| n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_body_limit_is_a_size() {
        assert_eq!(default_max_body(), 64 << 20);
    }

    #[test]
    fn errors_name_the_setting_and_the_value() {
        let e = key_value("label", "zone").unwrap_err();
        assert_eq!(e.field(), "label");
        assert_eq!(e.to_string(), "--label \"zone\": expected KEY=VALUE");
        assert_eq!(key_value("label", "=a").unwrap_err().field(), "label");
        assert_eq!(
            key_value("label", "zone=a=b"),
            Ok(("zone".into(), "a=b".into()))
        );
        let e = amounts("resource", &["gpu=lots".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--resource \"gpu=lots\": \"lots\" is not a number"
        );
        assert_eq!(
            amounts("resource", &["gpu=2".into(), "fpga=0.5".into()]).map(|m| m.len()),
            Ok(2)
        );
    }

    #[test]
    fn endpoint_lists_drop_blanks_but_need_one() {
        assert_eq!(
            endpoints("etcd", " http://a:1 ,,http://b:2"),
            Ok(vec!["http://a:1".to_string(), "http://b:2".to_string()])
        );
        assert_eq!(endpoints("etcd", " , ").unwrap_err().field(), "etcd");
        assert_eq!(
            required("node-id", " ".into()).unwrap_err().field(),
            "node-id"
        );
        assert_eq!(required("node-id", "n1".into()), Ok("n1".to_string()));
    }

    #[test]
    fn misspelt_keys_find_their_closest_known_key() {
        let known = ["shm-size", "memory", "master-address", "cpu"];
        assert_eq!(closest("shm_sise", &known), Some("shm-size"));
        assert_eq!(closest("memroy", &known), Some("memory"));
        assert_eq!(closest("address", &known), Some("master-address"));
        assert_eq!(closest("frobnicate", &known), None);
        assert_eq!(normalize_key("master_address"), "master-address");
    }

    #[test]
    fn set_entries_are_toml_literals_or_text() {
        let t = set_entry("cpu=2000").expect("number");
        assert_eq!(t.get("cpu"), Some(&toml::Value::Integer(2000)));
        let t = set_entry("bind=10.0.0.1").expect("text");
        assert_eq!(t.get("bind"), Some(&toml::Value::String("10.0.0.1".into())));
        let t = set_entry("labels.zone = a b").expect("dotted");
        assert_eq!(
            t.get("labels").and_then(|l| l.get("zone")),
            Some(&toml::Value::String("a b".into()))
        );
        let t = set_entry("python=\"/usr/bin/python3\"").expect("quoted");
        assert_eq!(
            t.get("python"),
            Some(&toml::Value::String("/usr/bin/python3".into()))
        );
        assert_eq!(set_entry("cpu").unwrap_err().field(), "set");
        assert_eq!(set_entry("=1").unwrap_err().field(), "set");
        assert_eq!(set_entry("a b=1").unwrap_err().field(), "set");
        let mut base = set_entry("labels.a=1").expect("a");
        merge(&mut base, set_entry("labels.b=2").expect("b"));
        merge(&mut base, set_entry("cpu=1").expect("cpu"));
        assert_eq!(
            base.get("labels")
                .and_then(|l| l.as_table())
                .map(|t| t.len()),
            Some(2)
        );
        assert_eq!(size::text(64 << 20).as_deref(), Some("64MiB"));
        assert_eq!(size::text(3 << 30).as_deref(), Some("3GiB"));
        assert_eq!(size::text(1000), None);
        assert_eq!(size::text(0), None);
    }

    #[test]
    fn sizes_in_files_are_bytes_or_text() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct T {
            #[serde(with = "size")]
            a: u64,
            #[serde(default, with = "size::option")]
            b: Option<u64>,
        }
        let t: T = toml::from_str("a = \"2MiB\"\nb = 7").unwrap();
        assert_eq!(
            t,
            T {
                a: 2 << 20,
                b: Some(7)
            }
        );
        let t: T = toml::from_str("a = 5").unwrap();
        assert_eq!(t, T { a: 5, b: None });
        assert!(toml::from_str::<T>("a = \"lots\"").is_err());
    }
}
