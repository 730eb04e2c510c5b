//! What the settings of `yr component` and `yr start` share: the error that names the setting it
//! refuses, the checks every kind of setting needs (a KEY=VALUE pair, an amount, an endpoint
//! list, a value that must not be empty), and sizes in settings files.
//!
//! Settings are named as on the command line, without the dashes (`shm-size`); a settings file
//! uses the same names as keys, so one name finds a setting in both.

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

    /// The name of the setting this error is about.
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::Invalid { field, .. } | ConfigError::Missing { field, .. } => field,
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

    /// Writes the size as a number of bytes.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
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

        /// Writes the size, if any, as a number of bytes.
        pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(n) => s.serialize_some(n),
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
