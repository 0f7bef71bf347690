//! Tunables of the protocol core ([`EndpointConfig`]) and the named constants of its timing
//! and bounds.

use std::time::Duration;

#[cfg(doc)]
use super::Endpoint;
use crate::reliability::NakPolicy;
use crate::wire::WireConfig;

/// Most bytes of datagrams queued for sending before NAKs stop being served: a NAK storm (or
/// one forged NAK naming a whole retransmit buffer of large messages, many times over) must
/// not queue unbounded memory. Unserved NAKs are simply asked again later.
pub const MAX_QUEUED_TRANSMIT_BYTES: usize = 8 << 20;

/// While the targeted repair is pending (changes overflowed this node's queue: it is
/// overloaded), anti-entropy pushes (records this node holds newer than a peer's bucket list
/// says) are queued only while the outbox holds fewer changes than this; otherwise they wait
/// for a later exchange (counted as `pushes_deferred`), and the peer pulls what it lacks when
/// it pulses. Pulls are answered whatever the outbox holds (within the requester's answer
/// budget), and once the overload is over pushes are queued again whatever it holds.
///
/// Five processes flat out on two cores queued up to 177,000 repairs in a node's outbox while
/// the writers ran, sent in order behind the node's own changes; its network thread starved
/// its socket, peers were removed, and the caches agreed 6–15 s after the writers stopped in
/// a quarter of the runs. Bounding pull answers as well, or pushes at all times, left nine
/// processes' caches differing 60 s after the writers stopped in five runs of eight (in none
/// of three without a bound, nor of two with this one).
pub const PUSH_OUTBOX_MAX: usize = 8192;

/// Most bytes ([`crate::message::Item::weight`]) the outbox may hold for pushes to be queued
/// while overloaded (see [`PUSH_OUTBOX_MAX`]): 4 MiB is a few hundred 9 KB values.
pub const PUSH_OUTBOX_BYTES: usize = 4 << 20;

/// Most missing sequence numbers tracked over all peers. An announcement that would open more
/// makes that peer's stream jump to it instead (counted as `gap_budget`): the skipped span is
/// repaired by anti-entropy, acks keep flowing, and spoofed peers announcing far-ahead streams
/// cannot grow memory or the per-wakeup NAK timer scan (which is linear in tracked gaps).
pub const MAX_TRACKED_GAPS: u64 = 1 << 14;

/// Period of wire housekeeping (expiring stalled reassemblies).
pub const HOUSEKEEPING_PERIOD: Duration = Duration::from_millis(250);

/// After a change could not be queued (or [`Endpoint::schedule_pulse`]), the anti-entropy
/// pulse that repairs it runs this soon.
pub const OVERFLOW_PULSE_DELAY: Duration = Duration::from_millis(50);

/// After a peer answered `Gone` (what we missed is lost for good), the pulse that repairs it
/// runs this soon.
pub const GONE_PULSE_DELAY: Duration = Duration::from_millis(10);

/// After a peer appeared (or a stream jumped ahead), digests are compared this soon.
pub const NEW_PEER_PULSE_DELAY: Duration = Duration::from_millis(20);

/// After this node became ready, a pulse closes any race between the snapshot cursor and live
/// changes this soon.
pub const READY_PULSE_DELAY: Duration = Duration::from_millis(5);

/// Pulses brought forward are at least half a heartbeat apart, and never closer than this.
pub const MIN_PULSE_SPACING: Duration = Duration::from_millis(20);

/// Peers' digests that differ from this node's that it answers (with its bucket lists or
/// sums) within one pulse period; a peer not answered for `peers / this + 1` periods is
/// answered whatever the count. Pushes travel on the multicast stream, so one exchange repairs
/// every member that lacked what it pushes: answering every digest made N nodes hold
/// N × (N − 1) exchanges a period, and nine processes on two cores overflowed their receive
/// buffers by up to 124,000 datagrams each in the 30 s after the writers stopped.
pub const DIGEST_ANSWERS_PER_PULSE: u32 = 2;

/// A periodic pulse is put off while data flows for at most this many pulse periods in a row.
pub const MAX_PULSE_DEFERRAL_PERIODS: u32 = 4;

/// Tail announcements (`Tail`: our highest sequence number) after a burst of data messages:
/// the first `tail_delay` after it, the next ones [`TAIL_REPEAT_SPACING`] times that apart.
pub const TAIL_ANNOUNCEMENTS: u8 = 2;

/// Spacing of repeated tail announcements, in multiples of `tail_delay`.
pub const TAIL_REPEAT_SPACING: u32 = 8;

/// A joiner asks its donor again for a chunk after this many `tail_delay`s (at most one
/// heartbeat) without an answer.
pub const TRANSFER_RETRY_FACTOR: u32 = 25;

/// Bytes a receive buffer is charged for one full-size data datagram: the kernel counts the
/// packet's whole allocation, about twice an MTU-sized payload (rounded up here).
pub const DATAGRAM_CHARGE: usize = 3 << 10;

/// Heartbeats missed before a peer is removed as failed (the default of `remove_after`).
pub const REMOVE_AFTER: u32 = 6;

/// The smallest flow-control window, whatever the receive buffer.
pub const MIN_WINDOW: u64 = 16;

/// Most sequence numbers one NAK can make this node look at (retransmit or answer `Gone`).
pub const NAK_WORK_BUDGET: u32 = 4096;

/// Snapshot chunks remembered for resending under the same message id.
pub const SERVED_CHUNKS_KEPT: usize = 64;
/// Most parallel streams a joiner copies one cache in ([`crate::state::AppState::snapshot_starts`]).
pub const MAX_SNAPSHOT_STREAMS: usize = 16;

/// A new peer's stream is taken from its start when its first message seen has a sequence
/// number up to this (its first messages, if lost, are still NAKed); a longer-running stream is
/// joined where it is (history is covered by state transfer and anti-entropy).
pub const YOUNG_STREAM: u64 = 4096;

/// Bytes a data message takes besides its items (an estimate used to fill datagrams).
pub(super) const DATA_MSG_OVERHEAD: usize = 16;

/// Default of `max_clock_skew`, in seconds.
pub const DEFAULT_MAX_CLOCK_SKEW_SECS: u64 = 60;

/// Tunables of the protocol core. [`EndpointConfig::new`] derives sane values from the node
/// configuration; the simulator shrinks them.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Human name announced in heartbeats.
    pub name: String,
    /// Datagram format, keys and limits.
    pub wire: WireConfig,
    /// Heartbeat and housekeeping period (`daemon_sleep`).
    pub heartbeat: Duration,
    /// Anti-entropy pulse period (`cache_pulse`).
    pub pulse: Duration,
    /// Heartbeats missed before a peer is suspected.
    pub suspect_after: u32,
    /// Heartbeats missed before a peer is removed.
    pub remove_after: u32,
    /// NAK timing.
    pub nak: NakPolicy,
    /// Bytes of sent data messages kept for retransmission.
    pub retransmit_bytes: usize,
    /// Unacknowledged data messages allowed in flight before new data waits (flow control):
    /// the most; [`crate::endpoint::Endpoint::window`] is smaller when `recv_buffer` is.
    pub window: u64,
    /// Bytes the kernel charges this node's receive socket for (what `SO_RCVBUF` reads back:
    /// twice the size set, on Linux). Peers are assumed to have the same, and the window is
    /// sized so that every peer's fits it.
    pub recv_buffer: usize,
    /// Changes that may wait to be sent; beyond it changes are dropped and repaired by
    /// anti-entropy.
    pub queue_max: usize,
    /// Delay after a burst before the tail announcement.
    pub tail_delay: Duration,
    /// Bytes per state-transfer chunk.
    pub snapshot_chunk: usize,
    /// How long a joining node waits for a peer before declaring itself ready alone.
    pub join_wait: Duration,
    /// Send a cumulative ack after this many data messages received.
    pub ack_every: u64,
    /// Most peers tracked (membership table bound).
    pub max_peers: usize,
    /// Batching window: when a data message went out less than this long ago and the queued
    /// changes leave room in a datagram for another change the size of the newest, they wait
    /// (at most this long) for more to join them. At low load every change leaves at once;
    /// under load datagrams fill up; a change too large to share a datagram (1 KiB at MTU
    /// 1500) never waits.
    ///
    /// 500 µs by default. With a timer that fires when asked (the node's is a timerfd), 200 µs
    /// measured a third more CPU per change on the receivers at 25,000–100,000 changes/s
    /// (smaller datagrams, one receive wake-up each) for a lower lag p50 (200 against 600 µs)
    /// and the same p99, so it was 1 ms until the driver stopped being woken for every change
    /// that lingers (`Endpoint::lingering`); since, 500 µs measured both less CPU and less lag
    /// than 1 ms did before (capacity bench, small sealed values, 25,000/s in aggregate: 22–24 %
    /// of a core per node against 32 %, lag p50 316 against 616 µs). A lone change never
    /// lingers.
    ///
    /// The linger learns from the data messages whether waiting pays (`endpoint::linger`): a
    /// lone small change that left less than two lingers after the previous data message (it
    /// most likely waited for nothing: a writer with one write in flight at a time) is a
    /// strike, and two in a row switch it off; a message of two changes or more switches it on
    /// again, and so do 16 lone ones in a row each less than a linger after the one before (a
    /// probe, which one strike ends; after a probe that found no company, twice as many, up to
    /// 256). Such a writer's changes waited 259–263 µs (p50) each with the linger always on,
    /// 78 µs with this rule, both on a day this VM ran 2–2.5× slower (`cargo bench --bench
    /// replication`).
    pub linger: Duration,
    /// Anti-entropy leaves alone keys whose newest version is younger than this: they are most
    /// likely still in flight on the reliable stream, and repairing them would only add load.
    pub settle: Duration,
    /// Versions (and clear floors, horizons) further ahead of this node's wall clock than this
    /// are refused (`clock_skew`), counted, warned about and never observed into the clock.
    pub max_clock_skew: Duration,
}

impl EndpointConfig {
    /// Defaults derived from the heartbeat and pulse periods.
    pub fn new(
        name: String,
        wire: WireConfig,
        heartbeat: Duration,
        pulse: Duration,
    ) -> EndpointConfig {
        EndpointConfig {
            name,
            wire,
            heartbeat,
            pulse,
            suspect_after: 3,
            remove_after: REMOVE_AFTER,
            nak: NakPolicy::default(),
            retransmit_bytes: 32 << 20,
            window: 1_024,
            recv_buffer: 32 << 20,
            queue_max: 16_384,
            tail_delay: Duration::from_millis(2),
            snapshot_chunk: 32 << 10,
            join_wait: heartbeat.mul_f64(1.5).max(Duration::from_millis(300)),
            ack_every: 64,
            max_peers: 256,
            settle: (pulse / 2).min(Duration::from_secs(1)),
            linger: Duration::from_micros(500),
            max_clock_skew: Duration::from_secs(DEFAULT_MAX_CLOCK_SKEW_SECS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_derive_from_heartbeat_and_pulse() {
        let heartbeat = Duration::from_millis(100);
        let pulse = Duration::from_secs(4);
        let c = EndpointConfig::new("n".into(), WireConfig::default(), heartbeat, pulse);
        assert_eq!(c.join_wait, Duration::from_millis(300));
        assert_eq!(c.settle, Duration::from_secs(1));
        let c = EndpointConfig::new("n".into(), WireConfig::default(), heartbeat * 10, pulse / 4);
        assert_eq!(c.join_wait, Duration::from_millis(1500));
        assert_eq!(c.settle, Duration::from_millis(500));
        assert_eq!(
            c.max_clock_skew,
            Duration::from_secs(DEFAULT_MAX_CLOCK_SKEW_SECS)
        );
    }
}
