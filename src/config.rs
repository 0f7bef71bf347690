//! Configuration: defaults, then a TOML file, then `MCCACHE_*` environment variables.
//!
//! SKELETON: the field list and defaults are fixed; loading and validation are being written.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;

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
}

/// Node configuration. Key names follow McCache.
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
    pub crypto_key: Option<String>,
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
    /// `interface`: IPv4 address of the interface multicast leaves and is joined on.
    /// Default 0.0.0.0 (the kernel's choice by route). Tests set 127.0.0.1.
    pub interface: Ipv4Addr,
    /// `max_message_size`: largest replicated key + value in bytes. Default 1 MiB.
    pub max_message_size: usize,
    /// `node_name`: a human name for this node in metrics and logs. Default `hostname:pid`.
    pub node_name: Option<String>,
    /// `cluster_name`: label bound into every datagram; clusters with other names never mix.
    pub cluster_name: String,
    /// `queue_max`: outbound changes queued before overload marks caches for repair.
    pub queue_max: usize,
    /// Per-cache overrides, `[caches.NAME]`.
    pub caches: BTreeMap<String, CacheOverrides>,
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
            packet_mtu: 1472,
            multicast_ip: Ipv4Addr::new(239, 255, 77, 3),
            multicast_port: 4000,
            multicast_hops: 1,
            callback_win: 5.0,
            daemon_sleep: 1.0,
            monkey_tantrum: 0.0,
            interface: Ipv4Addr::UNSPECIFIED,
            max_message_size: 1024 * 1024,
            node_name: None,
            cluster_name: "mccache".to_string(),
            queue_max: 65_536,
            caches: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Loads defaults, then `mccache.toml` (or `$MCCACHE_CONFIG`), then `MCCACHE_*` variables,
    /// and validates the result.
    pub fn load() -> Result<Config> {
        let c = Config::default();
        c.validate()?;
        Ok(c)
    }

    /// Checks every value; the error names the key and the bad value.
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// The effective settings of cache `name` (node-wide values plus its overrides).
    pub fn cache_config(&self, name: &str) -> CacheConfig {
        let o = self.caches.get(name).cloned().unwrap_or_default();
        let ttl = o.cache_ttl.unwrap_or(self.cache_ttl);
        CacheConfig {
            ttl: (ttl > 0.0).then(|| Duration::from_secs_f64(ttl)),
            max_entries: o.cache_max.unwrap_or(self.cache_max),
            max_bytes: o.cache_size.unwrap_or(self.cache_size),
            mode: o.cache_mode.unwrap_or(self.cache_mode),
            callback_win: Duration::from_secs_f64(o.callback_win.unwrap_or(self.callback_win)),
        }
    }
}
