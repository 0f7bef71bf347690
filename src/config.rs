//! Configuration: defaults, then a TOML file, then `MCCACHE_*` environment variables.
//!
//! Key names follow McCache (`docs/CONFIG.md` has a table of every key). Values are parsed
//! tolerantly: a number may come as a TOML integer or float, or as a string such as `"2"`,
//! `"2.0"` or `" 3 "` from the environment. Every bad value is refused with an
//! [`Error::Config`] that names the key and the value as given, for example
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

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Num, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod backing;
pub use backing::{BackingSpec, WritePolicy};
mod transport;
pub use transport::{TransportKind, peer_with_port};

/// The prefix of every environment variable read by [`Config::load`].
pub const ENV_PREFIX: &str = "MCCACHE_";

/// The environment variable naming the TOML file to read instead of `./mccache.toml`.
/// Set but empty: read no file at all.
pub const CONFIG_PATH_ENV: &str = "MCCACHE_CONFIG";

/// The file read from the working directory when [`CONFIG_PATH_ENV`] is not set.
pub const DEFAULT_CONFIG_FILE: &str = "mccache.toml";

/// The longest timespan any seconds key accepts: 10^9 s (about 31.7 years). Longer spans would
/// overflow `Instant` arithmetic.
pub const MAX_SECONDS: f64 = 1e9;

/// The largest accepted `max_message_size`: 64 MiB.
pub const MAX_MESSAGE_SIZE_LIMIT: usize = 64 * 1024 * 1024;

/// How a cache replicates its writes to peers (`cache_mode`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum CacheMode {
    /// `0`: a peer updates a key only if it already holds it (McCache's documented meaning).
    UpdateIfPresent,
    /// `1`: full replication (the default).
    #[default]
    Replicate,
    /// `2`: invalidate: peers drop their copy, so their next read misses.
    Invalidate,
}

impl TryFrom<u8> for CacheMode {
    type Error = String;
    fn try_from(v: u8) -> std::result::Result<Self, String> {
        match v {
            0 => Ok(CacheMode::UpdateIfPresent),
            1 => Ok(CacheMode::Replicate),
            2 => Ok(CacheMode::Invalidate),
            _ => Err(format!("{v} is not a cache mode (0, 1 or 2)")),
        }
    }
}

impl From<CacheMode> for u8 {
    fn from(m: CacheMode) -> u8 {
        match m {
            CacheMode::UpdateIfPresent => 0,
            CacheMode::Replicate => 1,
            CacheMode::Invalidate => 2,
        }
    }
}

/// Which direction `monkey_tantrum` drops datagrams in (`monkey_tantrum_side`).
///
/// ```
/// use mccache::TantrumSide;
///
/// assert!(TantrumSide::Both.drops_sends() && TantrumSide::Both.drops_receives());
/// assert!(!TantrumSide::Recv.drops_sends());
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TantrumSide {
    /// `"send"`: drop outgoing datagrams only.
    Send,
    /// `"recv"`: drop incoming datagrams only.
    Recv,
    /// `"both"`: drop in both directions (the default).
    #[default]
    Both,
}

impl TantrumSide {
    /// Whether outgoing datagrams are subject to the tantrum.
    pub fn drops_sends(self) -> bool {
        matches!(self, TantrumSide::Send | TantrumSide::Both)
    }

    /// Whether incoming datagrams are subject to the tantrum.
    pub fn drops_receives(self) -> bool {
        matches!(self, TantrumSide::Recv | TantrumSide::Both)
    }

    /// The configuration spelling: `"send"`, `"recv"` or `"both"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TantrumSide::Send => "send",
            TantrumSide::Recv => "recv",
            TantrumSide::Both => "both",
        }
    }
}

/// What a local write does when the outbound replication queue (`queue_max`) is full
/// (`overload`).
///
/// ```
/// let config = mccache::Config::from_toml_str(r#"overload = "block""#)?;
/// assert_eq!(config.overload, mccache::Overload::Block);
/// # Ok::<(), mccache::Error>(())
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overload {
    /// `"repair"` (the default): the write is stored locally and returns at once; its change is
    /// not queued, and an anti-entropy repair of the caches starts at once, so peers get the
    /// newer versions shortly after the load drops.
    #[default]
    Repair,
    /// `"block"`: the writer waits for queue space, at most `overload_timeout`, then fails with
    /// [`crate::Error::Overloaded`] (nothing stored). Back-pressure.
    Block,
    /// `"error"`: the write fails at once with [`crate::Error::Overloaded`] (nothing stored).
    Error,
}

impl Overload {
    /// The configuration spelling: `"repair"`, `"block"` or `"error"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Overload::Repair => "repair",
            Overload::Block => "block",
            Overload::Error => "error",
        }
    }
}

/// Settings of one cache. Every cache starts from the node-wide values in [`Config`];
/// `[caches.NAME]` tables override them per cache.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
    /// Time to live of entries, counted from the last write on this node. `None`: no expiry.
    pub ttl: Option<Duration>,
    /// Maximum number of entries.
    pub max_entries: usize,
    /// Maximum bytes: the sum of serialized key + value sizes.
    pub max_bytes: u64,
    /// Replication mode.
    pub mode: CacheMode,
    /// The callback window (`callback_win`): see [`crate::ChangeEvent::in_callback_window`].
    pub callback_win: Duration,
    /// The memcached tier behind the cache (`backing`, `backing_write`), if any.
    pub backing: Option<BackingSpec>,
    /// Stale-while-revalidate: how long after its write a value is fresh. Past that, and until
    /// `ttl` ends, [`Cache::get_or_load`](crate::Cache::get_or_load) serves it at once and
    /// refreshes it in the background. `None`: fresh for its whole `ttl`. Set with
    /// [`CacheBuilder::fresh_for`](crate::CacheBuilder::fresh_for).
    pub fresh_for: Option<Duration>,
    /// Eager refresh: the fraction of `fresh_for` after which a read of a still-fresh value
    /// starts a background refresh (for example 0.8). `None`: off. Set with
    /// [`CacheBuilder::eager_refresh`](crate::CacheBuilder::eager_refresh).
    pub eager_refresh: Option<f64>,
    /// How long a loading read that misses waits for a peer's value when a peer announced it
    /// is loading the same key (replicating caches only); zero: never wait. Default 1 s. Set
    /// with [`CacheBuilder::peer_load_wait`](crate::CacheBuilder::peer_load_wait).
    pub peer_load_wait: Duration,
}

/// Node configuration. Key names follow McCache.
///
/// Build it with [`Config::load`] (defaults, file, environment), [`Config::from_toml_str`],
/// [`Config::from_figment`], or as a struct literal; the node calls [`Config::validate`]
/// before it starts.
///
/// ```
/// use std::net::Ipv4Addr;
/// use mccache::Config;
///
/// let config = Config {
///     interface: Ipv4Addr::LOCALHOST,
///     cache_max: 10_000,
///     ..Config::default()
/// };
/// config.validate()?;
/// assert_eq!(config.group().to_string(), "239.255.77.3:4000");
/// # Ok::<(), mccache::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `cache_ttl`: seconds an entry lives after its last write; 0 = no expiry. Default 3600.
    pub cache_ttl: f64,
    /// `cache_max`: maximum entries per cache. Default 256.
    pub cache_max: usize,
    /// `cache_size`: maximum bytes per cache (serialized key + value). Default 8 MiB.
    pub cache_size: u64,
    /// `cache_mode`: 0 update-if-present, 1 replicate, 2 invalidate. Default 1.
    pub cache_mode: CacheMode,
    /// `cache_pulse`: seconds between anti-entropy digest pulses. Default 5.
    pub cache_pulse: f64,
    /// `crypto_key`: 32 random bytes in base64; `None` = plaintext with a crc32 check.
    /// See [`Config::crypto_keyring`] and [`generate_key`].
    pub crypto_key: Option<String>,
    /// `crypto_keys`: a keyring of base64 keys for rotation; the first one encrypts what this
    /// node sends, all of them are tried on what it receives. Default empty.
    pub crypto_keys: Vec<String>,
    /// `packet_mtu`: largest datagram payload in bytes. Default 1472.
    pub packet_mtu: u16,
    /// `multicast_ip`: group address; `ip:port` also sets the port. Default 239.255.77.3.
    pub multicast_ip: Ipv4Addr,
    /// `multicast_port`: UDP port. Default 4000.
    pub multicast_port: u16,
    /// `multicast_hops`: IP multicast TTL. Default 1 (this subnet).
    pub multicast_hops: u8,
    /// `callback_win`: seconds; a change to a key read within this window is flagged. Default 5.
    pub callback_win: f64,
    /// `daemon_sleep`: seconds between heartbeats and housekeeping passes. Default 1.
    pub daemon_sleep: f64,
    /// `monkey_tantrum`: percent of datagrams dropped on purpose (fault injection). Default 0.
    pub monkey_tantrum: f64,
    /// `monkey_tantrum_side`: which direction the tantrum drops in. Default both.
    pub monkey_tantrum_side: TantrumSide,
    /// `interface`: IPv4 address of the interface multicast leaves and is joined on.
    /// Default 0.0.0.0 (the kernel's choice by route). Tests set 127.0.0.1.
    pub interface: Ipv4Addr,
    /// `max_message_size`: largest replicated key + value in bytes. Default 1 MiB.
    pub max_message_size: usize,
    /// `node_name`: a human name for this node in metrics and logs. Default `hostname:pid`
    /// (see [`Config::node_name_or_default`]).
    pub node_name: Option<String>,
    /// `cluster_name`: label bound into every datagram; clusters with other names never mix.
    pub cluster_name: String,
    /// `queue_max`: outbound changes queued before overload marks caches for repair.
    pub queue_max: usize,
    /// `overload`: what a write does when the outbound queue is full: `repair` (default),
    /// `block` or `error` (see [`Overload`]).
    pub overload: Overload,
    /// `overload_timeout`: seconds a write waits for queue space under `overload = "block"`.
    /// Default 1.
    pub overload_timeout: f64,
    // Clock safety (issue 13).
    /// `max_clock_skew`: seconds a peer's versions may be ahead of this node's wall clock;
    /// further ahead they are refused, counted (`clock_skew`) and warned about, and never
    /// move this node's clock. Default 60.
    pub max_clock_skew: f64,
    // --- the memcached tier (feature `memcached`) ---
    /// `backing`: `memcached://host:port[,host:port...]` behind every cache (a cache's own
    /// `backing` overrides it; `"none"` turns it off). Default none.
    pub backing: Option<String>,
    /// `backing_write`: `write-through` (writes set memcached) or `invalidate` (writes delete
    /// the memcached copy). Default write-through.
    pub backing_write: WritePolicy,
    /// `backing_timeout`: seconds one memcached exchange may take (connect included) before
    /// the call goes on with the local tier. Default 0.1.
    pub backing_timeout: f64,
    /// `backing_pool_max`: connections per memcached server (idle and busy). Default 8.
    pub backing_pool_max: usize,
    /// `backing_down_after`: failures in a row that mark a server down. Default 3.
    pub backing_down_after: u32,
    /// `backing_retry_after`: seconds a down server is skipped before it is probed. Default 5.
    pub backing_retry_after: f64,
    /// `backing_lease_ttl`: seconds a load lease lives in memcached (the longest a loader is
    /// expected to take). Default 10.
    pub backing_lease_ttl: f64,
    /// `backing_lease_wait`: seconds a caller waits for another caller's load before it runs
    /// its loader itself. Default 2.
    pub backing_lease_wait: f64,
    /// `metrics_log_interval`: seconds between the housekeeper's metrics summaries (one
    /// `tracing` info event per cache and one for the network, target `mccache::metrics`);
    /// 0 = off. Default 60.
    pub metrics_log_interval: f64,
    /// Per-cache overrides, `[caches.NAME]`.
    pub caches: BTreeMap<String, CacheOverrides>,
    // Unicast transport (issue 11): `transport`, `peers`, `bind_port`, `discovery_interval`.
    /// `transport`: `"multicast"` (default) or `"unicast"` (each datagram to every member and
    /// seed; for networks without multicast, such as Kubernetes and cloud VPCs).
    pub transport: TransportKind,
    /// `peers`: unicast seeds, `host:port` with an IPv4 address or a DNS name (the port
    /// defaults to this node's `bind_port`). Names are resolved at start and every
    /// `discovery_interval`; one reachable seed is enough, members learn the others'
    /// addresses. Environment: `MCCACHE_PEERS=a:4000,b:4000`. Default empty.
    pub peers: Vec<String>,
    /// `bind_port`: the UDP port a unicast node listens and sends on. Default: `multicast_port`.
    pub bind_port: Option<u16>,
    /// `discovery_interval`: seconds between re-resolutions of the names in `peers`. Default 10.
    pub discovery_interval: f64,
}

/// Per-cache overrides; unset fields take the node-wide value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheOverrides {
    /// Overrides `cache_ttl`.
    pub cache_ttl: Option<f64>,
    /// Overrides `cache_max`.
    pub cache_max: Option<usize>,
    /// Overrides `cache_size`.
    pub cache_size: Option<u64>,
    /// Overrides `cache_mode`.
    pub cache_mode: Option<CacheMode>,
    /// Overrides `callback_win`.
    pub callback_win: Option<f64>,
    /// Overrides `backing` (`"none"`: no tier for this cache).
    pub backing: Option<String>,
    /// Overrides `backing_write`.
    pub backing_write: Option<WritePolicy>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            cache_ttl: 3600.0,
            cache_max: 256,
            cache_size: 8 * 1024 * 1024,
            cache_mode: CacheMode::Replicate,
            cache_pulse: 5.0,
            crypto_key: None,
            crypto_keys: Vec::new(),
            packet_mtu: 1472,
            multicast_ip: Ipv4Addr::new(239, 255, 77, 3),
            multicast_port: 4000,
            multicast_hops: 1,
            callback_win: 5.0,
            daemon_sleep: 1.0,
            monkey_tantrum: 0.0,
            monkey_tantrum_side: TantrumSide::Both,
            interface: Ipv4Addr::UNSPECIFIED,
            max_message_size: 1024 * 1024,
            node_name: None,
            cluster_name: "mccache".to_string(),
            queue_max: 65_536,
            overload: Overload::Repair,
            overload_timeout: 1.0,
            max_clock_skew: 60.0,
            backing: None,
            backing_write: WritePolicy::WriteThrough,
            backing_timeout: 0.1,
            backing_pool_max: 8,
            backing_down_after: 3,
            backing_retry_after: 5.0,
            backing_lease_ttl: 10.0,
            backing_lease_wait: 2.0,
            metrics_log_interval: 60.0,
            caches: BTreeMap::new(),
            transport: TransportKind::Multicast,
            peers: Vec::new(),
            bind_port: None,
            discovery_interval: 10.0,
        }
    }
}

impl Config {
    /// Loads defaults, then `./mccache.toml` (or the file named by `$MCCACHE_CONFIG`), then
    /// `MCCACHE_*` environment variables, and validates the result.
    ///
    /// A `MCCACHE_CONFIG` that names a missing or unreadable file is an
    /// [`Error::ConfigFile`] naming the path; a bad value is an [`Error::Config`].
    ///
    /// ```no_run
    /// let config = mccache::Config::load()?;
    /// println!("joining {}", config.group());
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn load() -> Result<Config> {
        warn_unknown_env_vars();
        if let Some(path) = config_path_from_env()
            && !path.is_file()
        {
            return Err(Error::ConfigFile {
                path: path.display().to_string(),
                message: format!("{CONFIG_PATH_ENV} names no such file"),
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
    /// ([`Config::load`] warns about each of them once, naming the nearest known variable;
    /// [`Health::config_warnings`](crate::Health::config_warnings) lists them).
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
    pub fn from_figment(figment: &Figment) -> Result<Config> {
        let dict: Dict = figment.extract().map_err(figment_error)?;
        let config = Config::from_dict(&dict)?;
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
    pub fn from_toml_str(toml: &str) -> Result<Config> {
        let figment = Figment::from(Config::default()).merge(Toml::string(toml));
        Config::from_figment(&figment)
    }

    /// Checks every value; the error names the key and the bad value.
    ///
    /// Rules: `cache_ttl`, `callback_win` and `metrics_log_interval` finite and >= 0; `cache_pulse` and
    /// `daemon_sleep` finite and > 0 (all at most 10^9 seconds); `cache_max`,
    /// `cache_size` and `queue_max` >= 1; `overload_timeout` finite and >= 0; `packet_mtu` in 576..=65507; `multicast_ip` in
    /// 224.0.0.0/4; `multicast_port` != 0; `multicast_hops` >= 1; `monkey_tantrum` in
    /// 0..=100; every crypto key base64 of 32 bytes; `max_message_size` in 1..=64 MiB;
    /// `cluster_name` 1 to 64 bytes; `node_name` (if set) 1 to 255 bytes; `interface` a
    /// unicast IPv4 address or 0.0.0.0; each `peers` entry `host[:port]` with an IPv4 address or
    /// a DNS name; `bind_port` != 0; `discovery_interval` finite and > 0; `backing` (if set)
    /// `memcached://host:port,...` or `none`, and only in a build with the `memcached` feature;
    /// the `backing_*` seconds > 0, `backing_pool_max` 1 to 1024, `backing_down_after` 1 to
    /// 1000; the same rules for each `[caches.NAME]` override.
    ///
    /// ```
    /// use mccache::Config;
    ///
    /// let bad = Config { cache_pulse: 0.0, ..Config::default() };
    /// assert_eq!(bad.validate().unwrap_err().to_string(), r#"cache_pulse: "0" must be greater than 0"#);
    /// ```
    pub fn validate(&self) -> Result<()> {
        check(
            "cache_ttl",
            self.cache_ttl,
            non_negative_secs(self.cache_ttl),
        )?;
        check(
            "cache_max",
            self.cache_max,
            at_least_one(self.cache_max as u64),
        )?;
        check("cache_size", self.cache_size, at_least_one(self.cache_size))?;
        check(
            "cache_pulse",
            self.cache_pulse,
            positive_secs(self.cache_pulse),
        )?;
        if let Some(key) = &self.crypto_key {
            check_secret("crypto_key", key, decode_key(key).map(drop))?;
        }
        for (i, key) in self.crypto_keys.iter().enumerate() {
            check_secret(&format!("crypto_keys[{i}]"), key, decode_key(key).map(drop))?;
        }
        check(
            "packet_mtu",
            self.packet_mtu,
            mtu(self.packet_mtu.into()).map(drop),
        )?;
        check(
            "multicast_ip",
            self.multicast_ip,
            multicast(self.multicast_ip),
        )?;
        check(
            "multicast_port",
            self.multicast_port,
            port(self.multicast_port.into()).map(drop),
        )?;
        check(
            "multicast_hops",
            self.multicast_hops,
            hops(self.multicast_hops.into()).map(drop),
        )?;
        check(
            "callback_win",
            self.callback_win,
            non_negative_secs(self.callback_win),
        )?;
        check(
            "daemon_sleep",
            self.daemon_sleep,
            positive_secs(self.daemon_sleep),
        )?;
        check(
            "max_clock_skew",
            self.max_clock_skew,
            positive_secs(self.max_clock_skew),
        )?;
        check(
            "monkey_tantrum",
            self.monkey_tantrum,
            percent(self.monkey_tantrum),
        )?;
        check("interface", self.interface, interface(self.interface))?;
        check(
            "max_message_size",
            self.max_message_size,
            message_size(self.max_message_size as u64).map(drop),
        )?;
        if let Some(name) = &self.node_name {
            check("node_name", name, node_name(name))?;
        }
        check(
            "cluster_name",
            &self.cluster_name,
            cluster_name(&self.cluster_name),
        )?;
        check(
            "queue_max",
            self.queue_max,
            at_least_one(self.queue_max as u64),
        )?;
        check(
            "overload_timeout",
            self.overload_timeout,
            non_negative_secs(self.overload_timeout),
        )?;
        self.validate_backing()?;
        check(
            "metrics_log_interval",
            self.metrics_log_interval,
            non_negative_secs(self.metrics_log_interval),
        )?;
        // Unicast transport keys.
        for (i, p) in self.peers.iter().enumerate() {
            check(&format!("peers[{i}]"), p, transport::peer(p))?;
        }
        if let Some(p) = self.bind_port {
            check("bind_port", p, port(p.into()).map(drop))?;
        }
        check(
            "discovery_interval",
            self.discovery_interval,
            positive_secs(self.discovery_interval),
        )?;
        for (name, o) in &self.caches {
            let key = |k: &str| format!("caches.{name}.{k}");
            if name.is_empty() {
                return Err(bad("caches", name, REASON_CACHE_NAME));
            }
            if let Some(v) = o.cache_ttl {
                check(&key("cache_ttl"), v, non_negative_secs(v))?;
            }
            if let Some(v) = o.cache_max {
                check(&key("cache_max"), v, at_least_one(v as u64))?;
            }
            if let Some(v) = o.cache_size {
                check(&key("cache_size"), v, at_least_one(v))?;
            }
            if let Some(v) = o.callback_win {
                check(&key("callback_win"), v, non_negative_secs(v))?;
            }
            if let Some(v) = &o.backing {
                check(&key("backing"), v, backing::feature(v))?;
            }
        }
        Ok(())
    }

    /// The `backing*` rules (see [`Config::validate`]).
    fn validate_backing(&self) -> Result<()> {
        if let Some(v) = &self.backing {
            check("backing", v, backing::feature(v))?;
        }
        for (k, v) in [
            ("backing_timeout", self.backing_timeout),
            ("backing_retry_after", self.backing_retry_after),
            ("backing_lease_ttl", self.backing_lease_ttl),
            ("backing_lease_wait", self.backing_lease_wait),
        ] {
            check(k, v, positive_secs(v))?;
        }
        check(
            "backing_pool_max",
            self.backing_pool_max,
            backing::pool_n(self.backing_pool_max as u64),
        )?;
        check(
            "backing_down_after",
            self.backing_down_after,
            backing::failures_n(self.backing_down_after.into()),
        )
    }

    /// The effective settings of cache `name` (node-wide values plus its overrides).
    ///
    /// Never panics, even on a configuration that did not pass [`Config::validate`]: bad
    /// durations saturate (negative or NaN → zero, huge → `Duration::MAX`).
    ///
    /// ```
    /// let config = mccache::Config::from_toml_str("[caches.users]\ncache_max = 10")?;
    /// assert_eq!(config.cache_config("users").max_entries, 10);
    /// assert_eq!(config.cache_config("orders").max_entries, 256);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn cache_config(&self, name: &str) -> CacheConfig {
        let o = self.caches.get(name).cloned().unwrap_or_default();
        let ttl = o.cache_ttl.unwrap_or(self.cache_ttl);
        CacheConfig {
            ttl: (ttl > 0.0).then(|| secs_to_duration(ttl)),
            max_entries: o.cache_max.unwrap_or(self.cache_max),
            max_bytes: o.cache_size.unwrap_or(self.cache_size),
            mode: o.cache_mode.unwrap_or(self.cache_mode),
            callback_win: secs_to_duration(o.callback_win.unwrap_or(self.callback_win)),
            backing: o
                .backing
                .as_deref()
                .or(self.backing.as_deref())
                .and_then(|url| backing::parse_url(url).ok().flatten())
                .map(|servers| BackingSpec {
                    servers,
                    write: o.backing_write.unwrap_or(self.backing_write),
                }),
            fresh_for: None,
            eager_refresh: None,
            peer_load_wait: Duration::from_secs(1),
        }
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
    /// let config = Config { crypto_keys: vec![new, old], ..Config::default() };
    /// assert_eq!(config.crypto_keyring()?.len(), 2);
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub fn crypto_keyring(&self) -> Result<Vec<[u8; 32]>> {
        let mut ring: Vec<[u8; 32]> = Vec::new();
        let named = self
            .crypto_key
            .iter()
            .map(|k| ("crypto_key".to_string(), k));
        let listed =
            (self.crypto_keys.iter().enumerate()).map(|(i, k)| (format!("crypto_keys[{i}]"), k));
        for (name, text) in named.chain(listed) {
            let key = decode_key(text).map_err(|reason| bad(&name, redact(text), reason))?;
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

    /// Converts a merged dictionary key by key, starting from the defaults.
    fn from_dict(dict: &Dict) -> Result<Config> {
        let mut c = Config::default();
        let mut group_port = None;
        for (key, v) in dict {
            if is_empty(v) && key != "caches" {
                match key.as_str() {
                    "crypto_key" => c.crypto_key = None,
                    "node_name" => c.node_name = None,
                    "backing" => c.backing = None,
                    "bind_port" => c.bind_port = None,
                    "peers" => c.peers = Vec::new(),
                    _ => {}
                }
                continue;
            }
            let k = key.as_str();
            match k {
                "cache_ttl" => c.cache_ttl = field(k, v, |v| secs(v).and_then(non_negative_secs))?,
                "cache_max" => c.cache_max = field(k, v, |v| count(v, REASON_ENTRIES))?,
                "cache_size" => c.cache_size = field(k, v, |v| bytes(v).and_then(at_least_one))?,
                "cache_mode" => c.cache_mode = field(k, v, mode)?,
                "cache_pulse" => c.cache_pulse = field(k, v, |v| secs(v).and_then(positive_secs))?,
                "crypto_key" => c.crypto_key = field_secret(k, v, crypto_key)?,
                "crypto_keys" => c.crypto_keys = crypto_keys(v)?,
                "packet_mtu" => c.packet_mtu = field(k, v, |v| whole(v, REASON_MTU).and_then(mtu))?,
                "multicast_ip" => {
                    let (ip, p) = field(k, v, multicast_ip)?;
                    c.multicast_ip = ip;
                    group_port = p;
                }
                "multicast_port" => {
                    c.multicast_port = field(k, v, |v| whole(v, REASON_PORT).and_then(port))?
                }
                "multicast_hops" => {
                    c.multicast_hops = field(k, v, |v| whole(v, REASON_HOPS).and_then(hops))?
                }
                "callback_win" => {
                    c.callback_win = field(k, v, |v| secs(v).and_then(non_negative_secs))?
                }
                "daemon_sleep" => {
                    c.daemon_sleep = field(k, v, |v| secs(v).and_then(positive_secs))?
                }
                "monkey_tantrum" => c.monkey_tantrum = field(k, v, tantrum)?,
                "monkey_tantrum_side" => c.monkey_tantrum_side = field(k, v, tantrum_side)?,
                "interface" => c.interface = field(k, v, interface_v)?,
                "max_message_size" => {
                    c.max_message_size =
                        field(k, v, |v| bytes_or(v, REASON_MESSAGE).and_then(message_size))?
                }
                "node_name" => c.node_name = Some(field(k, v, |v| text(v).and_then(node_name_v))?),
                "cluster_name" => {
                    c.cluster_name = field(k, v, |v| text(v).and_then(cluster_name_v))?
                }
                "queue_max" => c.queue_max = field(k, v, |v| count(v, REASON_CHANGES))?,
                "overload" => c.overload = field(k, v, overload)?,
                "overload_timeout" => {
                    c.overload_timeout = field(k, v, |v| secs(v).and_then(non_negative_secs))?
                }
                "max_clock_skew" => {
                    c.max_clock_skew = field(k, v, |v| secs(v).and_then(positive_secs))?
                }
                "backing" => c.backing = field(k, v, backing::backing_v)?,
                "backing_write" => c.backing_write = field(k, v, backing::write_policy)?,
                "backing_timeout" => {
                    c.backing_timeout = field(k, v, |v| secs(v).and_then(positive_secs))?
                }
                "backing_pool_max" => c.backing_pool_max = field(k, v, backing::pool)?,
                "backing_down_after" => c.backing_down_after = field(k, v, backing::failures)?,
                "backing_retry_after" => {
                    c.backing_retry_after = field(k, v, |v| secs(v).and_then(positive_secs))?
                }
                "backing_lease_ttl" => {
                    c.backing_lease_ttl = field(k, v, |v| secs(v).and_then(positive_secs))?
                }
                "backing_lease_wait" => {
                    c.backing_lease_wait = field(k, v, |v| secs(v).and_then(positive_secs))?
                }
                "metrics_log_interval" => {
                    c.metrics_log_interval = field(k, v, |v| secs(v).and_then(non_negative_secs))?
                }
                "caches" => c.caches = caches(v)?,
                // Unicast transport keys.
                "transport" => c.transport = field(k, v, transport::transport)?,
                "peers" => c.peers = transport::peers(v)?,
                "bind_port" => c.bind_port = Some(field(k, v, transport::bind_port)?),
                "discovery_interval" => {
                    c.discovery_interval = field(k, v, |v| secs(v).and_then(positive_secs))?
                }
                _ => return Err(bad(k, shown(v), &unknown_reason(k, TOP_KEYS))),
            }
        }
        // Documented rule: the port given in `multicast_ip = "ip:port"` wins over `multicast_port`.
        if let Some(p) = group_port {
            c.multicast_port = p;
        }
        Ok(c)
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
/// let config = Config { crypto_key: Some(key), ..Config::default() };
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

// ---------------------------------------------------------------------------------------------
// Layers

/// Keys accepted at the top level.
const TOP_KEYS: &[&str] = &[
    "cache_ttl",
    "cache_max",
    "cache_size",
    "cache_mode",
    "cache_pulse",
    "crypto_key",
    "crypto_keys",
    "packet_mtu",
    "multicast_ip",
    "multicast_port",
    "multicast_hops",
    "callback_win",
    "daemon_sleep",
    "monkey_tantrum",
    "monkey_tantrum_side",
    "interface",
    "max_message_size",
    "node_name",
    "cluster_name",
    "queue_max",
    "overload",
    "overload_timeout",
    "max_clock_skew",
    "backing",
    "backing_write",
    "backing_timeout",
    "backing_pool_max",
    "backing_down_after",
    "backing_retry_after",
    "backing_lease_ttl",
    "backing_lease_wait",
    "metrics_log_interval",
    "caches",
    // Unicast transport keys.
    "transport",
    "peers",
    "bind_port",
    "discovery_interval",
];

/// Keys accepted inside `[caches.NAME]`.
const CACHE_KEYS: &[&str] = &[
    "cache_ttl",
    "cache_max",
    "cache_size",
    "cache_mode",
    "callback_win",
    "backing",
    "backing_write",
];

/// The `MCCACHE_CONFIG` path, if set and not empty.
fn config_path_from_env() -> Option<PathBuf> {
    let path = std::env::var_os(CONFIG_PATH_ENV)?;
    (!path.is_empty()).then(|| PathBuf::from(path))
}

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

/// The top-level keys whose values differ between `a` and `b` (names only: values may be
/// secret keys).
pub(crate) fn differing_keys(a: &Config, b: &Config) -> Vec<String> {
    let dict = |c: &Config| Figment::from(c).extract::<Dict>().unwrap_or_default();
    let (da, db) = (dict(a), dict(b));
    TOP_KEYS
        .iter()
        .filter(|k| da.get(**k) != db.get(**k))
        .map(|k| (*k).to_string())
        .collect()
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

/// `MCCACHE_*` variables of this process that name no configuration key (they are ignored),
/// each with a sentence naming the nearest known variable, for example
/// `MCCACHE_CACHE_TLL is not a configuration key and is ignored (did you mean MCCACHE_CACHE_TTL?)`.
/// [`Config::load`] warns about each of them once per process (see
/// [`crate::Node::health`] for the list on a running node).
pub fn unknown_env_vars() -> Vec<String> {
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
    let (prefix, key, known) = match parts.as_slice() {
        ["caches", cache, key] => (
            format!("{ENV_PREFIX}CACHES__{}__", cache.to_ascii_uppercase()),
            *key,
            CACHE_KEYS,
        ),
        _ => (ENV_PREFIX.to_string(), lower.as_str(), TOP_KEYS),
    };
    let nearest = known
        .iter()
        .filter(|k| **k != "caches")
        .map(|k| (edit_distance(key, k), *k))
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
fn warn_unknown_env_vars() {
    static WARNED: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());
    for w in unknown_env_vars() {
        let mut warned = WARNED.lock();
        if !warned.contains(&w) {
            crate::warn::user_warning(&w);
            warned.push(w);
        }
    }
}

/// Whether a prefix-stripped, `__`-split variable name is a key mccache reads.
fn is_env_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        [top] => *top != "caches" && TOP_KEYS.contains(top),
        ["caches", name, k] => !name.is_empty() && CACHE_KEYS.contains(k),
        _ => false,
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

/// Maps a figment failure (unreadable or unparsable file, a provider error) to
/// [`Error::ConfigFile`], naming the file when figment knows it.
fn figment_error(e: figment::Error) -> Error {
    let path = e
        .metadata
        .as_ref()
        .and_then(|m| m.source.as_ref())
        .and_then(|s| s.file_path())
        .map(|p| p.display().to_string())
        .or_else(|| e.metadata.as_ref().map(|m| m.name.to_string()))
        .unwrap_or_else(|| "configuration".to_string());
    Error::ConfigFile {
        path,
        message: e.kind.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Per-key conversion. A parser takes the raw figment value and returns the typed value or the
// reason it was refused; `field` turns the reason into an `Error::Config` quoting the value.

const REASON_SECONDS: &str = "is not a number of seconds";
const REASON_NEGATIVE: &str = "must not be negative";
const REASON_POSITIVE: &str = "must be greater than 0";
const REASON_TOO_LONG: &str = "must be at most 1000000000 seconds";
const REASON_ENTRIES: &str = "is not a whole number of entries";
const REASON_CHANGES: &str = "is not a whole number of changes";
const REASON_AT_LEAST_ONE: &str = "must be at least 1";
const REASON_BYTES: &str = "is not a byte count";
const REASON_MODE: &str = "must be 0, 1 or 2";
const REASON_MULTICAST: &str = "is not an IPv4 multicast address (224.0.0.0/4)";
const REASON_GROUP_PORT: &str = "has a port that is not a port number (1 to 65535)";
const REASON_PORT: &str = "is not a port number (1 to 65535)";
const REASON_MTU: &str = "must be between 576 and 65507";
const REASON_HOPS: &str = "is not a hop count (1 to 255)";
const REASON_PERCENT: &str = "is not a percentage (0 to 100)";
const REASON_SIDE: &str = "must be send, recv or both";
const REASON_OVERLOAD: &str = "must be repair, block or error";
const REASON_KEY: &str = "is not valid base64 of 32 bytes";
const REASON_KEYS: &str = "is not a list of base64 keys";
const REASON_MESSAGE: &str = "must be between 1 byte and 64 MiB";
const REASON_INTERFACE: &str = "is not a unicast IPv4 address or 0.0.0.0";
const REASON_CLUSTER: &str = "must be 1 to 64 bytes of text";
const REASON_NODE: &str = "must be 1 to 255 bytes of text";
const REASON_TABLE: &str = "is not a table of cache settings";
const REASON_CACHE_NAME: &str = "is not a cache name (must not be empty)";

type Parsed<T> = std::result::Result<T, &'static str>;

fn bad(key: &str, value: impl std::fmt::Display, reason: &str) -> Error {
    Error::Config {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn field<T>(key: &str, v: &Value, parse: impl FnOnce(&Value) -> Parsed<T>) -> Result<T> {
    parse(v).map_err(|reason| bad(key, shown(v), reason))
}

/// Like [`field`], but the value is a secret: the error shows only its length.
fn field_secret<T>(key: &str, v: &Value, parse: impl FnOnce(&Value) -> Parsed<T>) -> Result<T> {
    parse(v).map_err(|reason| bad(key, redact(&shown(v)), reason))
}

/// Used by `validate`: the parsed value is shown with `Display`.
fn check<T: std::fmt::Display, U>(key: &str, value: T, verdict: Parsed<U>) -> Result<()> {
    verdict.map(drop).map_err(|reason| bad(key, value, reason))
}

fn check_secret(key: &str, value: &str, verdict: Parsed<()>) -> Result<()> {
    verdict.map_err(|reason| bad(key, redact(value), reason))
}

/// Keys are secrets, even slightly wrong ones: errors and logs show only their length.
fn redact(secret: &str) -> String {
    format!("<{} characters, not shown>", secret.chars().count())
}

fn is_empty(v: &Value) -> bool {
    matches!(v, Value::Empty(..))
}

/// A value as the user gave it: strings verbatim, numbers in their shortest form.
fn shown(v: &Value) -> String {
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

fn unknown_reason(key: &str, known: &[&str]) -> String {
    let closest = known.iter().map(|k| (edit_distance(key, k), *k)).min();
    match closest {
        Some((d, k)) if d <= 2 => format!("is not a known key (did you mean {k}?)"),
        _ => "is not a known key".to_string(),
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
fn finite(v: &Value, reason: &'static str) -> Parsed<f64> {
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

/// Largest integer an f64 holds exactly.
const F64_EXACT: f64 = 9_007_199_254_740_992.0;

/// A non-negative whole number: `2`, `2.0`, `"2"`, `" 2.0 "`.
fn whole(v: &Value, reason: &'static str) -> Parsed<u64> {
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

fn count(v: &Value, reason: &'static str) -> Parsed<usize> {
    let n = whole(v, reason)?;
    at_least_one(n)?;
    usize::try_from(n).map_err(|_| reason)
}

fn secs(v: &Value) -> Parsed<f64> {
    finite(v, REASON_SECONDS)
}

/// A byte count: a whole number, or a string with a `KiB`, `MiB` or `GiB` suffix
/// (`"1.5 MiB"`). `reason` is used for values that are not byte counts at all.
fn bytes_or(v: &Value, reason: &'static str) -> Parsed<u64> {
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

fn bytes(v: &Value) -> Parsed<u64> {
    bytes_or(v, REASON_BYTES)
}

fn text(v: &Value) -> Parsed<String> {
    match v {
        Value::String(_, s) => Ok(s.clone()),
        Value::Num(..) | Value::Bool(..) | Value::Char(..) => Ok(shown(v)),
        _ => Err("is not text"),
    }
}

fn mode(v: &Value) -> Parsed<CacheMode> {
    let n = whole(v, REASON_MODE)?;
    u8::try_from(n)
        .ok()
        .and_then(|n| CacheMode::try_from(n).ok())
        .ok_or(REASON_MODE)
}

fn crypto_key(v: &Value) -> Parsed<Option<String>> {
    let key = match v {
        Value::String(_, s) => s.trim().to_string(),
        _ => return Err(REASON_KEY),
    };
    if key.is_empty() {
        return Ok(None); // `MCCACHE_CRYPTO_KEY=` turns encryption off
    }
    decode_key(&key)?;
    Ok(Some(key))
}

/// `crypto_keys`: a TOML array of strings, or one string of comma-separated keys.
fn crypto_keys(v: &Value) -> Result<Vec<String>> {
    let items: Vec<Value> = match v {
        Value::Array(_, items) => items.clone(),
        Value::String(_, s) => s.split(',').map(|k| Value::from(k.to_string())).collect(),
        _ => return Err(bad("crypto_keys", shown(v), REASON_KEYS)),
    };
    let mut keys = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(key) = field_secret(&format!("crypto_keys[{i}]"), item, crypto_key)? {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// Decodes a key in standard or URL-safe base64, with or without padding (so Fernet keys
/// from McCache work too).
fn decode_key(text: &str) -> Parsed<[u8; 32]> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let text = text.trim();
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .and_then(|raw| <[u8; 32]>::try_from(raw.as_slice()).ok())
        .ok_or(REASON_KEY)
}

/// `multicast_ip`: `ip` or `ip:port`.
fn multicast_ip(v: &Value) -> Parsed<(Ipv4Addr, Option<u16>)> {
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

fn interface_v(v: &Value) -> Parsed<Ipv4Addr> {
    let Value::String(_, s) = v else {
        return Err(REASON_INTERFACE);
    };
    let ip: Ipv4Addr = s.trim().parse().map_err(|_| REASON_INTERFACE)?;
    interface(ip)?;
    Ok(ip)
}

fn tantrum(v: &Value) -> Parsed<f64> {
    let x = finite(v, REASON_PERCENT)?;
    percent(x)?;
    Ok(x)
}

fn tantrum_side(v: &Value) -> Parsed<TantrumSide> {
    let Value::String(_, s) = v else {
        return Err(REASON_SIDE);
    };
    match s.trim().to_ascii_lowercase().as_str() {
        "send" => Ok(TantrumSide::Send),
        "recv" => Ok(TantrumSide::Recv),
        "both" => Ok(TantrumSide::Both),
        _ => Err(REASON_SIDE),
    }
}

fn overload(v: &Value) -> Parsed<Overload> {
    let Value::String(_, s) = v else {
        return Err(REASON_OVERLOAD);
    };
    match s.trim().to_ascii_lowercase().as_str() {
        "repair" => Ok(Overload::Repair),
        "block" => Ok(Overload::Block),
        "error" => Ok(Overload::Error),
        _ => Err(REASON_OVERLOAD),
    }
}

/// `[caches.NAME]` tables.
fn caches(v: &Value) -> Result<BTreeMap<String, CacheOverrides>> {
    let mut out = BTreeMap::new();
    let table = match v {
        Value::Dict(_, d) => d,
        Value::Empty(..) => return Ok(out),
        _ => return Err(bad("caches", shown(v), REASON_TABLE)),
    };
    for (name, settings) in table {
        if name.is_empty() {
            return Err(bad("caches", name, REASON_CACHE_NAME));
        }
        let key = |k: &str| format!("caches.{name}.{k}");
        let settings = match settings {
            Value::Dict(_, d) => d,
            Value::Empty(..) => {
                out.insert(name.clone(), CacheOverrides::default());
                continue;
            }
            _ => {
                return Err(bad(
                    &format!("caches.{name}"),
                    shown(settings),
                    REASON_TABLE,
                ));
            }
        };
        let mut o = CacheOverrides::default();
        for (k, v) in settings {
            if is_empty(v) {
                continue;
            }
            let full = key(k);
            match k.as_str() {
                "cache_ttl" => {
                    o.cache_ttl = Some(field(&full, v, |v| secs(v).and_then(non_negative_secs))?)
                }
                "cache_max" => o.cache_max = Some(field(&full, v, |v| count(v, REASON_ENTRIES))?),
                "cache_size" => {
                    o.cache_size = Some(field(&full, v, |v| bytes(v).and_then(at_least_one))?)
                }
                "cache_mode" => o.cache_mode = Some(field(&full, v, mode)?),
                "callback_win" => {
                    o.callback_win = Some(field(&full, v, |v| secs(v).and_then(non_negative_secs))?)
                }
                // "none" is kept (it turns a node-wide `backing` off for this cache).
                "backing" => {
                    o.backing = Some(field(&full, v, |v| {
                        backing::backing_v(v).map(|b| b.unwrap_or_else(|| "none".to_string()))
                    })?)
                }
                "backing_write" => o.backing_write = Some(field(&full, v, backing::write_policy)?),
                _ => return Err(bad(&full, shown(v), &unknown_reason(k, CACHE_KEYS))),
            }
        }
        out.insert(name.clone(), o);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Range rules, shared by parsing (which quotes the value as given) and `validate` (which
// quotes the typed value).

fn non_negative_secs(x: f64) -> Parsed<f64> {
    if !x.is_finite() {
        Err(REASON_SECONDS)
    } else if x < 0.0 {
        Err(REASON_NEGATIVE)
    } else if x > MAX_SECONDS {
        Err(REASON_TOO_LONG)
    } else {
        Ok(x)
    }
}

fn positive_secs(x: f64) -> Parsed<f64> {
    let x = non_negative_secs(x)?;
    if x > 0.0 { Ok(x) } else { Err(REASON_POSITIVE) }
}

fn at_least_one(n: u64) -> Parsed<u64> {
    if n >= 1 {
        Ok(n)
    } else {
        Err(REASON_AT_LEAST_ONE)
    }
}

fn mtu(n: u64) -> Parsed<u16> {
    match u16::try_from(n) {
        Ok(m @ 576..=65507) => Ok(m),
        _ => Err(REASON_MTU),
    }
}

fn port(n: u64) -> Parsed<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0).ok_or(REASON_PORT)
}

fn hops(n: u64) -> Parsed<u8> {
    u8::try_from(n).ok().filter(|h| *h != 0).ok_or(REASON_HOPS)
}

fn percent(x: f64) -> Parsed<f64> {
    if (0.0..=100.0).contains(&x) {
        Ok(x)
    } else {
        Err(REASON_PERCENT)
    }
}

fn message_size(n: u64) -> Parsed<usize> {
    match usize::try_from(n) {
        Ok(m) if (1..=MAX_MESSAGE_SIZE_LIMIT).contains(&m) => Ok(m),
        _ => Err(REASON_MESSAGE),
    }
}

fn multicast(ip: Ipv4Addr) -> Parsed<()> {
    if ip.is_multicast() {
        Ok(())
    } else {
        Err(REASON_MULTICAST)
    }
}

fn interface(ip: Ipv4Addr) -> Parsed<()> {
    if ip.is_unspecified() || !(ip.is_multicast() || ip.is_broadcast()) {
        Ok(())
    } else {
        Err(REASON_INTERFACE)
    }
}

fn cluster_name(name: &str) -> Parsed<()> {
    if (1..=64).contains(&name.len()) {
        Ok(())
    } else {
        Err(REASON_CLUSTER)
    }
}

fn cluster_name_v(name: String) -> Parsed<String> {
    cluster_name(&name).map(|()| name)
}

fn node_name(name: &str) -> Parsed<()> {
    if (1..=255).contains(&name.len()) {
        Ok(())
    } else {
        Err(REASON_NODE)
    }
}

fn node_name_v(name: String) -> Parsed<String> {
    node_name(&name).map(|()| name)
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
        assert_eq!(decode_key(&generate_key()).map(|k| k.len()), Ok(32));
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
        assert_eq!(interface(Ipv4Addr::UNSPECIFIED), Ok(()));
        assert_eq!(interface(Ipv4Addr::LOCALHOST), Ok(()));
        assert_eq!(interface(Ipv4Addr::new(10, 1, 2, 3)), Ok(()));
        assert_eq!(interface(Ipv4Addr::BROADCAST), Err(REASON_INTERFACE));
        assert_eq!(
            interface(Ipv4Addr::new(239, 0, 0, 1)),
            Err(REASON_INTERFACE)
        );
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
            unknown_reason("cache_tll", TOP_KEYS),
            "is not a known key (did you mean cache_ttl?)"
        );
        assert_eq!(
            unknown_reason("multicastip", TOP_KEYS),
            "is not a known key (did you mean multicast_ip?)"
        );
        assert_eq!(
            unknown_reason("debug_level", TOP_KEYS),
            "is not a known key"
        );
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn durations_saturate_instead_of_panicking() {
        assert_eq!(secs_to_duration(-1.0), Duration::ZERO);
        assert_eq!(secs_to_duration(f64::NAN), Duration::ZERO);
        assert_eq!(secs_to_duration(f64::INFINITY), Duration::MAX);
        assert_eq!(secs_to_duration(1e300), Duration::MAX);
        assert_eq!(secs_to_duration(0.5), Duration::from_millis(500));
        let c = Config {
            cache_ttl: f64::NAN,
            callback_win: -3.0,
            ..Config::default()
        };
        let cc = c.cache_config("x");
        assert_eq!((cc.ttl, cc.callback_win), (None, Duration::ZERO));
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

    #[test]
    fn shown_renders_values_as_written() {
        assert_eq!(shown(&s(" a ")), " a ");
        assert_eq!(shown(&Value::from(2.5f64)), "2.5");
        assert_eq!(shown(&Value::from(-7i64)), "-7");
        assert_eq!(shown(&Value::from(vec![1u8, 2])), "[1, 2]");
        assert_eq!(redact("abcd"), "<4 characters, not shown>");
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
    fn tantrum_side_directions() {
        assert!(TantrumSide::Send.drops_sends() && !TantrumSide::Send.drops_receives());
        assert!(!TantrumSide::Recv.drops_sends() && TantrumSide::Recv.drops_receives());
        assert_eq!(TantrumSide::default().as_str(), "both");
    }
}
