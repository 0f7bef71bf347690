//! The memcached meta protocol as bytes: commands out, response headers in, the key and value
//! formats the tier stores. No I/O; every parse is total (garbage is an error, never a panic).
//!
//! Only what the tier uses is here: `mg` (get, with lease flags), `ms` (set), `md` (delete),
//! `ma` (the generation counter).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// memcached's longest key, in bytes as sent (after base64).
pub(crate) const MAX_KEY_LEN: usize = 250;
/// The longest binary key whose base64 form fits in [`MAX_KEY_LEN`].
const MAX_RAW_KEY: usize = MAX_KEY_LEN / 4 * 3;
/// The longest response header line the reader accepts (flags included).
pub(crate) const MAX_LINE: usize = 1024;
/// memcached's `T` values above this (30 days) are absolute Unix times.
const RELATIVE_TTL_MAX: u64 = 60 * 60 * 24 * 30;

/// Marks a value written by this tier: `M`, format 1.
const VALUE_MAGIC: [u8; 2] = [b'M', 1];
/// Value header flag: the full namespaced key follows (the memcached key is a hash).
const FLAG_FULL_KEY: u8 = 1;
/// Value header flag: the value is sealed with the cluster's key (see `seal`).
const FLAG_SEALED: u8 = 2;
/// The value header without the optional full key: magic (2), flags (1), generation (8).
const HEADER_LEN: usize = 11;

/// A memcached key for one cache entry or for a cache's generation counter: the binary
/// namespaced form (`cluster`, `cache`, kind, key bytes, length-prefixed so no two inputs
/// share it), sent in base64 with the `b` flag. Forms longer than memcached allows are
/// replaced by a 128-bit hash; the value then carries the full form so a collision reads as
/// a miss, never as another key's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    /// base64 of the binary key: what goes on the wire.
    pub(crate) wire: String,
    /// The full namespaced form, when `wire` is a hash of it.
    pub(crate) full: Option<Vec<u8>>,
}

/// What a key names.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// A cache entry.
    Entry = 0,
    /// The cache's generation counter (bumped by `clear`).
    Generation = 1,
}

impl Key {
    /// The key of `bytes` (a serialized cache key) in `cache` of `cluster`.
    pub(crate) fn new(cluster: &str, cache: &str, kind: KeyKind, bytes: &[u8]) -> Key {
        let mut raw = Vec::with_capacity(4 + cluster.len() + cache.len() + bytes.len());
        raw.push(cluster.len().min(255) as u8);
        raw.extend_from_slice(&cluster.as_bytes()[..cluster.len().min(255)]);
        let cache_len = cache.len().min(u16::MAX as usize);
        raw.extend_from_slice(&(cache_len as u16).to_be_bytes());
        raw.extend_from_slice(&cache.as_bytes()[..cache_len]);
        raw.push(kind as u8);
        raw.extend_from_slice(bytes);
        if raw.len() <= MAX_RAW_KEY {
            return Key {
                wire: STANDARD.encode(&raw),
                full: None,
            };
        }
        // 0xFF never starts the plain form (a cluster name is at most 64 bytes).
        let mut hashed = Vec::with_capacity(17);
        hashed.push(0xFF);
        hashed.extend_from_slice(&hash128(&raw));
        Key {
            wire: STANDARD.encode(&hashed),
            full: Some(raw),
        }
    }
}

/// Two independent 64-bit hashes of `data`: stable across processes, builds and versions
/// (every client of a shared memcached must compute the same key).
fn hash128(data: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&stable_hash(0, data).to_be_bytes());
    out[8..].copy_from_slice(&stable_hash(0x9e37_79b9_7f4a_7c15, data).to_be_bytes());
    out
}

/// FNV-1a (64-bit) from a seeded offset basis, finished with SplitMix64: a stable hash for
/// memcached keys and server routing. Not collision resistant against an adversary; the tier
/// never trusts it for identity (hashed keys are verified against the stored full key).
pub(crate) fn stable_hash(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The SplitMix64 finalizer.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stored value: the generation it was written under and the serialized cache value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stored<'a> {
    pub(crate) generation: u64,
    pub(crate) sealed: bool,
    pub(crate) value: &'a [u8],
}

/// The bytes stored in memcached for `value` under `key` at `generation`.
pub(crate) fn encode_value(key: &Key, generation: u64, sealed: bool, value: &[u8]) -> Vec<u8> {
    let full = key.full.as_deref();
    let extra = full.map_or(0, |f| 4 + f.len());
    let mut out = Vec::with_capacity(HEADER_LEN + extra + value.len());
    out.extend_from_slice(&VALUE_MAGIC);
    let mut flags = if full.is_some() { FLAG_FULL_KEY } else { 0 };
    if sealed {
        flags |= FLAG_SEALED;
    }
    out.push(flags);
    out.extend_from_slice(&generation.to_be_bytes());
    if let Some(f) = full {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out.extend_from_slice(value);
    out
}

/// Reads a stored value back; `None` if it is not ours, truncated, or written for another key
/// that hashed to the same memcached key.
pub(crate) fn decode_value<'a>(key: &Key, data: &'a [u8]) -> Option<Stored<'a>> {
    if data.len() < HEADER_LEN || data[..2] != VALUE_MAGIC {
        return None;
    }
    let flags = data[2];
    let generation = u64::from_be_bytes(data[3..11].try_into().ok()?);
    let mut rest = &data[HEADER_LEN..];
    let stored_full = if flags & FLAG_FULL_KEY != 0 {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let full = rest.get(4..4usize.checked_add(len)?)?;
        rest = &rest[4 + len..];
        Some(full)
    } else {
        None
    };
    if stored_full != key.full.as_deref() {
        return None;
    }
    Some(Stored {
        generation,
        sealed: flags & FLAG_SEALED != 0,
        value: rest,
    })
}

/// A TTL as memcached's `T` argument: whole seconds rounded up, `0` for none, and an absolute
/// Unix time past 30 days (as memcached reads it).
pub(crate) fn ttl_arg(ttl: Option<std::time::Duration>, unix_now: u64) -> u64 {
    let Some(ttl) = ttl else { return 0 };
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    let secs = secs.max(1);
    if secs > RELATIVE_TTL_MAX {
        unix_now.saturating_add(secs)
    } else {
        secs
    }
}

/// `mg <key> b v t c [N<lease>]`: value, remaining TTL, CAS, and with `lease` a placeholder
/// that makes exactly one caller the winner (`W`).
pub(crate) fn get(out: &mut Vec<u8>, key: &str, lease: Option<u64>) {
    out.extend_from_slice(b"mg ");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b" b v t c");
    if let Some(l) = lease {
        out.extend_from_slice(format!(" N{l}").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// How `ms` stores.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum SetMode {
    /// Always (`MS`, the default).
    Set,
    /// Only if absent (`ME`): a refill must not replace a newer write.
    Add,
    /// Only if the CAS matches (`C<cas>`): the lease winner's refill.
    Cas(u64),
}

/// `ms <key> <len> b T<ttl> [ME|C<cas>]` and the data block.
pub(crate) fn set(out: &mut Vec<u8>, key: &str, value: &[u8], ttl: u64, mode: SetMode) {
    out.extend_from_slice(b"ms ");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(format!(" {} b T{ttl}", value.len()).as_bytes());
    match mode {
        SetMode::Set => {}
        SetMode::Add => out.extend_from_slice(b" ME"),
        SetMode::Cas(c) => out.extend_from_slice(format!(" C{c}").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `md <key> b [C<cas>]`.
pub(crate) fn delete(out: &mut Vec<u8>, key: &str, cas: Option<u64>) {
    out.extend_from_slice(b"md ");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b" b");
    if let Some(c) = cas {
        out.extend_from_slice(format!(" C{c}").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// `ma <key> b N0 J<initial> v`: increments a counter, creating it at `initial` (never
/// expiring) if absent.
pub(crate) fn incr(out: &mut Vec<u8>, key: &str, initial: u64) {
    out.extend_from_slice(b"ma ");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(format!(" b N0 J{initial} v\r\n").as_bytes());
}

/// A response's return code.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    /// `VA <len>`: a value follows.
    Value(usize),
    /// `HD`: done, no value.
    Done,
    /// `EN`: not found.
    NotFound,
    /// `NS`: not stored.
    NotStored,
    /// `EX`: CAS mismatch.
    Exists,
    /// `NF`: not found (mutations).
    NotFoundMut,
    /// `MN`: end of a no-op.
    Noop,
}

/// A parsed response header line.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct Header {
    pub(crate) code: Option<Code>,
    /// `t`: remaining seconds; -1 = no expiry.
    pub(crate) ttl: Option<i64>,
    /// `c`: the CAS value.
    pub(crate) cas: Option<u64>,
    /// `W`: this caller won the lease.
    pub(crate) win: bool,
    /// `Z`: another caller holds the lease.
    pub(crate) busy: bool,
    /// `X`: the item is stale (invalidated).
    pub(crate) stale: bool,
}

/// Why a response was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// A line the protocol does not have, or a flag with a bad number.
    Garbage(String),
    /// `ERROR`, `CLIENT_ERROR` or `SERVER_ERROR` from the server.
    Server(String),
    /// A value longer than the caller accepts.
    TooLong(usize),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Garbage(s) => write!(f, "unexpected response {s:?}"),
            ParseError::Server(s) => write!(f, "server error {s:?}"),
            ParseError::TooLong(n) => write!(f, "value of {n} bytes is over the limit"),
        }
    }
}

fn shown(line: &[u8]) -> String {
    let end = line.len().min(64);
    String::from_utf8_lossy(&line[..end]).into_owned()
}

/// Parses a header line (without CRLF). `max_value`: the longest value accepted.
pub(crate) fn parse_header(line: &[u8], max_value: usize) -> Result<Header, ParseError> {
    let mut tokens = line.split(|b| *b == b' ').filter(|t| !t.is_empty());
    let garbage = || ParseError::Garbage(shown(line));
    let first = tokens.next().ok_or_else(garbage)?;
    let code = match first {
        b"VA" => {
            let len = tokens.next().ok_or_else(garbage)?;
            let len = parse_u64(len).ok_or_else(garbage)?;
            let len = usize::try_from(len).map_err(|_| ParseError::TooLong(usize::MAX))?;
            if len > max_value {
                return Err(ParseError::TooLong(len));
            }
            Code::Value(len)
        }
        b"HD" => Code::Done,
        b"EN" => Code::NotFound,
        b"NS" => Code::NotStored,
        b"EX" => Code::Exists,
        b"NF" => Code::NotFoundMut,
        b"MN" => Code::Noop,
        b"ERROR" | b"CLIENT_ERROR" | b"SERVER_ERROR" => {
            return Err(ParseError::Server(shown(line)));
        }
        _ => return Err(garbage()),
    };
    let mut h = Header {
        code: Some(code),
        ..Header::default()
    };
    for t in tokens {
        let (flag, arg) = (t[0], &t[1..]);
        match flag {
            b't' => {
                let v = if arg == b"-1" {
                    -1
                } else {
                    parse_u64(arg)
                        .and_then(|v| i64::try_from(v).ok())
                        .ok_or_else(garbage)?
                };
                h.ttl = Some(v);
            }
            b'c' => h.cas = Some(parse_u64(arg).ok_or_else(garbage)?),
            b'W' => h.win = true,
            b'Z' => h.busy = true,
            b'X' => h.stale = true,
            // Flags the tier did not ask for (s, f, k, O, ...) are ignored.
            _ => {}
        }
    }
    Ok(h)
}

fn parse_u64(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 20 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(t).ok()?.parse().ok()
}

/// Parses the decimal counter in an `ma ... v` reply's data block.
pub(crate) fn parse_counter(data: &[u8]) -> Option<u64> {
    parse_u64(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keys_stay_within_memcached_rules_for_any_bytes() {
        for len in [0usize, 1, 100, 170, 171, 172, 180, 200, 1000, 100_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let k = Key::new(
                "t15-cluster with spaces",
                "cache\n\0",
                KeyKind::Entry,
                &bytes,
            );
            assert!(k.wire.len() <= MAX_KEY_LEN, "len {len}: {}", k.wire.len());
            assert!(k.wire.bytes().all(|b| b.is_ascii_graphic()));
        }
        let a = Key::new("c", "x", KeyKind::Entry, b"k");
        let b = Key::new("c", "x", KeyKind::Generation, b"k");
        let c = Key::new("c", "xk", KeyKind::Entry, b"");
        assert_ne!(a, b);
        assert_ne!(a.wire, c.wire);
        assert!(a.full.is_none());
        assert!(Key::new("c", "x", KeyKind::Entry, &[1; 300]).full.is_some());
    }

    #[test]
    fn values_round_trip_and_refuse_other_keys_and_garbage() {
        let short = Key::new("c", "x", KeyKind::Entry, b"k");
        let long = Key::new("c", "x", KeyKind::Entry, &[7; 400]);
        let other_long = Key::new("c", "x", KeyKind::Entry, &[8; 400]);
        for key in [&short, &long] {
            let data = encode_value(key, 42, true, b"value");
            let s = decode_value(key, &data).unwrap();
            assert_eq!((s.generation, s.sealed, s.value), (42, true, &b"value"[..]));
        }
        let data = encode_value(&long, 1, false, b"v");
        assert_eq!(decode_value(&other_long, &data), None);
        assert_eq!(decode_value(&short, &data), None);
        for n in 0..data.len() {
            let _ = decode_value(&long, &data[..n]);
        }
        assert_eq!(decode_value(&short, b""), None);
        assert_eq!(decode_value(&short, b"hello world, not ours"), None);
    }

    #[test]
    fn headers_parse_and_garbage_is_refused() {
        let h = parse_header(b"VA 0 t30 c4 Z X", 10).unwrap();
        assert_eq!(h.code, Some(Code::Value(0)));
        assert_eq!(
            (h.ttl, h.cas, h.win, h.busy, h.stale),
            (Some(30), Some(4), false, true, true)
        );
        let h = parse_header(b"VA 3 t-1 c1 s0 W", 10).unwrap();
        assert_eq!((h.ttl, h.win), (Some(-1), true));
        assert_eq!(parse_header(b"EN", 0).unwrap().code, Some(Code::NotFound));
        assert_eq!(parse_header(b"HD", 0).unwrap().code, Some(Code::Done));
        assert_eq!(parse_header(b"EX", 0).unwrap().code, Some(Code::Exists));
        assert_eq!(parse_header(b"MN", 0).unwrap().code, Some(Code::Noop));
        assert_eq!(parse_header(b"VA 11", 10), Err(ParseError::TooLong(11)));
        for bad in [
            &b""[..],
            b"VA",
            b"VA x",
            b"VA -1",
            b"VA 99999999999999999999999",
            b"VA 1 tx",
            b"VA 1 c",
            b"HELLO",
            b"\xff\xfe",
        ] {
            assert!(parse_header(bad, 10).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse_header(b"SERVER_ERROR out of memory", 10),
            Err(ParseError::Server(_))
        ));
    }

    #[test]
    fn ttls_round_up_and_become_absolute_past_30_days() {
        assert_eq!(ttl_arg(None, 1000), 0);
        assert_eq!(ttl_arg(Some(Duration::from_millis(1)), 1000), 1);
        assert_eq!(ttl_arg(Some(Duration::from_millis(1500)), 1000), 2);
        assert_eq!(ttl_arg(Some(Duration::from_secs(60)), 1000), 60);
        let long = Duration::from_secs(RELATIVE_TTL_MAX + 1);
        assert_eq!(ttl_arg(Some(long), 1000), 1000 + RELATIVE_TTL_MAX + 1);
    }

    #[test]
    fn commands_are_single_lines_with_the_binary_flag() {
        let mut out = Vec::new();
        get(&mut out, "a2V5", Some(30));
        assert_eq!(out, b"mg a2V5 b v t c N30\r\n");
        out.clear();
        set(&mut out, "a2V5", b"abc", 60, SetMode::Cas(7));
        assert_eq!(out, b"ms a2V5 3 b T60 C7\r\nabc\r\n");
        out.clear();
        set(&mut out, "a2V5", b"", 0, SetMode::Add);
        assert_eq!(out, b"ms a2V5 0 b T0 ME\r\n\r\n");
        out.clear();
        delete(&mut out, "a2V5", None);
        assert_eq!(out, b"md a2V5 b\r\n");
        out.clear();
        incr(&mut out, "Z2Vu", 5);
        assert_eq!(out, b"ma Z2Vu b N0 J5 v\r\n");
    }
}
