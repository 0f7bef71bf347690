//! State transfer: a joining node copies its first peer's caches chunk by chunk (the donor
//! serves chunks, resending them under the same message id when asked again), then declares
//! itself ready.

use super::*;
use crate::message::Msg;
use crate::record::Record;
use crate::sync::Applied;
use crate::version::Version;

/// A state transfer in progress.
#[derive(Debug)]
pub(super) struct Transfer {
    /// The peer copied from.
    pub(super) donor: NodeId,
    /// Streams not yet complete, by cache and start ([`AppState::snapshot_starts`]).
    pub(super) pending: BTreeMap<(String, u64), Stream>,
    /// Per cache, the newest tombstone horizon its chunks carried: adopted when the cache's
    /// last stream completes.
    pub(super) horizons: BTreeMap<String, Version>,
}

/// One stream of a cache's copy: the cursors from its start up to `end`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stream {
    /// The cursor asked for.
    pub(super) cursor: u64,
    /// Where the next stream starts ([`u64::MAX`]: the last stream, to the end).
    pub(super) end: u64,
    /// The HLC this stream's copy goes up to: its first chunk's `as_of` ([`u64::MAX`] until
    /// that came).
    pub(super) until: u64,
}

/// Where joining stands; [`Timer::Join`] holds its deadline.
#[derive(Debug)]
pub(super) enum JoinState {
    /// Waiting for a peer to offer its caches (until `join_wait`).
    Waiting,
    /// Copying the caches of a donor.
    Transferring(Transfer),
    /// Holds a full copy (or found no peer).
    Ready,
}

/// A received snapshot chunk.
pub(super) struct Chunk {
    pub(super) cache: String,
    pub(super) cursor: u64,
    pub(super) records: Vec<Record>,
    pub(super) next: Option<u64>,
    /// The donor's clock when it served the chunk.
    pub(super) as_of: u64,
    pub(super) horizon: Version,
}

/// A snapshot chunk served, kept to be resent under the same wire message id.
#[derive(Debug)]
pub(super) struct Served {
    /// (requester, cache, cursor).
    key: (NodeId, String, u64),
    /// Wire message id.
    id: u64,
    payload: Arc<[u8]>,
    /// The fragment the next partial send starts at.
    next: u16,
}

impl Endpoint {
    /// A peer offered its caches: a node still waiting to join copies them from it.
    pub(super) fn maybe_start_transfer(
        &mut self,
        now: Instant,
        from: NodeId,
        caches: Vec<String>,
        app: &dyn AppState,
    ) {
        if !matches!(self.join, JoinState::Waiting) || caches.is_empty() {
            return;
        }
        let mut pending = BTreeMap::new();
        for cache in caches {
            let mut starts = app.snapshot_starts(&cache);
            starts.sort_unstable();
            starts.dedup();
            if starts.first() != Some(&0) {
                starts.insert(0, 0); // the split must cover the whole cache
            }
            starts.truncate(MAX_SNAPSHOT_STREAMS);
            let ends = starts.iter().skip(1).copied().chain([u64::MAX]);
            for (start, end) in starts.iter().copied().zip(ends) {
                let req = self.snapshot_req(from, cache.clone(), start, u64::MAX);
                self.send_msg(&req);
                let stream = Stream {
                    cursor: start,
                    end,
                    until: u64::MAX,
                };
                pending.insert((cache.clone(), start), stream);
            }
        }
        self.join = JoinState::Transferring(Transfer {
            donor: from,
            pending,
            horizons: BTreeMap::new(),
        });
        self.timers.set(Timer::Join, now + self.transfer_timeout());
    }

    /// How long a joiner waits for a chunk before asking again (the donor resends it under
    /// the same message id, so partial reassemblies complete).
    pub(super) fn transfer_timeout(&self) -> Duration {
        (self.cfg.tail_delay * TRANSFER_RETRY_FACTOR).min(self.cfg.heartbeat)
    }

    /// A joiner asks for the chunk of `cache` at `cursor`: cut to what its answer credit
    /// pays (at least one record, however large), remembered, and sent as far as the credit
    /// pays (see [`Endpoint::send_served`]). Asked again, the same chunk is sent on under the
    /// same message id, so fragments the joiner already holds still count.
    pub(super) fn on_snapshot_req(
        &mut self,
        now: Instant,
        from: NodeId,
        (cache, cursor, until): (String, u64, u64),
        app: &mut dyn AppState,
    ) {
        let key = (from, cache.clone(), cursor);
        if let Some(i) = self.served.iter().position(|s| s.key == key) {
            self.send_served(now, i);
            return;
        }
        // What this requester may be sent, less room for the framing.
        let may = self.budget.available(now, from).saturating_sub(256) as usize;
        let budget = self.cfg.snapshot_chunk.min(may);
        if budget < 64 {
            self.drops.record(DropReason::AnswerBudget);
            return;
        }
        let as_of = app.clock();
        let (records, next) = app.snapshot_chunk(&cache, cursor, budget, until);
        let floor = app.clear_floor(&cache);
        let horizon = app.horizon(&cache);
        let payload: Arc<[u8]> = Msg::SnapshotChunk {
            to: from,
            cache,
            cursor,
            records,
            next,
            as_of,
            floor,
            horizon,
        }
        .encode()
        .into();
        let id = match self.wire.begin_message(payload.len(), None) {
            Ok((id, _)) => id,
            Err(e) => {
                tracing::warn!(error = %e, len = payload.len(), "snapshot chunk not sent");
                self.drops.record(DropReason::Unsendable);
                return;
            }
        };
        self.metrics.snapshot_chunks_served += 1;
        if self.served.len() >= SERVED_CHUNKS_KEPT {
            self.served.pop_front();
        }
        self.served.push_back(Served {
            key,
            id,
            payload,
            next: 0,
        });
        self.send_served(now, self.served.len() - 1);
    }

    /// Sends served chunk `i` as far as its requester's answer credit pays: whole if it
    /// can; else as many of its fragments as it pays, going on where the last partial send
    /// stopped (wrapping around). A record larger than what one request earns thus crosses a
    /// lossy network a few fragments per request, every fragment keeping the joiner's
    /// reassembly alive, instead of waiting for a whole resend's worth of credit (by which time
    /// the joiner may have expired the fragments it held). Nothing is sent if not even one
    /// fragment is paid: the credit grows with the next request.
    fn send_served(&mut self, now: Instant, i: usize) {
        let Some(s) = self.served.get(i) else {
            return;
        };
        let (to, id, payload, start) = (s.key.0, s.id, s.payload.clone(), s.next);
        let whole = self.wire_size(payload.len());
        let available = self.budget.available(now, to) as usize;
        if available >= whole {
            if self.pay(now, to, whole) {
                self.queue(payload, Some(id), Destination::Node(to));
            }
            return;
        }
        let chunk = self.wire.chunk_size().max(1);
        let Some(count) = crate::fragment::fragment_count(payload.len(), chunk) else {
            return;
        };
        let (count, len) = (usize::from(count), payload.len());
        let start = if usize::from(start) >= count {
            0
        } else {
            usize::from(start)
        };
        // Fragment `k` on the wire: its bytes, header and tag.
        let framing = self.wire_size(0);
        let frag = |k: usize| len.min(k * chunk + chunk).saturating_sub(k * chunk) + framing;
        let (mut sent, mut bytes) = (0usize, 0usize);
        while sent < count {
            let w = frag((start + sent) % count);
            if bytes + w > available {
                break;
            }
            bytes += w;
            sent += 1;
        }
        if sent == 0 || !self.pay(now, to, bytes) {
            self.drops.record(DropReason::AnswerBudget);
            return;
        }
        // One or two runs of fragments: [start, end) and, wrapped around, [0, rest).
        let end = (start + sent).min(count);
        let rest = sent - (end - start);
        for (first, last) in [(start, end), (0, rest)] {
            if first < last {
                let bytes = (first..last).map(frag).sum();
                self.transmit_bytes += bytes;
                // Fragment indices fit u16: `count` came from one.
                self.transmits.push_back(Outgoing {
                    to: Destination::Node(to),
                    payload: payload.clone(),
                    id,
                    next: first as u16,
                    end: last as u16,
                    count: count as u16,
                    bytes,
                });
            }
        }
        let next = if rest > 0 { rest } else { end % count };
        if let Some(s) = self.served.get_mut(i) {
            s.next = next as u16;
        }
    }

    /// A chunk arrived: versions from the future are refused, a newer clear floor is applied,
    /// and the records go to [`Endpoint::on_snapshot_chunk`].
    pub(super) fn on_snapshot_chunk_msg(
        &mut self,
        now: Instant,
        from: NodeId,
        msg: Msg,
        app: &mut dyn AppState,
    ) {
        let Msg::SnapshotChunk {
            cache,
            cursor,
            mut records,
            next,
            as_of,
            floor,
            horizon,
            ..
        } = msg
        else {
            return;
        };
        if self.refuse_ahead(now, &floor, from) || self.refuse_ahead(now, &horizon, from) {
            return;
        }
        if floor > app.clear_floor(&cache) {
            app.apply_clear(&cache, floor, from);
        }
        records.retain(|r| !self.refuse_ahead(now, &r.version, from));
        let chunk = Chunk {
            cache,
            cursor,
            records,
            next,
            as_of,
            horizon,
        };
        self.on_snapshot_chunk(now, from, chunk, app)
    }

    pub(super) fn on_snapshot_chunk(
        &mut self,
        now: Instant,
        from: NodeId,
        chunk: Chunk,
        app: &mut dyn AppState,
    ) {
        let Chunk {
            cache,
            cursor,
            records,
            next,
            as_of,
            horizon,
        } = chunk;
        for rec in &records {
            if app.apply(&cache, rec.view(), from) == Applied::Changed {
                self.metrics.snapshot_records_applied += 1;
            }
        }
        let timeout = self.transfer_timeout();
        let JoinState::Transferring(tr) = &mut self.join else {
            return;
        };
        if tr.donor != from {
            return;
        }
        // The stream of this cache that asked for this cursor (a chunk asked again and
        // answered twice is taken once).
        let Some((start, stream)) = tr
            .pending
            .range((cache.clone(), 0)..=(cache.clone(), u64::MAX))
            .find(|(_, s)| s.cursor == cursor)
            .map(|((_, start), s)| (*start, *s))
        else {
            return;
        };
        let h = tr.horizons.entry(cache.clone()).or_insert(horizon);
        *h = (*h).max(horizon);
        match next.filter(|&n| n < stream.end) {
            Some(n) => {
                // The rest of the stream goes up to the donor's clock at its first chunk.
                let until = stream.until.min(as_of);
                let stream = Stream {
                    cursor: n,
                    until,
                    ..stream
                };
                tr.pending.insert((cache.clone(), start), stream);
                self.timers.set(Timer::Join, now + timeout);
                let req = self.snapshot_req(from, cache, n, until);
                self.send_msg(&req);
            }
            None => {
                tr.pending.remove(&(cache.clone(), start));
                let rest = tr
                    .pending
                    .range((cache.clone(), 0)..=(cache.clone(), u64::MAX))
                    .next()
                    .is_some();
                if !rest {
                    // The copy is complete: it forgot what the donor forgot. (Adopted only
                    // now, so that the donor's own records older than its horizon are not
                    // refused.)
                    let horizon = tr.horizons.remove(&cache).unwrap_or(horizon);
                    app.raise_horizon(&cache, horizon);
                }
                if tr.pending.is_empty() {
                    self.metrics.state_transfers += 1;
                    self.become_ready(now);
                }
            }
        }
    }

    pub(super) fn become_ready(&mut self, now: Instant) {
        self.join = JoinState::Ready;
        self.timers.stop(Timer::Join);
        self.events.push_back(Event::Member(MemberEvent::Ready));
        // Close any race between the snapshot cursor and live changes.
        self.timers
            .bring_forward(Timer::Pulse, now + READY_PULSE_DELAY);
    }

    /// The join deadline passed: stop waiting for a peer, or ask the donor again.
    pub(super) fn join_timeout(&mut self, now: Instant) {
        match &self.join {
            JoinState::Waiting => self.become_ready(now),
            JoinState::Transferring(tr) => {
                // The donor stalled: ask again from where we are, or give up if it is gone.
                if self.peers.contains_key(&tr.donor) {
                    let donor = tr.donor;
                    let asks: Vec<(String, u64, u64)> = tr
                        .pending
                        .iter()
                        .map(|((c, _), s)| (c.clone(), s.cursor, s.until))
                        .collect();
                    self.timers.set(Timer::Join, now + self.transfer_timeout());
                    for (cache, cursor, until) in asks {
                        let req = self.snapshot_req(donor, cache, cursor, until);
                        self.send_msg(&req);
                    }
                } else {
                    // Anti-entropy with the remaining peers completes the copy.
                    self.become_ready(now);
                }
            }
            JoinState::Ready => self.timers.stop(Timer::Join),
        }
    }

    /// A snapshot request, padded to about one datagram so the donor's answer is paid for.
    pub(super) fn snapshot_req(&self, to: NodeId, cache: String, cursor: u64, until: u64) -> Msg {
        let pad = self
            .wire
            .chunk_size()
            .saturating_sub(cache.len() + 64)
            .min(1 << 16);
        Msg::SnapshotReq {
            to,
            cache,
            cursor,
            until,
            pad: serde_bytes::ByteBuf::from(vec![0u8; pad]),
        }
    }
}

#[cfg(test)]
// Tests start their explicit time from the real clock (proto/clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::super::testing::*;
    use super::*;

    /// A donor ready alone with 200 records of 300 bytes in cache "c", written at `ms`, and a
    /// joiner with the application `app_j`, started once the donor is ready; and that time.
    fn donor_and_joiner(ms: Option<u64>, mut app_j: MapApp) -> (Pair, Instant) {
        let t0 = Instant::now();
        let mut donor = endpoint(1, t0);
        let mut app_d = MapApp::default();
        let ms = ms.unwrap_or(app_d.wall - 1);
        for i in 0..200u32 {
            app_d.put("c", put_at(&i.to_be_bytes(), &[7; 300], ms, donor.id()));
        }
        donor.handle_timeout(t0, &mut app_d);
        drain(&mut donor, t0);
        let t1 = t0 + donor.cfg.join_wait; // the donor is ready alone
        donor.handle_timeout(t1, &mut app_d);
        assert!(donor.is_ready());
        let mut joiner = endpoint(2, t1);
        joiner.handle_timeout(t1, &mut app_j);
        let pair = Pair {
            donor,
            app_d,
            joiner,
            app_j,
        };
        (pair, t1)
    }

    struct Pair {
        donor: Endpoint,
        app_d: MapApp,
        joiner: Endpoint,
        app_j: MapApp,
    }

    impl Pair {
        /// Exchanges their datagrams 1 ms apart until the joiner is ready (at most 200 rounds);
        /// `between` sees both after the joiner's datagrams reached the donor.
        fn until_ready(&mut self, mut now: Instant, mut between: impl FnMut(&mut Pair)) {
            for _ in 0..200 {
                deliver(&mut self.joiner, &mut self.donor, &mut self.app_d, now);
                between(self);
                deliver(&mut self.donor, &mut self.joiner, &mut self.app_j, now);
                if self.joiner.is_ready() {
                    return;
                }
                now += Duration::from_millis(1);
                self.joiner.handle_timeout(now, &mut self.app_j);
                self.donor.handle_timeout(now, &mut self.app_d);
            }
        }
    }

    #[test]
    fn a_joiner_copies_its_donors_caches_then_is_ready() {
        let (mut p, t1) = donor_and_joiner(None, MapApp::default());
        p.until_ready(t1, |_| {});
        assert!(p.joiner.is_ready());
        assert_eq!(p.app_j.caches, p.app_d.caches);
        assert_eq!(p.joiner.metrics().state_transfers, 1);
        assert!(
            p.donor.metrics().snapshot_chunks_served >= 2,
            "several chunks"
        );
        let ready = std::iter::from_fn(|| p.joiner.poll_event())
            .any(|e| e == Event::Member(MemberEvent::Ready));
        assert!(ready);
    }

    #[test]
    fn a_chunk_is_as_large_as_the_joiners_credit_pays_up_to_the_chunk_budget() {
        // 200 records of 300 bytes: ~60 KB, more than one chunk budget (32 KB).
        let (mut p, t1) = donor_and_joiner(None, MapApp::default());
        // A joiner whose traffic earned it credit for more than a chunk.
        p.donor.budget.earn(t1, p.joiner.id(), 1 << 20, 1);
        let joiner = p.joiner.id();
        p.donor
            .on_snapshot_req(t1, joiner, ("c".into(), 0, u64::MAX), &mut p.app_d);
        let sent: usize = drain(&mut p.donor, t1).iter().map(Vec::len).sum();
        // One chunk of about the chunk budget, not of a control list's few datagrams: a copy
        // under flat-out writers takes a round trip through a busy donor per chunk (a node
        // joining four writing flat out was ready after 7.2–9.6 s with chunks of a list's
        // budget, 2.3–4.6 s with these).
        assert_eq!(p.donor.metrics().snapshot_chunks_served, 1);
        let chunk = p.donor.cfg.snapshot_chunk;
        assert!(
            sent > p.donor.list_budget() * 2 && sent <= chunk + chunk / 4,
            "{sent} bytes sent (chunk budget {chunk})"
        );
    }

    #[test]
    fn a_joiner_copies_in_parallel_streams_that_cover_the_whole_cache() {
        // Streams from 0, 50 and 120 (and one past the end, and unsorted): all asked at once,
        // each copied up to the next one's start, together every record once or more.
        let app_j = MapApp {
            starts: vec![120, 0, 50, 500],
            ..MapApp::default()
        };
        let (mut p, t1) = donor_and_joiner(None, app_j);
        let mut most_in_flight = 0;
        p.until_ready(t1, |p| {
            if let JoinState::Transferring(tr) = &p.joiner.join {
                most_in_flight = most_in_flight.max(tr.pending.len());
            }
        });
        assert!(p.joiner.is_ready());
        assert_eq!(p.app_j.caches, p.app_d.caches);
        assert_eq!(most_in_flight, 4, "the four streams ran at once");
        assert_eq!(p.joiner.metrics().state_transfers, 1);
    }

    #[test]
    fn a_copy_goes_up_to_the_donors_clock_at_its_first_chunk() {
        // Records the donor holds newer than its clock when it served the first chunk were
        // written (or reached it) while the joiner was listening: they are the stream's, and
        // the copy does not chase them.
        let old_ms = MapApp::default().wall - 10;
        let (mut p, t1) = donor_and_joiner(Some(old_ms), MapApp::default());
        let id = p.donor.id();
        p.app_d.clock = version_at(old_ms, id).hlc;
        let mut written = false;
        p.until_ready(t1, |p| {
            if !written && p.donor.metrics().snapshot_chunks_served == 1 {
                // Writes after the first chunk: new keys, and a newer value of a key not yet
                // copied.
                written = true;
                for i in 1000..1050u32 {
                    p.app_d
                        .put("c", put_at(&i.to_be_bytes(), &[8; 300], old_ms + 5, id));
                }
                p.app_d.put(
                    "c",
                    put_at(&199u32.to_be_bytes(), &[9; 300], old_ms + 5, id),
                );
                p.app_d.clock = version_at(old_ms + 5, id).hlc;
            }
        });
        assert!(written && p.joiner.is_ready());
        assert!(
            p.donor.metrics().snapshot_chunks_served >= 2,
            "several chunks"
        );
        let copied = &p.app_j.caches["c"];
        assert_eq!(
            copied.len(),
            199,
            "the 199 keys not rewritten, nothing newer"
        );
        assert!(
            copied
                .values()
                .all(|r| r.version.hlc <= p.app_d.clock - (5 << 16))
        );
    }

    /// Moves `from`'s datagrams at `now` into `to`, dropping about 30 % of them (xorshift).
    fn deliver_lossy(
        from: &mut Endpoint,
        to: &mut Endpoint,
        app: &mut MapApp,
        now: Instant,
        rng: &mut u64,
    ) {
        for d in drain(from, now) {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            if *rng % 10 >= 3 {
                to.handle_datagram(now, &d, app);
            }
        }
    }

    #[test]
    fn a_record_larger_than_a_requests_credit_crosses_a_lossy_link() {
        // Plaintext (no answer pool), MTU 576, 30 % loss both ways, partial reassemblies
        // expiring after 1 s. Each request earns ~1.6 KB of answer credit, the 40 KB record
        // takes ~85 fragments: a whole resend needs ~28 requests' credit (more than 1 s), so
        // resent whole it would never arrive. Sent a few fragments per request, going round
        // the record, it does.
        let t0 = Instant::now();
        let node = |id: u64, at: Instant| {
            let mut cfg = config();
            cfg.wire.mtu = 576;
            cfg.wire.reassembly_timeout = Duration::from_secs(1);
            Endpoint::new(cfg, NodeId(id), at)
        };
        let mut donor = node(1, t0);
        let mut app_d = MapApp::default();
        app_d.put(
            "c",
            put_at(b"big", &[5; 40_000], app_d.wall - 1, donor.id()),
        );
        for i in 0..20u32 {
            app_d.put(
                "c",
                put_at(&i.to_be_bytes(), &[7; 100], app_d.wall - 1, donor.id()),
            );
        }
        donor.handle_timeout(t0, &mut app_d);
        drain(&mut donor, t0);
        let t1 = t0 + donor.cfg.join_wait;
        donor.handle_timeout(t1, &mut app_d);
        assert!(donor.is_ready());
        let mut joiner = node(2, t1);
        let mut app_j = MapApp::default();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut now = t1;
        while !joiner.is_ready() && now < t1 + Duration::from_secs(30) {
            joiner.handle_timeout(now, &mut app_j);
            donor.handle_timeout(now, &mut app_d);
            if matches!(joiner.join, JoinState::Waiting) {
                // The introductions get through (a joiner finding no peer is ready alone).
                deliver(&mut joiner, &mut donor, &mut app_d, now);
                deliver(&mut donor, &mut joiner, &mut app_j, now);
            } else {
                deliver_lossy(&mut joiner, &mut donor, &mut app_d, now, &mut rng);
                deliver_lossy(&mut donor, &mut joiner, &mut app_j, now, &mut rng);
            }
            now += Duration::from_millis(5);
        }
        assert!(joiner.is_ready(), "not ready after {:?}", now - t1);
        assert_eq!(joiner.metrics().state_transfers, 1, "ready by a full copy");
        assert_eq!(app_j.caches, app_d.caches);
    }

    #[test]
    fn a_joiner_alone_is_ready_after_join_wait() {
        let t0 = Instant::now();
        let mut ep = endpoint(1, t0);
        let mut app = MapApp::default();
        ep.handle_timeout(t0, &mut app);
        assert!(!ep.is_ready());
        let until = t0 + ep.cfg.join_wait;
        assert_eq!(ep.timers.get(Timer::Join), Some(until));
        ep.handle_timeout(until, &mut app);
        assert!(ep.is_ready());
        assert_eq!(ep.timers.get(Timer::Join), None);
    }

    #[test]
    fn a_stalled_donor_is_asked_again() {
        let t0 = Instant::now();
        let mut ep = endpoint(2, t0);
        let mut app = MapApp::default();
        ep.handle_timeout(t0, &mut app);
        drain(&mut ep, t0);
        ep.peers.insert(NodeId(1), peer_heard_at(t0));
        ep.maybe_start_transfer(t0, NodeId(1), vec!["c".into()], &app);
        assert_eq!(drain(&mut ep, t0).len(), 1, "the first request");
        let retry = ep.timers.get(Timer::Join).expect("a retry deadline");
        assert_eq!(retry, t0 + ep.transfer_timeout());
        ep.handle_timeout(retry, &mut app);
        let again = drain(&mut ep, retry);
        assert!(!again.is_empty(), "asked again");
        assert!(!ep.is_ready());
    }
}
