//! The error types of the public API: [`Error`] for every call, and [`ConfigError`] for
//! configuration that cannot be used (inside [`Error::Config`] where a call can fail both
//! ways, such as [`crate::Node::start`]).

use std::error::Error as StdError;
use std::fmt;
use std::io;

/// Everything that can go wrong in a call to mccache.
///
/// Network garbage never shows up here: bad datagrams are counted in
/// [`crate::NetworkMetrics`] and traced, never returned to cache users.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid: a key with a bad value, an unknown key, or a file that
    /// could not be read. Displays as the [`ConfigError`] does, for example
    /// `cache_ttl: "abc" is not a number of seconds`; [`std::error::Error::source`] is the
    /// configuration error's own source (the I/O or parse error underneath, if any).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A cache of this name is already open with other key/value types.
    #[error("cache {name:?} is already open as Cache<{existing}>, not Cache<{requested}>")]
    TypeMismatch {
        /// The cache name.
        name: String,
        /// `K, V` type names it was first opened with.
        existing: String,
        /// `K, V` type names of this request.
        requested: String,
    },
    /// [`CacheBuilder::build`](crate::CacheBuilder::build) asked for a setting that differs
    /// from the one the already-open cache runs with.
    #[error("cache {name:?} is already open with {setting} = {existing}, not {requested}")]
    CacheConflict {
        /// The cache name.
        name: String,
        /// The setting that differs, as the builder names it (e.g. `ttl`).
        setting: &'static str,
        /// Its value in the open cache.
        existing: String,
        /// The value the builder asked for.
        requested: String,
    },
    /// The serialized key plus value is larger than the largest message the cluster replicates
    /// (`max_message_size`); nothing was stored.
    #[error("entry of {size} bytes exceeds max_message_size ({max} bytes); nothing was stored")]
    TooLarge {
        /// Serialized key + value bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The serialized key plus value is larger than the whole cache (`cache_size`); nothing was
    /// stored.
    #[error("entry of {size} bytes exceeds cache_size ({max} bytes); nothing was stored")]
    ExceedsCacheSize {
        /// Serialized key + value bytes.
        size: u64,
        /// The configured byte cap.
        max: u64,
    },
    /// A key or value could not be serialized or deserialized with rmp-serde; the rmp-serde
    /// error is the [`source`](std::error::Error::source).
    #[error("a key or value could not be serialized")]
    Serialization(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// `compare_and_swap` found another version than the expected one; nothing was stored.
    #[error("version mismatch: expected {expected:?}, found {found:?}")]
    VersionMismatch {
        /// The version the caller expected.
        expected: Option<crate::Version>,
        /// The version the cache holds (`None` if the key is absent).
        found: Option<crate::Version>,
    },
    /// The value loader of `get_or_insert_with` panicked or failed in another caller.
    #[error("the loader for this key failed in a concurrent caller")]
    LoaderFailed,
    /// A socket could not be set up (a failure that is not the fault of one configuration
    /// key: those are [`Error::Config`]).
    #[error("network: {0}")]
    Network(#[from] io::Error),
    /// The outbound replication queue was full (`queue_max` changes or `queue_max_bytes`
    /// bytes): at once under `overload = "error"`, or for all of `overload_timeout` under
    /// `overload = "block"`. Nothing was stored.
    #[error(
        "replication queue full (queue_max {queue_max} changes or queue_max_bytes {queue_max_bytes} bytes queued, overload = \"{policy}\"): nothing was stored"
    )]
    Overloaded {
        /// The queue bound in changes (`queue_max`).
        queue_max: usize,
        /// The queue bound in bytes (`queue_max_bytes`).
        queue_max_bytes: u64,
        /// The policy that refused the write: `"error"` or `"block"`.
        policy: &'static str,
    },
    /// [`crate::init`] was called with a configuration other than the one the process-wide
    /// default node already runs with (started by an earlier `init` or by the first
    /// [`crate::get_cache`] from [`crate::Config::load`]).
    #[error("the default node is already running with another configuration (keys that differ: {})", keys.join(", "))]
    DefaultNodeConfigured {
        /// The configuration keys whose values differ.
        keys: Vec<String>,
    },
    /// The node has been shut down.
    #[error("the node has been shut down")]
    Shutdown,
    /// A diagnostic (MTU, hops) could not reach a conclusion.
    #[error("diagnostic failed: {0}")]
    Diagnostic(String),
}

/// A configuration that cannot be used: a key with a bad value, a key mccache does not know,
/// or a configuration file that cannot be read.
///
/// Every variant names what is at fault (the key and the value as given, or the file), and
/// keeps the error underneath, if there is one, as its [`source`](StdError::source).
///
/// ```
/// use mccache::{Config, ConfigError, Error};
///
/// let e = Config::from_toml_str("cache_ttl = \"abc\"").unwrap_err();
/// assert!(matches!(e, ConfigError::Invalid { .. }));
/// assert_eq!((e.key(), e.value()), (Some("cache_ttl"), Some("abc")));
/// assert_eq!(e.to_string(), r#"cache_ttl: "abc" is not a number of seconds"#);
///
/// // Calls that can also fail at run time wrap it in `Error::Config`.
/// let mut config = Config::default();
/// config.cache_max = 0;
/// match mccache::Node::start_local(config) {
///     Err(Error::Config(e)) => assert_eq!(e.key(), Some("cache_max")),
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A key has a value that cannot be used. Displays as `key: "value" reason`, for example
    /// `cache_ttl: "abc" is not a number of seconds`.
    #[error("{key}: \"{value}\" {reason}")]
    #[non_exhaustive]
    Invalid {
        /// The configuration key at fault, e.g. `cache_ttl`, `caches.users.cache_mode` or
        /// `peers[1]`.
        key: String,
        /// The offending value as given (crypto keys only by their length).
        value: String,
        /// What was expected, as the rest of the sentence: `is not a number of seconds`.
        reason: String,
        /// The error underneath, for example the operating system's refusal to bind a port.
        source: Option<Box<dyn StdError + Send + Sync>>,
    },
    /// A key mccache does not know (a typo, usually). Displays as
    /// `cache_tll: "60" is not a known key (did you mean cache_ttl?)`.
    #[error("{key}: \"{value}\" is not a known key{}", Hint(suggestion.as_deref()))]
    #[non_exhaustive]
    UnknownKey {
        /// The key as given.
        key: String,
        /// Its value as given.
        value: String,
        /// The nearest known key, when one is close.
        suggestion: Option<String>,
    },
    /// A configuration file could not be read or parsed. Displays as
    /// `config file PATH could not be used`; the reason is the source.
    #[error("config file {path} could not be used")]
    #[non_exhaustive]
    File {
        /// The path that was read.
        path: String,
        /// Why it could not be used (I/O or TOML syntax).
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl ConfigError {
    /// The key at fault (`None` for a file error).
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } | ConfigError::UnknownKey { key, .. } => Some(key),
            ConfigError::File { .. } => None,
        }
    }

    /// The value at fault as given (`None` for a file error).
    pub fn value(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { value, .. } | ConfigError::UnknownKey { value, .. } => {
                Some(value)
            }
            ConfigError::File { .. } => None,
        }
    }

    /// A bad value of `key`, with the reason it was refused.
    pub(crate) fn invalid(key: &str, value: impl fmt::Display, reason: &str) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
            source: None,
        }
    }

    /// A bad value of `key` with the error underneath kept as the source.
    pub(crate) fn invalid_because(
        key: &str,
        value: impl fmt::Display,
        reason: &str,
        source: impl StdError + Send + Sync + 'static,
    ) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
            source: Some(Box::new(source)),
        }
    }
}

/// ` (did you mean KEY?)`, or nothing.
struct Hint<'a>(Option<&'a str>);

impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(k) => write!(f, " (did you mean {k}?)"),
            None => Ok(()),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
