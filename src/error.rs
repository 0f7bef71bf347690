//! The one error type of the public API.

use std::io;

/// Everything that can go wrong in a call to mccache.
///
/// Network garbage never shows up here: bad datagrams are counted in
/// [`crate::NetworkMetrics`] and traced, never returned to cache users.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration key has a bad value. Displays as `key: "value" reason`, for example
    /// `cache_ttl: "abc" is not a number of seconds`.
    #[error("{key}: \"{value}\" {reason}")]
    Config {
        /// The configuration key at fault, e.g. `cache_ttl`.
        key: String,
        /// The offending value as given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// The configuration file could not be read or parsed.
    #[error("config file {path}: {message}")]
    ConfigFile {
        /// The path that was read.
        path: String,
        /// What went wrong.
        message: String,
    },
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
    /// A key or value could not be serialized or deserialized with rmp-serde.
    #[error("serialization failed: {0}")]
    Serialization(String),
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
    /// A socket could not be set up.
    #[error("network: {0}")]
    Network(#[from] io::Error),
    /// The outbound replication queue (`queue_max`) was full: at once under
    /// `overload = "error"`, or for all of `overload_timeout` under `overload = "block"`.
    /// Nothing was stored.
    #[error(
        "replication queue full ({queue_max} changes queued, overload = \"{policy}\"): nothing was stored"
    )]
    Overloaded {
        /// The queue bound (`queue_max`).
        queue_max: usize,
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

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
