//! The `declare_keys!` macro: from one declaration per key (`keys.rs`) it writes the
//! [`Config`](super::Config) field, its default, its parsing and validation (through the key's
//! rule), the list of known keys used for "did you mean" hints, the per-cache override field
//! of [`CacheOverrides`](super::CacheOverrides), `differing_keys`, and the documentation row
//! of `docs/CONFIG.md` (see `doc_table.rs`).

/// What the documentation says about one key; one entry per declaration, in declaration
/// order.
#[derive(Debug)]
// `unit`, `default` and `doc` are read by the documentation check (`doc_table.rs`, tests only).
#[cfg_attr(not(test), allow(dead_code))]
pub(super) struct KeyDoc {
    /// The key, e.g. `cache_ttl` (the environment variable is `MCCACHE_` + its upper case).
    pub(super) name: &'static str,
    /// The type and unit with the accepted range, e.g. `seconds (float), > 0`.
    pub(super) unit: &'static str,
    /// The default as documented, e.g. `` `3600` ``.
    pub(super) default: &'static str,
    /// Whether `[caches.NAME]` can override it.
    pub(super) per_cache: bool,
    /// The meaning: the field's doc comment, one line per source line.
    pub(super) doc: &'static str,
}

/// Declares every configuration key once; see the module documentation.
///
/// Each entry: doc comment, `name: Type = default => { rule: RULE, unit: "...", default:
/// "...", [per_cache: OverrideType = RULE,] }`, where `RULE` implements `KeyRule` with
/// `Value = Type` (the override's rule: `Value = OverrideType`).
macro_rules! declare_keys {
    (
        $(#[$config_meta:meta])*
        pub struct Config;
        $(#[$overrides_meta:meta])*
        pub struct CacheOverrides;
        $(
            $(#[doc = $doc:literal])*
            $name:ident: $ty:ty = $default:expr => {
                rule: $rule:expr,
                unit: $unit:literal,
                default: $shown:literal,
                $(per_cache: $oty:ty = $orule:expr,)?
            }
        )*
    ) => {
        $(#[$config_meta])*
        #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        #[non_exhaustive]
        pub struct Config {
            $(
                $(#[doc = $doc])*
                #[doc = ""]
                #[doc = concat!(
                    "`", stringify!($name), "`: ", $unit, ". Default: ", $shown, "."
                )]
                pub $name: $ty,
            )*
            /// Per-cache overrides, `[caches.NAME]`.
            pub caches: std::collections::BTreeMap<String, CacheOverrides>,
        }

        impl Default for Config {
            fn default() -> Config {
                Config {
                    $($name: $default,)*
                    caches: std::collections::BTreeMap::new(),
                }
            }
        }

        $(#[$overrides_meta])*
        #[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        #[non_exhaustive]
        pub struct CacheOverrides {
            $($(
                #[doc = concat!("Overrides `", stringify!($name), "`.")]
                pub $name: Option<$oty>,
            )?)*
        }

        /// Every key, in declaration order.
        pub(super) const KEYS: &[$crate::config::declare::KeyDoc] = &[
            $($crate::config::declare::KeyDoc {
                name: stringify!($name),
                unit: $unit,
                default: $shown,
                per_cache: declare_keys!(@flag $($oty)?),
                doc: concat!($($doc, "\n",)*),
            },)*
        ];

        impl Config {
            /// Sets `key` from a raw value; `Ok(false)` if there is no such top-level key.
            pub(super) fn set_key(
                &mut self,
                key: &str,
                v: &figment::value::Value,
            ) -> Result<bool, $crate::error::ConfigError> {
                $(
                    if key == stringify!($name) {
                        if let Some(x) = $crate::config::rules::KeyRule::parse(&$rule, key, v)? {
                            self.$name = x;
                        }
                        return Ok(true);
                    }
                )*
                Ok(false)
            }

            /// Checks every key with its rule, then every per-cache override.
            pub(super) fn check_keys(&self) -> Result<(), $crate::error::ConfigError> {
                $($crate::config::rules::KeyRule::check(&$rule, stringify!($name), &self.$name)?;)*
                for (name, overrides) in &self.caches {
                    overrides.check(name)?;
                }
                Ok(())
            }
        }

        impl CacheOverrides {
            /// Sets `key` of cache `cache` from a raw value; `Ok(false)` if caches have no
            /// such key.
            pub(super) fn set_key(
                &mut self,
                cache: &str,
                key: &str,
                v: &figment::value::Value,
            ) -> Result<bool, $crate::error::ConfigError> {
                $($(
                    if key == stringify!($name) {
                        let full = format!("caches.{cache}.{key}");
                        let rule: &dyn $crate::config::rules::KeyRule<Value = $oty> = &$orule;
                        if let Some(x) = rule.parse(&full, v)? {
                            self.$name = Some(x);
                        }
                        return Ok(true);
                    }
                )?)*
                Ok(false)
            }

            /// Checks every override that is set.
            pub(super) fn check(&self, cache: &str) -> Result<(), $crate::error::ConfigError> {
                if cache.is_empty() {
                    return Err($crate::error::ConfigError::invalid(
                        "caches",
                        cache,
                        $crate::config::load::REASON_CACHE_NAME,
                    ));
                }
                $($(
                    if let Some(v) = &self.$name {
                        let rule: &dyn $crate::config::rules::KeyRule<Value = $oty> = &$orule;
                        rule.check(&format!("caches.{cache}.{}", stringify!($name)), v)?;
                    }
                )?)*
                Ok(())
            }
        }

        /// The keys whose values differ between `a` and `b` (names only: values may be
        /// secret keys).
        pub(crate) fn differing_keys(a: &Config, b: &Config) -> Vec<String> {
            let mut out = Vec::new();
            $(
                if a.$name != b.$name {
                    out.push(stringify!($name).to_string());
                }
            )*
            if a.caches != b.caches {
                out.push("caches".to_string());
            }
            out
        }
    };
    (@flag $oty:ty) => { true };
    (@flag) => { false };
}

pub(super) use declare_keys;
