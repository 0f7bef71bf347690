//! The `backing*` keys: an optional memcached tier behind the caches (used with the
//! `memcached` feature; without it, setting `backing` is a configuration error).

use figment::value::Value;
use serde::{Deserialize, Serialize};

use super::rules::{Choice, KeyRule, Rule, lower};
use super::values::{Parsed, shown, whole};
use crate::error::ConfigError;

/// How a cache's local writes reach its memcached tier (`backing_write`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WritePolicy {
    /// `"write-through"`: every local write also sets the value in memcached (with its TTL).
    #[default]
    #[serde(rename = "write-through")]
    WriteThrough,
    /// `"invalidate"`: every local write deletes the memcached copy; the next miss anywhere
    /// reloads it (values loaded by `get_or_insert_with` are still stored there).
    #[serde(rename = "invalidate")]
    Invalidate,
}

impl WritePolicy {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            WritePolicy::WriteThrough => "write-through",
            WritePolicy::Invalidate => "invalidate",
        }
    }
}

/// The memcached tier of one cache, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackingSpec {
    /// Servers as `host:port`, in configuration order.
    pub servers: Vec<String>,
    /// The write policy.
    pub write: WritePolicy,
}

impl BackingSpec {
    /// The normalized `backing` value: `memcached://host:port,host:port`.
    ///
    /// ```
    /// use mccache::{BackingSpec, WritePolicy};
    ///
    /// let spec = BackingSpec {
    ///     servers: vec!["10.0.0.7:11211".into(), "10.0.0.8:11211".into()],
    ///     write: WritePolicy::WriteThrough,
    /// };
    /// assert_eq!(spec.url(), "memcached://10.0.0.7:11211,10.0.0.8:11211");
    /// ```
    pub fn url(&self) -> String {
        format!("{SCHEME}{}", self.servers.join(","))
    }
}

const SCHEME: &str = "memcached://";
/// The most servers one `backing` may list.
const MAX_SERVERS: usize = 64;

const REASON_BACKING: &str = "is not memcached://host:port[,host:port...] (or \"none\")";
const REASON_BACKING_DUP: &str = "lists a server twice";
const REASON_BACKING_FEATURE: &str =
    "needs mccache built with the `memcached` feature (cargo add mccache --features memcached)";
const REASON_WRITE: &str = "must be write-through or invalidate";
const REASON_FAILURES: &str = "is not a whole number of failures (1 to 1000)";
const REASON_POOL: &str = "is not a whole number of connections (1 to 1024)";

/// Parses a `backing` value into its servers: `None` for `""` or `"none"`.
pub(super) fn parse_url(s: &str) -> Parsed<Option<Vec<String>>> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let rest = s
        .get(..SCHEME.len())
        .filter(|p| p.eq_ignore_ascii_case(SCHEME))
        .map(|_| &s[SCHEME.len()..])
        .ok_or(REASON_BACKING)?;
    let mut servers: Vec<String> = Vec::new();
    for part in rest.split(',') {
        let part = part.trim();
        let (host, port) = part.rsplit_once(':').ok_or(REASON_BACKING)?;
        let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_[]:".contains(&b));
        if !port_ok || !host_ok {
            return Err(REASON_BACKING);
        }
        if servers.iter().any(|s| s == part) {
            return Err(REASON_BACKING_DUP);
        }
        servers.push(part.to_string());
    }
    if servers.is_empty() || servers.len() > MAX_SERVERS {
        return Err(REASON_BACKING);
    }
    Ok(Some(servers))
}

/// `backing` (node-wide): `memcached://host:port,...`, or `none`/empty (unset). A URL is
/// refused in a build without the `memcached` feature.
pub(super) struct Backing;

impl KeyRule for Backing {
    type Value = Option<String>;

    fn parse(&self, key: &str, v: &Value) -> Result<Option<Option<String>>, ConfigError> {
        let refuse = |r| ConfigError::invalid(key, shown(v), r);
        match v {
            Value::Empty(..) => Ok(Some(None)),
            Value::String(_, s) => match parse_url(s).map_err(refuse)? {
                None => Ok(Some(None)),
                Some(_) => {
                    feature(s).map_err(refuse)?;
                    Ok(Some(Some(s.trim().to_string())))
                }
            },
            _ => Err(refuse(REASON_BACKING)),
        }
    }

    fn check(&self, key: &str, v: &Option<String>) -> Result<(), ConfigError> {
        match v {
            Some(s) => feature(s).map_err(|r| ConfigError::invalid(key, s, r)),
            None => Ok(()),
        }
    }
}

pub(super) const BACKING: Backing = Backing;

/// `backing` of one cache: as [`BACKING`], but `none` is kept (it turns a node-wide `backing`
/// off for this cache).
pub(super) const BACKING_OVERRIDE: Rule<String> = Rule {
    read: |v| match v {
        Value::String(_, s) if parse_url(s)?.is_none() => Ok("none".to_string()),
        Value::String(_, s) => Ok(s.trim().to_string()),
        _ => Err(REASON_BACKING),
    },
    range: |s| feature(s),
};

/// Whether a `backing` value is well formed and can be used by this build.
fn feature(s: &str) -> Parsed<()> {
    match parse_url(s)? {
        Some(_) if !cfg!(feature = "memcached") => Err(REASON_BACKING_FEATURE),
        _ => Ok(()),
    }
}

/// `backing_write`.
pub(super) const WRITE: Choice<WritePolicy> =
    Choice(|v| match lower(v).ok_or(REASON_WRITE)?.as_str() {
        "write-through" | "write_through" | "writethrough" => Ok(WritePolicy::WriteThrough),
        "invalidate" | "invalidate-through" => Ok(WritePolicy::Invalidate),
        _ => Err(REASON_WRITE),
    });

/// `backing_down_after`: 1 to 1000 failures.
pub(super) const FAILURES: Rule<u32> = Rule {
    read: |v| u32::try_from(whole(v, REASON_FAILURES)?).map_err(|_| REASON_FAILURES),
    range: |n| match n {
        1..=1000 => Ok(()),
        _ => Err(REASON_FAILURES),
    },
};

/// `backing_pool_max`: 1 to 1024 connections.
pub(super) const POOL: Rule<usize> = Rule {
    read: |v| usize::try_from(whole(v, REASON_POOL)?).map_err(|_| REASON_POOL),
    range: |n| match n {
        1..=1024 => Ok(()),
        _ => Err(REASON_POOL),
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_normalize() {
        assert_eq!(parse_url(""), Ok(None));
        assert_eq!(parse_url(" None "), Ok(None));
        assert_eq!(
            parse_url("memcached://127.0.0.1:11211, [::1]:11212,mc.local:1"),
            Ok(Some(vec![
                "127.0.0.1:11211".to_string(),
                "[::1]:11212".to_string(),
                "mc.local:1".to_string()
            ]))
        );
        for bad in [
            "127.0.0.1:11211",
            "redis://a:1",
            "memcached://",
            "memcached://a",
            "memcached://a:0",
            "memcached://a:70000",
            "memcached://a b:1",
            "memcached://a:1,",
            "memcached://a/x:1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_url("memcached://a:1,a:1"), Err(REASON_BACKING_DUP));
    }
}
