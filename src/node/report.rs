//! The housekeeper's metrics report: a periodic summary per cache and for the network as
//! structured `tracing` events (`metrics_log_interval`), and, with the `metrics` feature, every
//! counter and gauge through the [`metrics`](https://docs.rs/metrics) facade, named and
//! labelled in Prometheus' conventions.
//!
//! The metric names and labels are listed in the crate docs (`src/lib.rs`, "Metrics").

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::hooks::ErasedCache;
use crate::cache::metrics::CacheMetrics;
use crate::config::Config;
use crate::proto::metrics::NetworkMetrics;

use super::cluster::NetProbe;

/// How long a report waits for the network thread's counters before using the last ones.
const NET_WAIT: Duration = Duration::from_millis(200);

/// Reports metrics from the housekeeper thread.
pub(crate) struct Reporter {
    node: String,
    probe: Option<NetProbe>,
    log_every: Option<Duration>,
    next_log: Instant,
}

impl Reporter {
    pub(crate) fn new(config: &Config, probe: Option<NetProbe>) -> Reporter {
        let log_every = config.metrics_log_every();
        Reporter {
            node: config.node_name_or_default(),
            probe,
            log_every,
            next_log: Instant::now() + log_every.unwrap_or(Duration::ZERO),
        }
    }

    /// One housekeeping pass: export to the facade (feature `metrics`), and log a summary
    /// when one is due.
    pub(crate) fn tick(&mut self, caches: &[Arc<dyn ErasedCache>], now: Instant) {
        let log = self.log_every.is_some_and(|_| now >= self.next_log);
        if !log && !cfg!(feature = "metrics") {
            return;
        }
        let cache_metrics: Vec<(String, CacheMetrics)> = caches
            .iter()
            .map(|c| (c.name().to_string(), c.metrics()))
            .collect();
        let net = self.probe.as_ref().map(|p| (p.read(NET_WAIT), p.members()));
        #[cfg(feature = "metrics")]
        export::all(&self.node, &cache_metrics, net.as_ref());
        if log {
            if let Some(every) = self.log_every {
                self.next_log = now + every;
            }
            log_summary(&self.node, &cache_metrics, net.as_ref());
        }
    }
}

fn log_summary(
    node: &str,
    caches: &[(String, CacheMetrics)],
    net: Option<&(NetworkMetrics, usize)>,
) {
    for (name, m) in caches {
        let ratio = if m.lookups == 0 {
            0.0
        } else {
            m.hits as f64 / m.lookups as f64
        };
        tracing::info!(
            target: "mccache::metrics",
            node,
            cache = %name,
            entries = m.entries,
            bytes = m.bytes,
            lookups = m.lookups,
            hit_ratio = (ratio * 1000.0).round() / 1000.0,
            inserts = m.inserts,
            updates = m.updates,
            deletes = m.deletes,
            evictions = m.evictions(),
            loads = m.loads,
            load_failures = m.load_failures,
            stale_served = m.stale_served,
            "cache metrics"
        );
    }
    if let Some((n, members)) = net {
        tracing::info!(
            target: "mccache::metrics",
            node,
            members,
            datagrams_sent = n.datagrams_sent,
            datagrams_received = n.datagrams_received,
            dropped = n.dropped.values().sum::<u64>(),
            changes_sent = n.changes_sent,
            changes_superseded = n.changes_superseded,
            lingered_alone = n.lingered_alone,
            changes_applied = n.changes_applied,
            retransmits = n.retransmits_served,
            repairs = n.ae_repairs,
            outbound_overflow = n.outbound_overflow,
            lag_p50_ms = n.apply_lag_p50_us as f64 / 1000.0,
            lag_p99_ms = n.apply_lag_p99_us as f64 / 1000.0,
            "network metrics"
        );
    }
}

#[cfg(feature = "metrics")]
mod export {
    use std::sync::Once;

    use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};

    use crate::cache::metrics::CacheMetrics;
    use crate::proto::metrics::NetworkMetrics;

    static DESCRIBE: Once = Once::new();

    const CACHE_COUNTERS: &[(&str, &str)] = &[
        ("mccache_cache_hits_total", "Reads that found a live entry."),
        (
            "mccache_cache_misses_total",
            "Reads that found no live entry.",
        ),
        (
            "mccache_cache_inserts_total",
            "New keys stored (local and replicated).",
        ),
        (
            "mccache_cache_updates_total",
            "Existing keys overwritten (local and replicated).",
        ),
        (
            "mccache_cache_deletes_total",
            "Keys removed (local and replicated).",
        ),
        (
            "mccache_cache_evictions_total",
            "Entries evicted, by reason.",
        ),
        (
            "mccache_cache_loads_total",
            "Values produced by a loader and stored.",
        ),
        (
            "mccache_cache_load_failures_total",
            "Loader calls that failed.",
        ),
        (
            "mccache_cache_refreshes_total",
            "Background refreshes started.",
        ),
        (
            "mccache_cache_stale_served_total",
            "Reads served a stale value while it was refreshed.",
        ),
        (
            "mccache_cache_spikes_total",
            "Mutations within callback_win of the previous one.",
        ),
        (
            "mccache_cache_peer_loads_seen_total",
            "Peers' announcements that they were loading a key.",
        ),
        (
            "mccache_cache_peer_load_waits_total",
            "Misses served by waiting for a peer's load.",
        ),
    ];

    const NET_COUNTERS: &[(&str, &str, Unit)] = &[
        (
            "mccache_net_datagrams_sent_total",
            "Datagrams sent.",
            Unit::Count,
        ),
        (
            "mccache_net_datagrams_received_total",
            "Datagrams received.",
            Unit::Count,
        ),
        ("mccache_net_bytes_sent_total", "Bytes sent.", Unit::Bytes),
        (
            "mccache_net_bytes_received_total",
            "Bytes received.",
            Unit::Bytes,
        ),
        (
            "mccache_net_dropped_total",
            "Datagrams dropped, by reason.",
            Unit::Count,
        ),
        (
            "mccache_net_changes_sent_total",
            "Replicated changes sent.",
            Unit::Count,
        ),
        (
            "mccache_net_changes_superseded_total",
            "Replicated changes not sent: a newer change of the same key followed them in one batch.",
            Unit::Count,
        ),
        (
            "mccache_net_lingered_alone_total",
            "Data messages whose one change waited for company that never came (two in a row switch the linger off).",
            Unit::Count,
        ),
        (
            "mccache_net_express_changes_total",
            "Replicated changes the writing thread sent itself (the network thread was idle).",
            Unit::Count,
        ),
        (
            "mccache_net_changes_applied_total",
            "Peers' changes applied here.",
            Unit::Count,
        ),
        (
            "mccache_net_changes_stale_total",
            "Peers' changes older than what was held.",
            Unit::Count,
        ),
        (
            "mccache_net_gaps_total",
            "Gaps detected in peers' streams.",
            Unit::Count,
        ),
        (
            "mccache_net_retransmits_requested_total",
            "Retransmits asked of peers.",
            Unit::Count,
        ),
        (
            "mccache_net_retransmits_served_total",
            "Retransmits sent to peers.",
            Unit::Count,
        ),
        (
            "mccache_net_repairs_total",
            "Entries repaired by anti-entropy.",
            Unit::Count,
        ),
        (
            "mccache_net_outbound_overflow_total",
            "Changes that overflowed the outbound queue.",
            Unit::Count,
        ),
        (
            "mccache_net_repairs_coalesced_total",
            "Anti-entropy repairs and pulls not repeated: the same was under way.",
            Unit::Count,
        ),
        (
            "mccache_net_keys_listed_total",
            "Key versions listed to peers in anti-entropy bucket lists.",
            Unit::Count,
        ),
        (
            "mccache_net_pushes_deferred_total",
            "Anti-entropy pushes left for a later exchange: overloaded, the outbox held a backlog.",
            Unit::Count,
        ),
        (
            "mccache_net_stalls_total",
            "Times this node stood still for over two heartbeats (not held against its peers).",
            Unit::Count,
        ),
        (
            "mccache_net_peers_failed_total",
            "Peers removed as failed: silent for remove_after heartbeats.",
            Unit::Count,
        ),
    ];

    fn describe() {
        DESCRIBE.call_once(|| {
            for (name, help) in CACHE_COUNTERS {
                describe_counter!(*name, Unit::Count, *help);
            }
            describe_gauge!("mccache_cache_entries", Unit::Count, "Live entries.");
            describe_gauge!(
                "mccache_cache_bytes",
                Unit::Bytes,
                "Serialized key + value bytes held."
            );
            for (name, help, unit) in NET_COUNTERS {
                describe_counter!(*name, *unit, *help);
            }
            describe_gauge!("mccache_net_members", Unit::Count, "Live peers.");
            describe_gauge!(
                "mccache_net_outbound_queue",
                Unit::Count,
                "Changes waiting to be sent."
            );
            describe_gauge!(
                "mccache_net_apply_lag_seconds",
                Unit::Seconds,
                "Replication lag of applied changes (write to apply), by quantile."
            );
        });
    }

    pub(super) fn all(
        node: &str,
        caches: &[(String, CacheMetrics)],
        net: Option<&(NetworkMetrics, usize)>,
    ) {
        describe();
        for (name, m) in caches {
            let l = [("node", node.to_string()), ("cache", name.clone())];
            let c = |n: &'static str, v: u64| counter!(n, &l).absolute(v);
            c("mccache_cache_hits_total", m.hits);
            c("mccache_cache_misses_total", m.misses);
            c("mccache_cache_inserts_total", m.inserts);
            c("mccache_cache_updates_total", m.updates);
            c("mccache_cache_deletes_total", m.deletes);
            c("mccache_cache_loads_total", m.loads);
            c("mccache_cache_load_failures_total", m.load_failures);
            c("mccache_cache_refreshes_total", m.refreshes);
            c("mccache_cache_stale_served_total", m.stale_served);
            c("mccache_cache_spikes_total", m.spikes);
            c("mccache_cache_peer_loads_seen_total", m.peer_loads_seen);
            c("mccache_cache_peer_load_waits_total", m.peer_load_waits);
            for (reason, v) in [
                ("capacity", m.evictions_capacity),
                ("bytes", m.evictions_bytes),
                ("ttl", m.evictions_ttl),
            ] {
                let mut l = l.to_vec();
                l.push(("reason", reason.to_string()));
                counter!("mccache_cache_evictions_total", &l).absolute(v);
            }
            gauge!("mccache_cache_entries", &l).set(m.entries as f64);
            gauge!("mccache_cache_bytes", &l).set(m.bytes as f64);
        }
        let Some((n, members)) = net else {
            return;
        };
        let l = [("node", node.to_string())];
        let c = |name: &'static str, v: u64| counter!(name, &l).absolute(v);
        c("mccache_net_datagrams_sent_total", n.datagrams_sent);
        c("mccache_net_datagrams_received_total", n.datagrams_received);
        c("mccache_net_bytes_sent_total", n.bytes_sent);
        c("mccache_net_bytes_received_total", n.bytes_received);
        c("mccache_net_changes_sent_total", n.changes_sent);
        c("mccache_net_express_changes_total", n.express_changes);
        c("mccache_net_changes_superseded_total", n.changes_superseded);
        c("mccache_net_lingered_alone_total", n.lingered_alone);
        c("mccache_net_changes_applied_total", n.changes_applied);
        c("mccache_net_changes_stale_total", n.changes_stale);
        c("mccache_net_gaps_total", n.gaps);
        c(
            "mccache_net_retransmits_requested_total",
            n.retransmits_requested,
        );
        c("mccache_net_retransmits_served_total", n.retransmits_served);
        c("mccache_net_repairs_total", n.ae_repairs);
        c("mccache_net_outbound_overflow_total", n.outbound_overflow);
        c("mccache_net_repairs_coalesced_total", n.repairs_coalesced);
        c("mccache_net_pushes_deferred_total", n.pushes_deferred);
        c("mccache_net_keys_listed_total", n.ae_keys_listed);
        c("mccache_net_stalls_total", n.stalls);
        c("mccache_net_peers_failed_total", n.peers_failed);
        for (reason, v) in &n.dropped {
            let l = [("node", node.to_string()), ("reason", reason.clone())];
            counter!("mccache_net_dropped_total", &l).absolute(*v);
        }
        gauge!("mccache_net_members", &l).set(*members as f64);
        gauge!("mccache_net_outbound_queue", &l).set(n.outbound_queue as f64);
        for (q, us) in [("0.5", n.apply_lag_p50_us), ("0.99", n.apply_lag_p99_us)] {
            let l = [("node", node.to_string()), ("quantile", q.to_string())];
            gauge!("mccache_net_apply_lag_seconds", &l).set(us as f64 / 1e6);
        }
    }
}
