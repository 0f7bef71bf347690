//! Key rules: how one key's raw value is read and which range it must be in. A key's
//! declaration (`keys.rs`) names its rule; parsing (`load.rs`) and [`Config::validate`] both
//! apply it, so a range is written once.
//!
//! [`Config::validate`]: super::Config::validate

use std::fmt::Display;
use std::net::Ipv4Addr;

use figment::value::Value;

use super::values::{
    Parsed, bytes, bytes_or, decode_key, finite, redact, secs, shown, text, whole,
};
use super::{CacheMode, MAX_MESSAGE_SIZE_LIMIT, MAX_SECONDS, Overload, TantrumSide};
use crate::error::ConfigError;

pub(super) const REASON_SECONDS: &str = "is not a number of seconds";
pub(super) const REASON_NEGATIVE: &str = "must not be negative";
pub(super) const REASON_POSITIVE: &str = "must be greater than 0";
pub(super) const REASON_TOO_LONG: &str = "must be at most 1000000000 seconds";
pub(super) const REASON_ENTRIES: &str = "is not a whole number of entries";
pub(super) const REASON_CHANGES: &str = "is not a whole number of changes";
pub(super) const REASON_AT_LEAST_ONE: &str = "must be at least 1";
pub(super) const REASON_BYTES: &str = "is not a byte count";
pub(super) const REASON_MODE: &str = "must be 0, 1 or 2";
pub(super) const REASON_MULTICAST: &str = "is not an IPv4 multicast address (224.0.0.0/4)";
pub(super) const REASON_GROUP_PORT: &str = "has a port that is not a port number (1 to 65535)";
pub(super) const REASON_PORT: &str = "is not a port number (1 to 65535)";
pub(super) const REASON_MTU: &str = "must be between 576 and 65507";
pub(super) const REASON_HOPS: &str = "is not a hop count (1 to 255)";
pub(super) const REASON_PERCENT: &str = "is not a percentage (0 to 100)";
pub(super) const REASON_SIDE: &str = "must be send, recv or both";
pub(super) const REASON_OVERLOAD: &str = "must be repair, block or error";
pub(super) const REASON_KEY: &str = "is not valid base64 of 32 bytes";
pub(super) const REASON_KEYS: &str = "is not a list of base64 keys";
pub(super) const REASON_MESSAGE: &str = "must be between 1 byte and 64 MiB";
pub(super) const REASON_INTERFACE: &str = "is not a unicast IPv4 address or 0.0.0.0";
pub(super) const REASON_CLUSTER: &str = "must be 1 to 64 bytes of text";
pub(super) const REASON_NODE: &str = "must be 1 to 255 bytes of text";

/// How one key is read from a raw value and checked as a typed value.
pub(super) trait KeyRule {
    /// The field's type.
    type Value;

    /// Reads a raw value (from TOML or the environment). `Ok(None)`: the value is empty and
    /// the field keeps what it had.
    fn parse(&self, key: &str, v: &Value) -> Result<Option<Self::Value>, ConfigError>;

    /// Checks a typed value (a `Config` built in code); the error shows it with `Display`.
    fn check(&self, key: &str, v: &Self::Value) -> Result<(), ConfigError>;
}

/// A scalar with a range: `read` turns the raw value into the type, `range` accepts or refuses
/// the typed value. Parsing applies both, validation the range only.
pub(super) struct Rule<T> {
    pub(super) read: fn(&Value) -> Parsed<T>,
    pub(super) range: fn(&T) -> Parsed<()>,
}

impl<T: Display> KeyRule for Rule<T> {
    type Value = T;

    fn parse(&self, key: &str, v: &Value) -> Result<Option<T>, ConfigError> {
        if matches!(v, Value::Empty(..)) {
            return Ok(None);
        }
        let t = (self.read)(v).map_err(|r| ConfigError::invalid(key, shown(v), r))?;
        (self.range)(&t).map_err(|r| ConfigError::invalid(key, shown(v), r))?;
        Ok(Some(t))
    }

    fn check(&self, key: &str, v: &T) -> Result<(), ConfigError> {
        (self.range)(v).map_err(|r| ConfigError::invalid(key, v, r))
    }
}

/// One of a fixed set of spellings: every value of the type is valid.
pub(super) struct Choice<T>(pub(super) fn(&Value) -> Parsed<T>);

impl<T> KeyRule for Choice<T> {
    type Value = T;

    fn parse(&self, key: &str, v: &Value) -> Result<Option<T>, ConfigError> {
        if matches!(v, Value::Empty(..)) {
            return Ok(None);
        }
        (self.0)(v)
            .map(Some)
            .map_err(|r| ConfigError::invalid(key, shown(v), r))
    }

    fn check(&self, _key: &str, _v: &T) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// An optional key: an empty value unsets it.
pub(super) struct Opt<R>(pub(super) R);

impl<R: KeyRule> KeyRule for Opt<R> {
    type Value = Option<R::Value>;

    fn parse(&self, key: &str, v: &Value) -> Result<Option<Self::Value>, ConfigError> {
        match v {
            Value::Empty(..) => Ok(Some(None)),
            _ => Ok(Some(self.0.parse(key, v)?)),
        }
    }

    fn check(&self, key: &str, v: &Self::Value) -> Result<(), ConfigError> {
        v.as_ref().map_or(Ok(()), |v| self.0.check(key, v))
    }
}

/// A list of text entries: a TOML array of strings, or one string of comma-separated entries
/// (the environment's form). Entries are trimmed, empty ones skipped; an error names the
/// entry (`peers[1]`).
pub(super) struct List {
    /// The reason for a value that is neither an array nor a string.
    pub(super) not_a_list: &'static str,
    /// The reason for an entry that is not a string.
    pub(super) not_an_entry: &'static str,
    /// The rule of one entry.
    pub(super) entry: fn(&str) -> Parsed<()>,
    /// Entries are secrets: errors show their length only.
    pub(super) secret: bool,
}

impl List {
    fn refuse(&self, key: &str, raw: &str, trimmed: &str, reason: &str) -> ConfigError {
        if self.secret {
            ConfigError::invalid(key, redact(raw), reason)
        } else {
            ConfigError::invalid(key, trimmed, reason)
        }
    }
}

impl KeyRule for List {
    type Value = Vec<String>;

    fn parse(&self, key: &str, v: &Value) -> Result<Option<Vec<String>>, ConfigError> {
        let items: Vec<Value> = match v {
            Value::Empty(..) => return Ok(Some(Vec::new())),
            Value::Array(_, items) => items.clone(),
            Value::String(_, s) => s.split(',').map(|p| Value::from(p.to_string())).collect(),
            _ => return Err(ConfigError::invalid(key, shown(v), self.not_a_list)),
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let name = format!("{key}[{i}]");
            let Value::String(_, s) = item else {
                let raw = shown(item);
                return Err(self.refuse(&name, &raw, &raw, self.not_an_entry));
            };
            let trimmed = s.trim();
            if trimmed.is_empty() {
                continue;
            }
            (self.entry)(trimmed).map_err(|r| self.refuse(&name, s, trimmed, r))?;
            out.push(trimmed.to_string());
        }
        Ok(Some(out))
    }

    fn check(&self, key: &str, v: &Vec<String>) -> Result<(), ConfigError> {
        for (i, entry) in v.iter().enumerate() {
            (self.entry)(entry)
                .map_err(|r| self.refuse(&format!("{key}[{i}]"), entry, entry, r))?;
        }
        Ok(())
    }
}

/// `crypto_key`: base64 of 32 bytes; an empty value turns encryption off. Errors show the
/// key's length only.
pub(super) struct CryptoKey;

impl KeyRule for CryptoKey {
    type Value = Option<String>;

    fn parse(&self, key: &str, v: &Value) -> Result<Option<Option<String>>, ConfigError> {
        let text = match v {
            Value::Empty(..) => return Ok(Some(None)),
            Value::String(_, s) => s.trim(),
            _ => return Err(ConfigError::invalid(key, redact(&shown(v)), REASON_KEY)),
        };
        if text.is_empty() {
            return Ok(Some(None)); // `MCCACHE_CRYPTO_KEY=` turns encryption off
        }
        decode_key(text).map_err(|r| ConfigError::invalid(key, redact(&shown(v)), r))?;
        Ok(Some(Some(text.to_string())))
    }

    fn check(&self, key: &str, v: &Option<String>) -> Result<(), ConfigError> {
        match v {
            Some(text) => decode_key(text)
                .map(drop)
                .map_err(|r| ConfigError::invalid(key, redact(text), r)),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The rules the declarations use.

pub(super) const SECS_NON_NEGATIVE: Rule<f64> = Rule {
    read: secs,
    range: non_negative_secs,
};

pub(super) const SECS_POSITIVE: Rule<f64> = Rule {
    read: secs,
    range: positive_secs,
};

pub(super) const ENTRIES: Rule<usize> = Rule {
    read: |v| whole_usize(v, REASON_ENTRIES),
    range: |n| at_least_one(*n as u64),
};

pub(super) const CHANGES: Rule<usize> = Rule {
    read: |v| whole_usize(v, REASON_CHANGES),
    range: |n| at_least_one(*n as u64),
};

pub(super) const BYTES: Rule<u64> = Rule {
    read: bytes,
    range: |n| at_least_one(*n),
};

pub(super) const MODE: Choice<CacheMode> = Choice(|v| {
    let n = whole(v, REASON_MODE)?;
    u8::try_from(n)
        .ok()
        .and_then(|n| CacheMode::try_from(n).ok())
        .ok_or(REASON_MODE)
});

pub(super) const KEYRING: List = List {
    not_a_list: REASON_KEYS,
    not_an_entry: REASON_KEY,
    entry: |k| decode_key(k).map(drop),
    secret: true,
};

pub(super) const MTU: Rule<u16> = Rule {
    read: |v| u16::try_from(whole(v, REASON_MTU)?).map_err(|_| REASON_MTU),
    range: |m| match m {
        576..=65507 => Ok(()),
        _ => Err(REASON_MTU),
    },
};

pub(super) const GROUP: Rule<Ipv4Addr> = Rule {
    read: |v| multicast_ip(v).map(|(ip, _)| ip),
    range: |ip| multicast(*ip),
};

pub(super) const PORT: Rule<u16> = Rule {
    read: |v| u16::try_from(whole(v, REASON_PORT)?).map_err(|_| REASON_PORT),
    range: |p| if *p != 0 { Ok(()) } else { Err(REASON_PORT) },
};

pub(super) const HOPS: Rule<u8> = Rule {
    read: |v| u8::try_from(whole(v, REASON_HOPS)?).map_err(|_| REASON_HOPS),
    range: |h| if *h != 0 { Ok(()) } else { Err(REASON_HOPS) },
};

pub(super) const PERCENT: Rule<f64> = Rule {
    read: |v| finite(v, REASON_PERCENT),
    range: |x| {
        if (0.0..=100.0).contains(x) {
            Ok(())
        } else {
            Err(REASON_PERCENT)
        }
    },
};

pub(super) const SIDE: Choice<TantrumSide> =
    Choice(|v| match lower(v).ok_or(REASON_SIDE)?.as_str() {
        "send" => Ok(TantrumSide::Send),
        "recv" => Ok(TantrumSide::Recv),
        "both" => Ok(TantrumSide::Both),
        _ => Err(REASON_SIDE),
    });

pub(super) const INTERFACE: Rule<Ipv4Addr> = Rule {
    read: |v| match v {
        Value::String(_, s) => s.trim().parse().map_err(|_| REASON_INTERFACE),
        _ => Err(REASON_INTERFACE),
    },
    range: |ip| {
        if ip.is_unspecified() || !(ip.is_multicast() || ip.is_broadcast()) {
            Ok(())
        } else {
            Err(REASON_INTERFACE)
        }
    },
};

pub(super) const MESSAGE_SIZE: Rule<usize> = Rule {
    read: |v| usize::try_from(bytes_or(v, REASON_MESSAGE)?).map_err(|_| REASON_MESSAGE),
    range: |m| {
        if (1..=MAX_MESSAGE_SIZE_LIMIT).contains(m) {
            Ok(())
        } else {
            Err(REASON_MESSAGE)
        }
    },
};

pub(super) const NODE_NAME: Opt<Rule<String>> = Opt(Rule {
    read: text,
    range: |name| text_len(name, 255, REASON_NODE),
});

pub(super) const CLUSTER_NAME: Rule<String> = Rule {
    read: text,
    range: |name| text_len(name, 64, REASON_CLUSTER),
};

pub(super) const OVERLOAD: Choice<Overload> =
    Choice(|v| match lower(v).ok_or(REASON_OVERLOAD)?.as_str() {
        "repair" => Ok(Overload::Repair),
        "block" => Ok(Overload::Block),
        "error" => Ok(Overload::Error),
        _ => Err(REASON_OVERLOAD),
    });

// ---------------------------------------------------------------------------------------------
// Range checks and readers shared by the rules above and the feature-specific ones.

/// A string value, trimmed and lower-cased (`None` for other types).
pub(super) fn lower(v: &Value) -> Option<String> {
    match v {
        Value::String(_, s) => Some(s.trim().to_ascii_lowercase()),
        _ => None,
    }
}

fn whole_usize(v: &Value, reason: &'static str) -> Parsed<usize> {
    usize::try_from(whole(v, reason)?).map_err(|_| reason)
}

pub(super) fn non_negative_secs(x: &f64) -> Parsed<()> {
    if !x.is_finite() {
        Err(REASON_SECONDS)
    } else if *x < 0.0 {
        Err(REASON_NEGATIVE)
    } else if *x > MAX_SECONDS {
        Err(REASON_TOO_LONG)
    } else {
        Ok(())
    }
}

pub(super) fn positive_secs(x: &f64) -> Parsed<()> {
    non_negative_secs(x)?;
    if *x > 0.0 {
        Ok(())
    } else {
        Err(REASON_POSITIVE)
    }
}

fn at_least_one(n: u64) -> Parsed<()> {
    if n >= 1 {
        Ok(())
    } else {
        Err(REASON_AT_LEAST_ONE)
    }
}

fn text_len(name: &str, max: usize, reason: &'static str) -> Parsed<()> {
    if (1..=max).contains(&name.len()) {
        Ok(())
    } else {
        Err(reason)
    }
}

fn multicast(ip: Ipv4Addr) -> Parsed<()> {
    if ip.is_multicast() {
        Ok(())
    } else {
        Err(REASON_MULTICAST)
    }
}

/// `multicast_ip`: `ip` or `ip:port` (the port, if given, wins over `multicast_port`).
pub(super) fn multicast_ip(v: &Value) -> Parsed<(Ipv4Addr, Option<u16>)> {
    let Value::String(_, s) = v else {
        return Err(REASON_MULTICAST);
    };
    let s = s.trim();
    let (ip, port_text) = match s.split_once(':') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let ip: Ipv4Addr = ip.trim().parse().map_err(|_| REASON_MULTICAST)?;
    multicast(ip)?;
    let port = match port_text {
        Some(p) => Some(
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or(REASON_GROUP_PORT)?,
        ),
        None => None,
    };
    Ok((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::from(text.to_string())
    }

    #[test]
    fn multicast_ip_splits_an_optional_port() {
        assert_eq!(
            multicast_ip(&s("239.1.2.3")),
            Ok((Ipv4Addr::new(239, 1, 2, 3), None))
        );
        assert_eq!(
            multicast_ip(&s(" 224.0.0.3:4000 ")),
            Ok((Ipv4Addr::new(224, 0, 0, 3), Some(4000)))
        );
        assert_eq!(
            multicast_ip(&s("239.255.255.255:65535")).map(|p| p.1),
            Ok(Some(65535))
        );
        assert_eq!(multicast_ip(&s("223.255.255.255")), Err(REASON_MULTICAST));
        assert_eq!(multicast_ip(&s("239.1.2.3:65536")), Err(REASON_GROUP_PORT));
        assert_eq!(multicast_ip(&s("239.1.2.3:4:5")), Err(REASON_GROUP_PORT));
    }

    #[test]
    fn interface_accepts_unicast_and_unspecified_only() {
        let ok = |ip: Ipv4Addr| (INTERFACE.range)(&ip);
        assert_eq!(ok(Ipv4Addr::UNSPECIFIED), Ok(()));
        assert_eq!(ok(Ipv4Addr::LOCALHOST), Ok(()));
        assert_eq!(ok(Ipv4Addr::new(10, 1, 2, 3)), Ok(()));
        assert_eq!(ok(Ipv4Addr::BROADCAST), Err(REASON_INTERFACE));
        assert_eq!(ok(Ipv4Addr::new(239, 0, 0, 1)), Err(REASON_INTERFACE));
    }

    #[test]
    fn parsing_applies_the_range_and_quotes_the_raw_value() {
        let err = SECS_POSITIVE.parse("cache_pulse", &s(" 0 ")).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"cache_pulse: " 0 " must be greater than 0"#
        );
        let err = SECS_POSITIVE.check("cache_pulse", &0.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"cache_pulse: "0" must be greater than 0"#
        );
        assert_eq!(SECS_POSITIVE.parse("k", &s("2.5")).unwrap(), Some(2.5));
        assert_eq!(
            ENTRIES
                .parse("k", &Value::from(0u8))
                .unwrap_err()
                .to_string(),
            r#"k: "0" must be at least 1"#
        );
    }

    #[test]
    fn lists_name_the_entry_and_hide_secrets() {
        let err = KEYRING.parse("crypto_keys", &s("abc, ,x")).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"crypto_keys[0]: "<3 characters, not shown>" is not valid base64 of 32 bytes"#
        );
        let key = crate::config::generate_key();
        let both = KEYRING.parse("k", &s(&format!("{key}, ,{key}"))).unwrap();
        assert_eq!(both.map(|v| v.len()), Some(2));
        assert_eq!(
            KEYRING
                .parse("k", &Value::from(Vec::<String>::new()))
                .unwrap(),
            Some(vec![])
        );
    }
}
