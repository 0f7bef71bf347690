//! Configuration: defaults, then a TOML file, then `MCCACHE_*` environment variables.
//!
//! Key names follow McCache (`docs/CONFIG.md` has a table of every key). Values are parsed
//! tolerantly: a number may come as a TOML integer or float, or as a string such as `"2"`,
//! `"2.0"` or `" 3 "` from the environment. Every bad value is refused with a
//! [`ConfigError`] that names the key and the value as given, for example
//! `cache_ttl: "abc" is not a number of seconds`. Nothing is coerced into a wrong type and left
//! to fail later (McCache's bug B21), and every multicast address in 224.0.0.0/4 is accepted
//! (McCache's bug B20).
//!
//! ```
//! use std::time::Duration;
//! use mccache::Config;
//!
//! let config = Config::from_toml_str(
//!     r#"
//!     cache_ttl = 60
//!     multicast_ip = "239.255.10.1:4100"
//!
//!     [caches.sessions]
//!     cache_ttl = "900"
//!     "#,
//! )?;
//! assert_eq!(config.multicast_port, 4100);
//! assert_eq!(config.cache_config("sessions").ttl, Some(Duration::from_secs(900)));
//! assert_eq!(config.cache_config("other").ttl, Some(Duration::from_secs(60)));
//! # Ok::<(), mccache::Error>(())
//! ```
//!
//! Layout: every key is declared once in `keys.rs` (field, type, default, rule, documentation);
//! `declare.rs` writes the struct, parsing, validation and the documentation table from it;
//! `rules.rs` holds the rules, `values.rs` reads raw values, `load.rs` merges the layers,
//! `cache.rs` computes per-cache settings, and `transport.rs` and `backing.rs` hold the
//! rules of the unicast and memcached keys.

use std::net::SocketAddrV4;
use std::time::Duration;

use base64::Engine as _;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};

use crate::error::ConfigError;

mod backing;
mod cache;
mod declare;
#[cfg(test)]
mod doc_table;
mod enums;
mod keys;
mod load;
mod rules;
mod transport;
mod values;

pub use backing::{BackingSpec, WritePolicy};
pub use cache::CacheConfig;
pub use enums::{CacheMode, Overload, TantrumSide};
pub(crate) use keys::differing_keys;
pub use keys::{CacheOverrides, Config};
pub use transport::TransportKind;
pub(crate) use transport::peer_with_port;
use values::{decode_key, redact};

/// The prefix of every environment variable read by [`Config::load`].
pub(crate) const ENV_PREFIX: &str = "MCCACHE_";

/// The environment variable naming the TOML file to read instead of `./mccache.toml`.
/// Set but empty: read no file at all.
pub(crate) const CONFIG_PATH_ENV: &str = "MCCACHE_CONFIG";

/// The file read from the working directory when [`CONFIG_PATH_ENV`] is not set.
pub(crate) const DEFAULT_CONFIG_FILE: &str = "mccache.toml";

/// The longest timespan any seconds key accepts: 10^9 s (about 31.7 years). Longer spans would
/// overflow `Instant` arithmetic.
pub(crate) const MAX_SECONDS: f64 = 1e9;

/// The largest accepted `max_message_size`: 64 MiB.
pub(crate) const MAX_MESSAGE_SIZE_LIMIT: usize = 64 * 1024 * 1024;

impl Config {
    /// Loads defaults, then `./mccache.toml` (or the file named by `$MCCACHE_CONFIG`), then
    /// `MCCACHE_*` environment variables, and validates the result.
    ///
    /// A `MCCACHE_CONFIG` that names a missing or unreadable file is a
    /// [`ConfigError::File`] naming the path; a bad value is a [`ConfigError::Invalid`] and an
    /// unknown key a [`ConfigError::UnknownKey`].
    ///
    /// ```no_run
    /// let config = mccache::Config::load()?;
    /// println!("joining {}", config.group());
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn load() -> Result<Config, ConfigError> {
        load::warn_unknown_env_vars();
        if let Some(path) = load::config_path_from_env()
            && !path.is_file()
        {
            return Err(ConfigError::File {
                path: path.display().to_string(),
                source: format!("{CONFIG_PATH_ENV} names no such file").into(),
            });
        }
        Config::from_figment(&Config::figment())
    }

    /// The layered figment [`Config::load`] reads: [`Config::default`], then the TOML file,
    /// then the environment. Applications can merge their own providers on top and hand the
    /// result to [`Config::from_figment`].
    ///
    /// Environment variables are matched without regard to case, `__` nests
    /// (`MCCACHE_CACHES__USERS__CACHE_TTL=60` sets `caches.users.cache_ttl`; cache names
    /// reached this way are lower case), and variables that name no known key are ignored
    /// ([`Config::load`] warns about each of them once, naming the nearest known variable, and
    /// [`Node::health`](crate::Node::health) lists them).
    ///
    /// ```
    /// use figment::providers::Serialized;
    /// use mccache::Config;
    ///
    /// let figment = Config::figment().merge(Serialized::default("cache_max", 1000));
    /// assert_eq!(Config::from_figment(&figment)?.cache_max, 1000);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn figment() -> Figment {
        load::figment()
    }

    /// Builds and validates a configuration from any figment. Keys the figment lacks keep
    /// their defaults; keys it has that mccache does not know are an error (the environment
    /// layer of [`Config::figment`] drops unknown `MCCACHE_*` variables before this point).
    ///
    /// ```
    /// use figment::{Figment, providers::{Format, Toml}};
    /// use mccache::Config;
    ///
    /// let figment = Figment::new().merge(Toml::string("cache_max = 2.0"));
    /// assert_eq!(Config::from_figment(&figment)?.cache_max, 2);
    ///
    /// let typo = Figment::new().merge(Toml::string("cache_tll = 60"));
    /// assert_eq!(
    ///     Config::from_figment(&typo).unwrap_err().to_string(),
    ///     r#"cache_tll: "60" is not a known key (did you mean cache_ttl?)"#,
    /// );
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn from_figment(figment: &Figment) -> Result<Config, ConfigError> {
        let dict: Dict = figment.extract().map_err(load::file_error)?;
        let config = load::from_dict(&dict)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text over the defaults and validates the result (no file, no environment).
    ///
    /// ```
    /// let config = mccache::Config::from_toml_str("cache_pulse = 2.5")?;
    /// assert_eq!(config.pulse(), std::time::Duration::from_millis(2500));
    ///
    /// let err = mccache::Config::from_toml_str("cache_mode = 3").unwrap_err();
    /// assert_eq!(err.to_string(), r#"cache_mode: "3" must be 0, 1 or 2"#);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        let figment = Figment::from(Config::default()).merge(Toml::string(toml));
        Config::from_figment(&figment)
    }

    /// Checks every value; the error names the key and the bad value.
    ///
    /// Each key's range is given in its field's documentation (and in the key table of
    /// `docs/CONFIG.md`), both written from the key's declaration, which also names the rule
    /// checked here; the same rules apply to each `[caches.NAME]` override. Parsing applies
    /// them too, so a loaded configuration is already valid: this matters for one built or
    /// changed in code.
    ///
    /// ```
    /// use mccache::Config;
    ///
    /// let mut bad = Config::default();
    /// bad.cache_pulse = 0.0;
    /// assert_eq!(bad.validate().unwrap_err().to_string(), r#"cache_pulse: "0" must be greater than 0"#);
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_keys()
    }

    /// The decoded encryption keys: `crypto_key` first (if set), then `crypto_keys` (without
    /// repeating `crypto_key`). The first key encrypts what this node sends; all of them are
    /// tried on what it receives. Empty: the cluster runs in plaintext with a crc32 check.
    ///
    /// ```
    /// use mccache::{Config, generate_key};
    ///
    /// assert!(Config::default().crypto_keyring()?.is_empty());
    ///
    /// let (new, old) = (generate_key(), generate_key());
    /// let mut config = Config::default();
    /// config.crypto_keys = vec![new, old];
    /// assert_eq!(config.crypto_keyring()?.len(), 2);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn crypto_keyring(&self) -> Result<Vec<[u8; 32]>, ConfigError> {
        let mut ring: Vec<[u8; 32]> = Vec::new();
        let named = self
            .crypto_key
            .iter()
            .map(|k| ("crypto_key".to_string(), k));
        let listed =
            (self.crypto_keys.iter().enumerate()).map(|(i, k)| (format!("crypto_keys[{i}]"), k));
        for (name, text) in named.chain(listed) {
            let key = decode_key(text)
                .map_err(|reason| ConfigError::invalid(&name, redact(text), reason))?;
            if !ring.contains(&key) {
                ring.push(key);
            }
        }
        Ok(ring)
    }

    /// The multicast group and port (`multicast_ip`, `multicast_port`).
    ///
    /// ```
    /// let config = mccache::Config::from_toml_str(r#"multicast_ip = "239.1.2.3:5000""#)?;
    /// assert_eq!(config.group().to_string(), "239.1.2.3:5000");
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn group(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.multicast_ip, self.multicast_port)
    }

    /// `node_name`, or `hostname:pid` when it is not set. The host name comes from
    /// `/proc/sys/kernel/hostname`, `/etc/hostname` or `$HOSTNAME`, else `node`.
    ///
    /// ```
    /// let config = mccache::Config::default();
    /// let name = config.node_name_or_default();
    /// assert!(name.ends_with(&format!(":{}", std::process::id())));
    /// ```
    pub fn node_name_or_default(&self) -> String {
        match &self.node_name {
            Some(name) => name.clone(),
            None => format!("{}:{}", hostname(), std::process::id()),
        }
    }

    /// `overload_timeout` as a [`Duration`] (saturating, like [`Config::cache_config`]).
    ///
    /// ```
    /// let config = mccache::Config::from_toml_str("overload_timeout = 0.25")?;
    /// assert_eq!(config.overload_wait(), std::time::Duration::from_millis(250));
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn overload_wait(&self) -> Duration {
        secs_to_duration(self.overload_timeout)
    }

    /// `cache_pulse` as a [`Duration`] (saturating, like [`Config::cache_config`]).
    ///
    /// ```
    /// assert_eq!(mccache::Config::default().pulse(), std::time::Duration::from_secs(5));
    /// ```
    pub fn pulse(&self) -> Duration {
        secs_to_duration(self.cache_pulse)
    }

    /// `max_clock_skew` as a [`Duration`] (saturating).
    pub fn max_clock_skew(&self) -> Duration {
        secs_to_duration(self.max_clock_skew)
    }

    /// `daemon_sleep` as a [`Duration`] (saturating, like [`Config::cache_config`]).
    ///
    /// ```
    /// assert_eq!(mccache::Config::default().daemon_sleep(), std::time::Duration::from_secs(1));
    /// ```
    pub fn daemon_sleep(&self) -> Duration {
        secs_to_duration(self.daemon_sleep)
    }

    /// `metrics_log_interval` as a [`Duration`]; `None` when it is 0 (summaries off).
    ///
    /// ```
    /// let config = mccache::Config::from_toml_str("metrics_log_interval = 15")?;
    /// assert_eq!(config.metrics_log_every(), Some(std::time::Duration::from_secs(15)));
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn metrics_log_every(&self) -> Option<Duration> {
        (self.metrics_log_interval > 0.0).then(|| secs_to_duration(self.metrics_log_interval))
    }

    /// The node-wide `callback_win` as a [`Duration`] (saturating, like
    /// [`Config::cache_config`]).
    ///
    /// ```
    /// assert_eq!(mccache::Config::default().callback_window(), std::time::Duration::from_secs(5));
    /// ```
    pub fn callback_window(&self) -> Duration {
        secs_to_duration(self.callback_win)
    }

    /// The UDP port a unicast node listens on: `bind_port`, else `multicast_port`.
    ///
    /// ```
    /// let config = mccache::Config::from_toml_str("multicast_port = 4100")?;
    /// assert_eq!(config.unicast_port(), 4100);
    /// let config = mccache::Config::from_toml_str("bind_port = 4200")?;
    /// assert_eq!(config.unicast_port(), 4200);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn unicast_port(&self) -> u16 {
        self.bind_port.unwrap_or(self.multicast_port)
    }

    /// `discovery_interval` as a [`Duration`] (saturating, like [`Config::cache_config`]).
    ///
    /// ```
    /// assert_eq!(mccache::Config::default().discovery_interval(), std::time::Duration::from_secs(10));
    /// ```
    pub fn discovery_interval(&self) -> Duration {
        secs_to_duration(self.discovery_interval)
    }
}

/// Makes a new random encryption key: 32 bytes from the operating system's CSPRNG (via
/// `rand`'s thread RNG), in standard base64. Put it in `crypto_key` (or first in
/// `crypto_keys`) on every node of the cluster.
///
/// ```
/// use mccache::{Config, generate_key};
///
/// let key = generate_key();
/// assert_eq!(key.len(), 44);
/// let mut config = Config::default();
/// config.crypto_key = Some(key);
/// assert_eq!(config.crypto_keyring()?.len(), 1);
/// # Ok::<(), mccache::Error>(())
/// ```
pub fn generate_key() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Provider for Config {
    fn metadata(&self) -> Metadata {
        Metadata::named("mccache::Config")
    }

    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(self).data()
    }
}

/// `MCCACHE_*` variables of this process that name no configuration key (they are ignored),
/// each with a sentence naming the nearest known variable, for example
/// `MCCACHE_CACHE_TLL is not a configuration key and is ignored (did you mean MCCACHE_CACHE_TTL?)`.
/// [`Config::load`] warns about each of them once per process (see
/// [`crate::Node::health`] for the list on a running node).
pub(crate) fn unknown_env_vars() -> Vec<String> {
    load::unknown_env_vars()
}

/// Seconds to a `Duration`, saturating: negative or NaN → zero, too large → `Duration::MAX`.
pub(crate) fn secs_to_duration(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    }
}

fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .chain(std::env::var("HOSTNAME").ok().map(|s| s.trim().to_string()))
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_saturate_instead_of_panicking() {
        assert_eq!(secs_to_duration(-1.0), Duration::ZERO);
        assert_eq!(secs_to_duration(f64::NAN), Duration::ZERO);
        assert_eq!(secs_to_duration(f64::INFINITY), Duration::MAX);
        assert_eq!(secs_to_duration(1e300), Duration::MAX);
        assert_eq!(secs_to_duration(0.5), Duration::from_millis(500));
    }

    #[test]
    fn the_default_config_round_trips_through_its_own_provider() {
        let c = Config {
            node_name: Some("n".into()),
            crypto_keys: vec![generate_key()],
            ..Config::default()
        };
        assert_eq!(Config::from_figment(&Figment::from(c.clone())).unwrap(), c);
        assert_eq!(
            Config::from_figment(&Figment::new()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn differing_keys_names_every_changed_key() {
        let a = Config::default();
        let mut b = a.clone();
        assert!(differing_keys(&a, &b).is_empty());
        b.cache_max = 1;
        b.crypto_key = Some(generate_key());
        b.caches.insert("x".into(), CacheOverrides::default());
        assert_eq!(
            differing_keys(&a, &b),
            ["cache_max", "crypto_key", "caches"]
        );
    }
}
