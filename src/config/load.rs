//! Loading: the layers (defaults, a TOML file, `MCCACHE_*` variables) merged by figment, and
//! the merged dictionary turned into a [`Config`] key by key. Unknown keys are refused with
//! the nearest known one; unknown `MCCACHE_*` variables are ignored with a warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::keys::KEYS;
use super::rules::multicast_ip;
use super::values::{is_empty, shown};
use super::{CONFIG_PATH_ENV, CacheOverrides, Config, DEFAULT_CONFIG_FILE, ENV_PREFIX};
use crate::error::ConfigError;

pub(super) const REASON_TABLE: &str = "is not a table of cache settings";
pub(super) const REASON_CACHE_NAME: &str = "is not a cache name (must not be empty)";

/// The layered figment of [`Config::figment`].
pub(super) fn figment() -> Figment {
    let mut figment = Figment::from(Config::default());
    match config_path_from_env() {
        Some(path) => figment = figment.merge(Toml::file_exact(path)),
        None if std::env::var_os(CONFIG_PATH_ENV).is_some() => {} // set but empty: no file
        None => {
            let default = Path::new(DEFAULT_CONFIG_FILE);
            if default.is_file() {
                figment = figment.merge(Toml::file_exact(default));
            }
        }
    }
    figment.merge(EnvLayer::new())
}

/// The `MCCACHE_CONFIG` path, if set and not empty.
pub(super) fn config_path_from_env() -> Option<PathBuf> {
    let path = std::env::var_os(CONFIG_PATH_ENV)?;
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// Converts a merged dictionary key by key, starting from the defaults.
pub(super) fn from_dict(dict: &Dict) -> Result<Config, ConfigError> {
    let mut c = Config::default();
    for (key, v) in dict {
        if key == "caches" {
            c.caches = caches(v)?;
        } else if !c.set_key(key, v)? {
            return Err(unknown(key, v, key, top_keys()));
        }
    }
    // Documented rule: the port given in `multicast_ip = "ip:port"` wins over `multicast_port`.
    if let Some(v) = dict.get("multicast_ip")
        && let Ok((_, Some(port))) = multicast_ip(v)
    {
        c.multicast_port = port;
    }
    Ok(c)
}

/// A figment failure (unreadable or unparsable file, a provider error) as a
/// [`ConfigError::File`] naming the file when figment knows it, the figment error kept as the
/// source.
pub(super) fn file_error(e: figment::Error) -> ConfigError {
    let path = e
        .metadata
        .as_ref()
        .and_then(|m| m.source.as_ref())
        .and_then(|s| s.file_path())
        .map(|p| p.display().to_string())
        .or_else(|| e.metadata.as_ref().map(|m| m.name.to_string()))
        .unwrap_or_else(|| "configuration".to_string());
    ConfigError::File {
        path,
        source: Box::new(e),
    }
}

/// Keys accepted at the top level.
fn top_keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().map(|k| k.name).chain(["caches"])
}

/// Keys accepted inside `[caches.NAME]`.
fn cache_keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().filter(|k| k.per_cache).map(|k| k.name)
}

/// `[caches.NAME]` tables.
fn caches(v: &Value) -> Result<BTreeMap<String, CacheOverrides>, ConfigError> {
    let mut out = BTreeMap::new();
    let table = match v {
        Value::Dict(_, d) => d,
        Value::Empty(..) => return Ok(out),
        _ => return Err(ConfigError::invalid("caches", shown(v), REASON_TABLE)),
    };
    for (name, settings) in table {
        if name.is_empty() {
            return Err(ConfigError::invalid("caches", name, REASON_CACHE_NAME));
        }
        let mut o = CacheOverrides::default();
        match settings {
            Value::Dict(_, d) => {
                for (k, v) in d.iter().filter(|(_, v)| !is_empty(v)) {
                    if !o.set_key(name, k, v)? {
                        return Err(unknown(&format!("caches.{name}.{k}"), v, k, cache_keys()));
                    }
                }
            }
            Value::Empty(..) => {}
            _ => {
                let key = format!("caches.{name}");
                return Err(ConfigError::invalid(&key, shown(settings), REASON_TABLE));
            }
        }
        out.insert(name.clone(), o);
    }
    Ok(out)
}

/// An unknown key `full` (`name` is its last part), with the nearest of `known` if close.
fn unknown<'a>(
    full: &str,
    v: &Value,
    name: &str,
    known: impl Iterator<Item = &'a str>,
) -> ConfigError {
    let closest = known.map(|k| (edit_distance(name, k), k)).min();
    ConfigError::UnknownKey {
        key: full.to_string(),
        value: shown(v),
        suggestion: closest.filter(|(d, _)| *d <= 2).map(|(_, k)| k.to_string()),
    }
}

/// Levenshtein distance, for "did you mean" hints on short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

// ---------------------------------------------------------------------------------------------
// The environment layer

/// The environment layer: `MCCACHE_*` variables, case-insensitive, `__` nests, unknown names
/// dropped, and every value kept as the raw string that was given (so errors can quote it and
/// nothing is guessed from its shape).
struct EnvLayer(Env);

impl EnvLayer {
    fn new() -> EnvLayer {
        EnvLayer(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .filter(|k| is_env_key(k.as_str())),
        )
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, raw) in self.0.iter() {
            let path: Vec<&str> = key.as_str().split('.').collect();
            insert_path(&mut dict, &path, Value::from(raw));
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Inserts `value` at a dotted path, creating tables on the way (a later scalar replaces a
/// table and the other way round, as later layers do).
fn insert_path(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// Whether a prefix-stripped, `__`-split variable name is a key mccache reads.
fn is_env_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        [top] => KEYS.iter().any(|k| k.name == *top),
        ["caches", name, k] => !name.is_empty() && cache_keys().any(|c| c == *k),
        _ => false,
    }
}

/// `MCCACHE_*` variables that are not configuration keys but are read by mccache's own tools
/// and tests; they are never reported as unknown.
const TOOL_VARS: &[&str] = &[
    "MCCACHE_CONFIG",
    "MCCACHE_SIM_SEED",
    "MCCACHE_SIM_SEEDS",
    "MCCACHE_OUT",
    "MCCACHE_IMAGE",
    "MCCACHE_BENCH_SECONDS",
];

/// See [`super::unknown_env_vars`].
pub(super) fn unknown_env_vars() -> Vec<String> {
    let mut out: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter_map(|name| unknown_env_var(&name))
        .collect();
    out.sort();
    out
}

/// The warning for one variable name, if it is an `MCCACHE_*` name mccache does not read.
fn unknown_env_var(name: &str) -> Option<String> {
    let upper = name.to_ascii_uppercase();
    let rest = upper.strip_prefix(ENV_PREFIX)?;
    if TOOL_VARS.contains(&upper.as_str()) || is_env_key(&rest.replace("__", ".")) {
        return None;
    }
    let lower = rest.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split("__").collect();
    let (prefix, key, per_cache) = match parts.as_slice() {
        ["caches", cache, key] => (
            format!("{ENV_PREFIX}CACHES__{}__", cache.to_ascii_uppercase()),
            *key,
            true,
        ),
        _ => (ENV_PREFIX.to_string(), lower.as_str(), false),
    };
    let nearest = KEYS
        .iter()
        .filter(|k| k.per_cache || !per_cache)
        .map(|k| (edit_distance(key, k.name), k.name))
        .min();
    Some(match nearest {
        Some((d, k)) if d <= 3 => format!(
            "{name} is not a configuration key and is ignored (did you mean {prefix}{}?)",
            k.to_ascii_uppercase()
        ),
        _ => format!("{name} is not a configuration key and is ignored (see docs/CONFIG.md)"),
    })
}

/// Warns once per process about each unknown `MCCACHE_*` variable: a mistyped variable would
/// otherwise be ignored without a word. Goes to `tracing`, and to stderr when no subscriber is
/// installed.
pub(super) fn warn_unknown_env_vars() {
    static WARNED: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());
    for w in unknown_env_vars() {
        let mut warned = WARNED.lock();
        if !warned.contains(&w) {
            crate::warn::user_warning(&w);
            warned.push(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::from(text.to_string())
    }

    fn hint(key: &str) -> String {
        unknown(key, &s("1"), key, top_keys()).to_string()
    }

    #[test]
    fn env_key_filter_knows_top_level_and_cache_keys() {
        assert!(is_env_key("cache_ttl"));
        assert!(is_env_key("CACHE_TTL"));
        assert!(is_env_key("caches.users.cache_mode"));
        assert!(!is_env_key("caches"));
        assert!(!is_env_key("config"));
        assert!(!is_env_key("caches.users.packet_mtu"));
        assert!(!is_env_key("caches..cache_ttl"));
        assert!(!is_env_key("cache_ttl.extra"));
    }

    #[test]
    fn unknown_keys_get_a_hint_only_when_close() {
        assert_eq!(
            hint("cache_tll"),
            r#"cache_tll: "1" is not a known key (did you mean cache_ttl?)"#
        );
        assert_eq!(
            hint("multicastip"),
            r#"multicastip: "1" is not a known key (did you mean multicast_ip?)"#
        );
        assert_eq!(
            hint("debug_level"),
            r#"debug_level: "1" is not a known key"#
        );
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn unknown_variables_name_the_nearest_variable() {
        assert_eq!(
            unknown_env_var("MCCACHE_CACHE_TLL").as_deref(),
            Some(
                "MCCACHE_CACHE_TLL is not a configuration key and is ignored (did you mean MCCACHE_CACHE_TTL?)"
            )
        );
        assert_eq!(
            unknown_env_var("MCCACHE_CACHES__USERS__PACKET_MTU").as_deref(),
            Some(
                "MCCACHE_CACHES__USERS__PACKET_MTU is not a configuration key and is ignored (see docs/CONFIG.md)"
            )
        );
        assert_eq!(unknown_env_var("MCCACHE_CACHE_TTL"), None);
        assert_eq!(unknown_env_var("MCCACHE_CONFIG"), None);
        assert_eq!(unknown_env_var("PATH"), None);
    }

    #[test]
    fn insert_path_nests_and_later_values_replace() {
        let mut d = Dict::new();
        insert_path(&mut d, &["caches", "users", "cache_ttl"], s("1"));
        insert_path(&mut d, &["caches", "users", "cache_max"], s("2"));
        insert_path(&mut d, &["cache_ttl"], s("3"));
        let users = d["caches"]
            .find_ref("users")
            .and_then(|u| u.as_dict())
            .map(|u| u.len());
        assert_eq!(users, Some(2));
        insert_path(&mut d, &["cache_ttl", "x"], s("4"));
        assert!(matches!(d["cache_ttl"], Value::Dict(..)));
    }
}
