//! Network and protocol counters.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A snapshot of the node's network and replication counters.
///
/// Deserializing fills a counter the input lacks (written by an older build) with zero.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct NetworkMetrics {
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Bytes sent (UDP payload).
    pub bytes_sent: u64,
    /// Datagrams received (before any check).
    pub datagrams_received: u64,
    /// Bytes received (UDP payload).
    pub bytes_received: u64,
    /// Datagrams dropped, by reason (`bad_magic`, `bad_version`, `auth_failure`, `malformed`,
    /// `duplicate`, `foreign_cluster`, `replay`, ...).
    pub dropped: BTreeMap<String, u64>,
    /// Messages (after reassembly) that did not decode.
    pub malformed_messages: u64,
    /// Datagrams dropped on purpose by `monkey_tantrum`.
    pub tantrum_drops: u64,
    /// Messages being reassembled now.
    pub reassemblies_in_progress: u64,
    /// Bytes held by reassembly now.
    pub reassembly_bytes: u64,
    /// Changes waiting to be sent now.
    pub outbound_queue: u64,
    /// Changes that did not fit the outbound queue (their keys are re-sent by the targeted
    /// repair, or past its bound by anti-entropy).
    pub outbound_overflow: u64,
    /// Data messages in the retransmit buffer now.
    pub retransmit_buffer_msgs: u64,
    /// Bytes in the retransmit buffer now.
    pub retransmit_buffer_bytes: u64,
    /// Data messages sent.
    pub data_messages_sent: u64,
    /// Changes sent in data messages.
    pub changes_sent: u64,
    /// Of `changes_sent`, those the writing thread sent itself because the network thread was
    /// idle (the express lane: no wake-up of the network thread before the datagram leaves).
    pub express_changes: u64,
    /// Changes never sent because a newer change of the same key followed them in one batch
    /// taken off the outbound queue (under backlog: see `superseded` in the driver). Peers
    /// end with the same value; they see fewer change events for the key.
    #[serde(default)]
    pub changes_superseded: u64,
    /// Data messages that carried one change, small enough to share its datagram, less than
    /// two lingers after the previous data message while changes lingered: the change most
    /// likely waited for company that never came (a writer with one write in flight at a time).
    /// Two in a row switch the linger off until changes share data messages again, or until 16
    /// lone changes in a row, each less than a linger after the one before, switch it on to
    /// try again (then one is enough to switch it off, and the next try waits for twice as
    /// many, up to 256: see `EndpointConfig::linger`).
    #[serde(default)]
    pub lingered_alone: u64,
    /// Changes received from peers and applied (newer than what was held).
    pub changes_applied: u64,
    /// Changes received but not newer than what was held.
    pub changes_stale: u64,
    /// Gaps detected in peers' streams.
    pub gaps: u64,
    /// Duplicate data messages dropped.
    pub duplicates: u64,
    /// NAK ranges sent.
    pub retransmits_requested: u64,
    /// Messages retransmitted in answer to NAKs.
    pub retransmits_served: u64,
    /// Messages asked for that were no longer held (answered `Gone`).
    pub retransmits_gone: u64,
    /// Gaps given up on and left to anti-entropy.
    pub gaps_abandoned: u64,
    /// Anti-entropy digest pulses sent.
    pub pulses_sent: u64,
    /// Anti-entropy bucket exchanges started (digests differed).
    pub ae_exchanges: u64,
    /// Key versions this node listed to peers in anti-entropy bucket lists (whole small
    /// buckets, and the parts of long ones whose sums differed).
    #[serde(default)]
    pub ae_keys_listed: u64,
    /// Records this node sent to repair peers (anti-entropy pushes and answers to pulls).
    pub ae_repairs: u64,
    /// Anti-entropy work left undone because the same was under way: repairs of a record
    /// already waiting in the outbox (at that version or newer) and pulls of a key already
    /// asked for (see `coalesce` in the protocol core).
    pub repairs_coalesced: u64,
    /// Anti-entropy pushes not queued because, while this node was overloaded, the outbox held
    /// a backlog (see `PUSH_OUTBOX_MAX` in the protocol core): the peer pulls them when it
    /// pulses.
    pub pushes_deferred: u64,
    /// Times this node itself stood still for more than two heartbeats (descheduled, stopped,
    /// or one pass of its network thread took that long); that time is not held against its
    /// peers' liveness.
    pub stalls: u64,
    /// Peers removed as failed: nothing heard from them for `remove_after` heartbeats (a
    /// crashed or stopped process, a cut network, or a machine too loaded to run it). Each
    /// removal counts; a peer heard again afterwards joins anew.
    pub peers_failed: u64,
    /// Records applied from state transfer (and legacy repair messages).
    pub snapshot_records_applied: u64,
    /// State transfers completed (as the joining node).
    pub state_transfers: u64,
    /// Chunks served to joining peers.
    pub snapshot_chunks_served: u64,
    /// Per-peer lag: messages known sent by the peer but not yet received here.
    pub peer_lag: BTreeMap<String, u64>,
    /// Apply lag in microseconds (write time on the origin to apply time here), p50.
    pub apply_lag_p50_us: u64,
    /// Apply lag p99 in microseconds.
    pub apply_lag_p99_us: u64,
    /// This node's wall clock minus its peers' (median, from their heartbeats), in ms: far
    /// from 0 means this node's clock (or most peers') is wrong.
    pub clock_offset_ms: i64,
    /// Live entries dropped because a peer that lacks them may have forgotten their delete
    /// (see "No resurrection" in docs/PROTOCOL.md).
    pub horizon_drops: u64,
}
