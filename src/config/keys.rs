//! Every configuration key, declared once: its field, type, default, rule (parsing and
//! range), documented type and default, whether caches can override it, and its meaning.
//! `declare_keys!` (`declare.rs`) writes the rest from here, including the key table of
//! `docs/CONFIG.md` (a unit test fails when that file is stale).
//!
//! To add a key: add an entry here (and a rule in `rules.rs` if none fits), then run
//! `UPDATE_CONFIG_DOC=1 cargo test --lib config::doc_table` to rewrite the table.

use std::net::Ipv4Addr;

use super::declare::declare_keys;
use super::rules::{
    BYTES, CHANGES, CLUSTER_NAME, CryptoKey, ENTRIES, GROUP, HOPS, INTERFACE, KEYRING,
    MESSAGE_SIZE, MODE, MTU, NODE_NAME, OVERLOAD, Opt, PERCENT, PORT, SECS_NON_NEGATIVE,
    SECS_POSITIVE, SIDE,
};
use super::{CacheMode, Overload, TantrumSide, TransportKind, WritePolicy, backing, transport};

declare_keys! {
    /// Node configuration. Key names follow McCache; `docs/CONFIG.md` has the same table.
    ///
    /// Build it with [`Config::load`] (defaults, file, environment), [`Config::from_toml_str`]
    /// or [`Config::from_figment`], or start from [`Config::default`] and set fields; the node
    /// calls [`Config::validate`] before it starts. The struct is `#[non_exhaustive]` (keys
    /// are added over time), so it is not built with a struct literal outside mccache:
    ///
    /// ```
    /// use std::net::Ipv4Addr;
    /// use mccache::Config;
    ///
    /// let mut config = Config::default(); // or Config::load()?
    /// config.interface = Ipv4Addr::LOCALHOST;
    /// config.cache_max = 10_000;
    /// config.validate()?;
    /// assert_eq!(config.group().to_string(), "239.255.77.3:4000");
    /// # Ok::<(), mccache::Error>(())
    /// ```
    pub struct Config;

    /// Per-cache overrides (`[caches.NAME]`); unset fields take the node-wide value.
    pub struct CacheOverrides;

    /// How long an entry lives after its last write on this node. `0` means no expiry. Can be
    /// set per cache.
    cache_ttl: f64 = 3600.0 => {
        rule: SECS_NON_NEGATIVE,
        unit: "seconds (float), 0 to 10⁹",
        default: "`3600`",
        per_cache: f64 = SECS_NON_NEGATIVE,
    }
    /// Maximum number of entries in each cache. The least recently used entry is evicted first.
    /// Can be set per cache.
    cache_max: usize = 256 => {
        rule: ENTRIES,
        unit: "entries, ≥ 1",
        default: "`256`",
        per_cache: usize = ENTRIES,
    }
    /// Maximum bytes in each cache, counted as serialized key + value. Can be set per cache.
    /// McCache measured an approximate object size instead.
    cache_size: u64 = 8 * 1024 * 1024 => {
        rule: BYTES,
        unit: "bytes, ≥ 1 (`KiB`/`MiB`/`GiB` allowed)",
        default: "`8388608` (8 MiB)",
        per_cache: u64 = BYTES,
    }
    /// `0`: a peer updates a key only if it already holds that key. `1`: full replication. `2`:
    /// invalidate, so peers drop their copy and their next read misses. Can be set per cache.
    /// McCache documented mode 0 but never implemented it, and it had no mode 2.
    cache_mode: CacheMode = CacheMode::Replicate => {
        rule: MODE,
        unit: "`0`, `1` or `2`",
        default: "`1`",
        per_cache: CacheMode = MODE,
    }
    /// Time between anti-entropy digest pulses. **Seconds here, minutes in McCache**: McCache
    /// multiplied the value by 60.
    cache_pulse: f64 = 5.0 => {
        rule: SECS_POSITIVE,
        unit: "seconds (float), > 0",
        default: "`5`",
    }
    /// The cluster key: seals datagrams (AES-256-GCM-SIV) and memcached-tier values
    /// (XChaCha20-Poly1305). Make one with `mccache::generate_key()`. Without a key, datagrams
    /// are plaintext with a crc32 check. Standard and URL-safe base64 are both
    /// accepted, with or without padding, so McCache's Fernet keys work. An empty value turns
    /// encryption off.
    crypto_key: Option<String> = None => {
        rule: CryptoKey,
        unit: "base64 of 32 bytes",
        default: "none (plaintext)",
    }
    /// A keyring for key rotation. The first key encrypts what this node sends; received
    /// datagrams are tried against every key. If `crypto_key` is also set, it comes first. Not
    /// in McCache.
    crypto_keys: Vec<String> = Vec::new() => {
        rule: KEYRING,
        unit: "list of base64 keys (env: comma-separated)",
        default: "`[]`",
    }
    /// Largest UDP payload per datagram. Larger messages are split into fragments of this size.
    packet_mtu: u16 = 1472 => {
        rule: MTU,
        unit: "bytes, 576 to 65507",
        default: "`1472`",
    }
    /// The multicast group. With the `ip:port` form the port is set too, and **that port wins
    /// over `multicast_port`** in every layer. McCache's default was the link-local
    /// `224.0.0.3`; ours is in the admin-scoped range (RFC 2365). McCache refused most valid
    /// groups (its bug B20); any address in 224.0.0.0/4 is accepted here.
    multicast_ip: Ipv4Addr = Ipv4Addr::new(239, 255, 77, 3) => {
        rule: GROUP,
        unit: "IPv4 in 224.0.0.0/4, optionally `ip:port`",
        default: "`239.255.77.3`",
    }
    /// UDP port of the group.
    multicast_port: u16 = 4000 => {
        rule: PORT,
        unit: "1 to 65535",
        default: "`4000`",
    }
    /// IP multicast TTL. `1` keeps traffic on the local subnet.
    multicast_hops: u8 = 1 => {
        rule: HOPS,
        unit: "1 to 255",
        default: "`1`",
    }
    /// Callback window: a change to a key that was read within this window is flagged. Also the
    /// spike window in the metrics. Can be set per cache.
    callback_win: f64 = 5.0 => {
        rule: SECS_NON_NEGATIVE,
        unit: "seconds (float), 0 to 10⁹",
        default: "`5`",
        per_cache: f64 = SECS_NON_NEGATIVE,
    }
    /// Time between heartbeats and housekeeping passes. McCache used 2 s and crashed on `1` (an
    /// integer) because of its coercion bug B21.
    daemon_sleep: f64 = 1.0 => {
        rule: SECS_POSITIVE,
        unit: "seconds (float), > 0",
        default: "`1`",
    }
    /// Fault injection: the percentage of datagrams dropped on purpose. McCache read it from
    /// `TEST_MONKEY_TANTRUM` and only with `debug_level ≥ 3`.
    monkey_tantrum: f64 = 0.0 => {
        rule: PERCENT,
        unit: "percent (float), 0 to 100",
        default: "`0`",
    }
    /// Which direction `monkey_tantrum` drops datagrams in. Not in McCache, which dropped sends
    /// only.
    monkey_tantrum_side: TantrumSide = TantrumSide::Both => {
        rule: SIDE,
        unit: "`send`, `recv` or `both`",
        default: "`both`",
    }
    /// Address of the interface that multicast is sent from and joined on. `0.0.0.0` lets the
    /// kernel pick by route. Use `127.0.0.1` for tests on one host. Not in McCache.
    interface: Ipv4Addr = Ipv4Addr::UNSPECIFIED => {
        rule: INTERFACE,
        unit: "unicast IPv4 or `0.0.0.0`",
        default: "`0.0.0.0`",
    }
    /// Largest serialized key + value that is replicated. A larger insert is refused with
    /// `Error::TooLarge`. Not in McCache.
    max_message_size: usize = 1024 * 1024 => {
        rule: MESSAGE_SIZE,
        unit: "bytes, 1 to 64 MiB (`KiB`/`MiB` allowed)",
        default: "`1048576` (1 MiB)",
    }
    /// Name of this node in metrics and logs. The host name is read from
    /// `/proc/sys/kernel/hostname`, then `/etc/hostname`, then `$HOSTNAME`, and falls back to
    /// `node`.
    node_name: Option<String> = None => {
        rule: NODE_NAME,
        unit: "text, 1 to 255 bytes",
        default: "`hostname:pid`",
    }
    /// A label bound into every datagram. Nodes with different cluster names ignore each other
    /// even on the same group. Not in McCache.
    cluster_name: String = "mccache".to_string() => {
        rule: CLUSTER_NAME,
        unit: "text, 1 to 64 bytes",
        default: "`mccache`",
    }
    /// How many outbound changes may queue. What happens past this limit (or
    /// `queue_max_bytes`) is `overload`'s choice. Under sustained overload a change waits
    /// behind about this many (plus up to 4,096 being packed), so the queue bounds the lag:
    /// with writers flat out on 2 cores over 30,000 keys, small values had a lag p50 of ~0.1 s
    /// and the caches were identical ~0.1 s after the writers stopped (65,536 gave ~0.2 s).
    /// Writers that rewrite a few hundred hot keys no longer fill it: a backlog sends each
    /// key's newest change only (`changes_superseded` in the network metrics). Values of more
    /// than ~200 bytes fill `queue_max_bytes` first. A larger queue rides out longer bursts
    /// without overflowing. McCache's queues were unbounded.
    queue_max: usize = 16_384 => {
        rule: CHANGES,
        unit: "changes, ≥ 1",
        default: "`16384`",
    }
    /// How many bytes of outbound changes may queue (serialized key + value, plus 32 per
    /// change). The queue is full at `queue_max` changes or at this many bytes, whichever
    /// comes first; what happens then is `overload`'s choice. With large values the byte
    /// bound is the one that holds, and it keeps the lag under sustained overload about the
    /// time it takes to send this many bytes, whatever the value sizes: flat out on 2 cores,
    /// 1 KiB values had a lag p50 of ~0.3 s and identical caches ~0.34 s after the writers
    /// stopped (0.7–0.9 s and ~0.5 s when only `queue_max` bounded the queue), and McCache's
    /// mixed workload a lag p99 of ~0.4 s (2.1–3.0 s). Not in McCache.
    queue_max_bytes: u64 = 4 * 1024 * 1024 => {
        rule: BYTES,
        unit: "bytes, ≥ 1 (`KiB`/`MiB`/`GiB` allowed)",
        default: "`4194304` (4 MiB)",
    }
    /// What a write does when the outbound queue is full (`queue_max` or `queue_max_bytes`).
    /// `repair`: it is stored and returns at once; its change is not queued, and the node
    /// re-sends the newest record of every such key as soon as the queue drains, and up to
    /// 256 of them every 100 ms while it stays full (past 262,144 such keys, or `queue_max` if
    /// larger, anti-entropy pulses finish the repair); a key whose change was overtaken by a
    /// newer one that was sent (another node's, or a later one of this node) is not re-sent.
    /// The caches then agree once those records have crossed the network: flat out on 2
    /// cores over 100,000 keys, ~0.3–0.8 s after the writers stop for small values, 2–5 s
    /// when half the values are 9 KB (hundreds of MB to re-send). `block`: the writer waits
    /// for room, at most `overload_timeout`, then gets `Error::Overloaded`; writers go no
    /// faster than the network carries, and the caches agree at once when they stop (0.05 s
    /// in the same 9 KB runs). `error`: `Error::Overloaded` at once. A refused write stores
    /// nothing. Not in McCache.
    overload: Overload = Overload::Repair => {
        rule: OVERLOAD,
        unit: "`repair`, `block` or `error`",
        default: "`repair`",
    }
    /// The longest a write waits for queue room under `overload = "block"`. Not in McCache.
    overload_timeout: f64 = 1.0 => {
        rule: SECS_NON_NEGATIVE,
        unit: "seconds, ≥ 0",
        default: "`1`",
    }
    /// How far ahead of this node's wall clock a peer's write versions (and clear floors,
    /// tombstone horizons) may be. Further ahead they are refused (`dropped.clock_skew`),
    /// warned about at most every 10 s, and never move this node's clock, so one broken clock
    /// or forged timestamp cannot win every later write. A node whose clock is more than half
    /// of it away from every peer's logs a warning; `network_metrics().clock_offset_ms` shows
    /// the offset.
    max_clock_skew: f64 = 60.0 => {
        rule: SECS_POSITIVE,
        unit: "seconds (float), > 0",
        default: "`60`",
    }
    /// A memcached tier behind every cache (feature `memcached`; without it a value other than
    /// `none` is an error). A local miss reads it; `get_or_insert_with` takes its fleet-wide
    /// lease around the loader. Can be set per cache (`none` turns it off for one cache). Not
    /// in McCache.
    backing: Option<String> = None => {
        rule: backing::BACKING,
        unit: "`memcached://host:port[,host:port…]` or `none`",
        default: "none",
        per_cache: String = backing::BACKING_OVERRIDE,
    }
    /// What a local write does to the memcached copy: set it (with the entry's TTL) or delete
    /// it. Can be set per cache.
    backing_write: WritePolicy = WritePolicy::WriteThrough => {
        rule: backing::WRITE,
        unit: "`write-through` or `invalidate`",
        default: "`write-through`",
        per_cache: WritePolicy = backing::WRITE,
    }
    /// Deadline of one memcached exchange, connect included. Past it the call goes on with the
    /// local tier and the failure is counted.
    backing_timeout: f64 = 0.1 => {
        rule: SECS_POSITIVE,
        unit: "seconds (float), > 0",
        default: "`0.1`",
    }
    /// Connections per memcached server (idle and busy). A caller that finds all busy waits for
    /// one, within `backing_timeout`.
    backing_pool_max: usize = 8 => {
        rule: backing::POOL,
        unit: "connections, 1 to 1024",
        default: "`8`",
    }
    /// Failures in a row that mark a server down: its keys go to the other servers (rendezvous
    /// hashing) and a `ServerEvent::Down` is reported.
    backing_down_after: u32 = 3 => {
        rule: backing::FAILURES,
        unit: "failures, 1 to 1000",
        default: "`3`",
    }
    /// How long a down server is skipped; then one request for one of its keys probes it
    /// (`ServerEvent::Up` on success).
    backing_retry_after: f64 = 5.0 => {
        rule: SECS_POSITIVE,
        unit: "seconds (float), > 0",
        default: "`5`",
    }
    /// Lifetime of a load lease in memcached: the longest a loader is expected to take. A lease
    /// whose holder died expires after it.
    backing_lease_ttl: f64 = 10.0 => {
        rule: SECS_POSITIVE,
        unit: "seconds (float), > 0 (whole seconds in memcached, at least 1)",
        default: "`10`",
    }
    /// How long a caller waits for another caller's load (polling memcached and its own cache,
    /// which a peer's replicated value may fill first) before it runs its loader itself.
    backing_lease_wait: f64 = 2.0 => {
        rule: SECS_POSITIVE,
        unit: "seconds (float), > 0",
        default: "`2`",
    }
    /// How often the housekeeper logs a metrics summary: one `tracing` info event per cache
    /// (entries, bytes, hit ratio, writes, evictions, loads) and one for the network (members,
    /// datagrams, drops, retransmits, repairs, lag), target `mccache::metrics`. `0` turns it
    /// off. With the `metrics` feature, the same figures go to the `metrics` facade on every
    /// housekeeping pass (`daemon_sleep`).
    metrics_log_interval: f64 = 60.0 => {
        rule: SECS_NON_NEGATIVE,
        unit: "seconds, ≥ 0",
        default: "`60`",
    }
    /// How datagrams travel. `unicast`: one socket on `interface:bind_port`, and every datagram
    /// goes to each live member and each `peers` address not yet a member (batched with
    /// `sendmmsg`). For networks without multicast: Kubernetes, cloud VPCs, docker networks
    /// with multicast blocked. Same protocol, guarantees and encryption as multicast. There is
    /// no `auto`: a node cannot tell on its own whether multicast reaches its peers, and a
    /// cluster whose nodes guessed differently would split without a word. See
    /// [KUBERNETES.md](KUBERNETES.md). Not in McCache.
    transport: TransportKind = TransportKind::Multicast => {
        rule: transport::TRANSPORT,
        unit: "`multicast` or `unicast`",
        default: "`multicast`",
    }
    /// Unicast seeds: IPv4 addresses or DNS names, port optional (default: this node's
    /// `bind_port`). Names are resolved at start and every `discovery_interval`, so a
    /// Kubernetes headless Service or a compose service name (one address per replica) finds
    /// every node, including later ones. One reachable seed is enough: members announce the
    /// addresses they hear each other from. A node's own address among them is detected and
    /// skipped. Not in McCache.
    peers: Vec<String> = Vec::new() => {
        rule: transport::PEERS,
        unit: "list of `host:port` (env: comma-separated)",
        default: "`[]`",
    }
    /// UDP port a unicast node listens and sends on. Several nodes on one host need different
    /// ports. A port already in use is an error naming this key. Not in McCache.
    bind_port: Option<u16> = None => {
        rule: Opt(PORT),
        unit: "1 to 65535",
        default: "`multicast_port`",
    }
    /// Time between re-resolutions of the names in `peers`. A name that stops resolving keeps
    /// its last addresses (a warning says so). Not in McCache.
    discovery_interval: f64 = 10.0 => {
        rule: SECS_POSITIVE,
        unit: "seconds (float), > 0",
        default: "`10`",
    }
}
