//! Reading raw configuration values: numbers in any spelling (TOML integer or float, or a
//! string from the environment), byte counts with binary suffixes, text, crypto keys, and the
//! value as the user wrote it (for error messages).

use base64::Engine as _;
use figment::value::{Num, Value};

use super::rules::{REASON_BYTES, REASON_KEY, REASON_SECONDS};

/// A parsed value, or the reason it was refused (the rest of the sentence after the value).
pub(super) type Parsed<T> = std::result::Result<T, &'static str>;

/// Largest integer an f64 holds exactly.
const F64_EXACT: f64 = 9_007_199_254_740_992.0;

pub(super) fn is_empty(v: &Value) -> bool {
    matches!(v, Value::Empty(..))
}

/// A value as the user gave it: strings verbatim, numbers in their shortest form.
pub(super) fn shown(v: &Value) -> String {
    match v {
        Value::String(_, s) => s.clone(),
        Value::Char(_, c) => c.to_string(),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => match number(n) {
            Number::Int(i) => i.to_string(),
            Number::Float(f) => f.to_string(),
        },
        Value::Empty(..) => String::new(),
        Value::Array(_, items) => {
            let items: Vec<String> = items.iter().map(shown).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Dict(_, d) => {
            let items: Vec<String> = d
                .iter()
                .map(|(k, v)| format!("{k} = {}", shown(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

/// Keys are secrets, even slightly wrong ones: errors and logs show only their length.
pub(super) fn redact(secret: &str) -> String {
    format!("<{} characters, not shown>", secret.chars().count())
}

enum Number {
    Int(i128),
    Float(f64),
}

fn number(n: &Num) -> Number {
    if let Some(i) = n.to_i128() {
        return Number::Int(i);
    }
    if let Some(u) = n.to_u128() {
        return match i128::try_from(u) {
            Ok(i) => Number::Int(i),
            Err(_) => Number::Float(u as f64),
        };
    }
    Number::Float(n.to_f64().unwrap_or(f64::NAN))
}

/// A finite number from a TOML number or a string; `inf` and `NaN` are refused.
pub(super) fn finite(v: &Value, reason: &'static str) -> Parsed<f64> {
    let x = match v {
        Value::Num(_, n) => match number(n) {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        },
        Value::String(_, s) => {
            let s = s.trim();
            let looks_numeric = s
                .bytes()
                .all(|b| b.is_ascii_digit() || b"+-.eE_".contains(&b));
            if !looks_numeric {
                return Err(reason);
            }
            s.replace('_', "").parse::<f64>().map_err(|_| reason)?
        }
        _ => return Err(reason),
    };
    if x.is_finite() { Ok(x) } else { Err(reason) }
}

/// A non-negative whole number: `2`, `2.0`, `"2"`, `" 2.0 "`.
pub(super) fn whole(v: &Value, reason: &'static str) -> Parsed<u64> {
    if let Value::Num(_, n) = v
        && let Number::Int(i) = number(n)
    {
        return u64::try_from(i).map_err(|_| reason);
    }
    if let Value::String(_, s) = v
        && let Ok(u) = s.trim().replace('_', "").parse::<u64>()
    {
        return Ok(u);
    }
    let x = finite(v, reason)?;
    if x < 0.0 || x.fract() != 0.0 || x > F64_EXACT {
        return Err(reason);
    }
    Ok(x as u64)
}

pub(super) fn secs(v: &Value) -> Parsed<f64> {
    finite(v, REASON_SECONDS)
}

/// A byte count: a whole number, or a string with a `KiB`, `MiB` or `GiB` suffix
/// (`"1.5 MiB"`). `reason` is used for values that are not byte counts at all.
pub(super) fn bytes_or(v: &Value, reason: &'static str) -> Parsed<u64> {
    if let Value::String(_, s) = v {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        for (suffix, scale) in [("kib", 1u64 << 10), ("mib", 1 << 20), ("gib", 1 << 30)] {
            if let Some(number) = lower.strip_suffix(suffix) {
                let x = finite(&Value::from(number.trim().to_string()), reason)?;
                let total = x * scale as f64;
                if x < 0.0 || total.fract() != 0.0 || total > F64_EXACT {
                    return Err(reason);
                }
                return Ok(total as u64);
            }
        }
    }
    whole(v, reason)
}

pub(super) fn bytes(v: &Value) -> Parsed<u64> {
    bytes_or(v, REASON_BYTES)
}

/// Text: a string, or a scalar written without quotes (`node_name = 7`).
pub(super) fn text(v: &Value) -> Parsed<String> {
    match v {
        Value::String(_, s) => Ok(s.clone()),
        Value::Num(..) | Value::Bool(..) | Value::Char(..) => Ok(shown(v)),
        _ => Err("is not text"),
    }
}

/// Decodes a key in standard or URL-safe base64, with or without padding (so Fernet keys
/// from McCache work too).
pub(super) fn decode_key(text: &str) -> Parsed<[u8; 32]> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let text = text.trim();
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .and_then(|raw| <[u8; 32]>::try_from(raw.as_slice()).ok())
        .ok_or(REASON_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::from(text.to_string())
    }

    #[test]
    fn whole_numbers_accept_every_spelling_of_an_integer() {
        for v in [
            s("2"),
            s(" 2 "),
            s("2.0"),
            s("2e0"),
            Value::from(2u8),
            Value::from(2.0f64),
        ] {
            assert_eq!(whole(&v, "r"), Ok(2), "{v:?}");
        }
        for v in [
            s("2.5"),
            s("-2"),
            s("x"),
            s(""),
            s("inf"),
            Value::from(-2i64),
            Value::from(true),
        ] {
            assert_eq!(whole(&v, "r"), Err("r"), "{v:?}");
        }
        assert_eq!(whole(&s("18446744073709551615"), "r"), Ok(u64::MAX));
        assert_eq!(whole(&s("1_000"), "r"), Ok(1000));
    }

    #[test]
    fn byte_counts_take_binary_suffixes() {
        assert_eq!(bytes(&s("1 KiB")), Ok(1024));
        assert_eq!(bytes(&s("8mib")), Ok(8 << 20));
        assert_eq!(bytes(&s("1.5 MiB")), Ok(3 << 19));
        assert_eq!(bytes(&s("2GiB")), Ok(2 << 30));
        assert_eq!(
            bytes(&s("0.3 KiB")),
            Err(REASON_BYTES),
            "307.2 bytes is not whole"
        );
        assert_eq!(bytes(&s("-1 KiB")), Err(REASON_BYTES));
        assert_eq!(bytes(&s("KiB")), Err(REASON_BYTES));
        assert_eq!(
            bytes(&s("1 kB")),
            Err(REASON_BYTES),
            "decimal units are ambiguous"
        );
    }

    #[test]
    fn seconds_refuse_non_finite_spellings() {
        for text in [
            "nan", "NaN", "inf", "-inf", "infinity", "1e400", "0x10", "5s",
        ] {
            assert_eq!(secs(&s(text)), Err(REASON_SECONDS), "{text}");
        }
        assert_eq!(secs(&s(" 0.25 ")), Ok(0.25));
        assert_eq!(secs(&Value::from(3i64)), Ok(3.0));
    }

    #[test]
    fn keys_decode_in_every_base64_flavour() {
        let raw = [0xfbu8; 32];
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            assert_eq!(decode_key(&engine.encode(raw)), Ok(raw));
        }
        assert_eq!(decode_key(&STANDARD.encode([1u8; 31])), Err(REASON_KEY));
        assert_eq!(decode_key(&STANDARD.encode([1u8; 33])), Err(REASON_KEY));
        assert_eq!(decode_key("!!!"), Err(REASON_KEY));
        assert_eq!(
            decode_key(&crate::config::generate_key()).map(|k| k.len()),
            Ok(32)
        );
    }

    #[test]
    fn shown_renders_values_as_written() {
        assert_eq!(shown(&s(" a ")), " a ");
        assert_eq!(shown(&Value::from(2.5f64)), "2.5");
        assert_eq!(shown(&Value::from(-7i64)), "-7");
        assert_eq!(shown(&Value::from(vec![1u8, 2])), "[1, 2]");
        assert_eq!(redact("abcd"), "<4 characters, not shown>");
    }
}
