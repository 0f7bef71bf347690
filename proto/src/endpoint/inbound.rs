//! Received datagrams: opening them, dispatching each message to the part of the core that
//! handles it, and the peers' reliable streams (ordering, duplicates, gaps).

use super::*;
use crate::message::{Changes, ItemRef, Msg};
use crate::record::RecordRef;
use crate::reliability::Arrival;
use crate::sync::Applied;

impl Endpoint {
    /// Handles one received datagram. Returns the sender when the datagram was authentic (it
    /// opened with the cluster's keys, or passed the crc in plaintext, and was no replay), even
    /// if it only completed part of a message; `Some(own id)` for this node's own authentic
    /// echo; `None` when it was dropped. A unicast driver learns members' addresses from this.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
        app: &mut dyn AppState,
    ) -> Option<NodeId> {
        self.set_wall(now, app.wall_ms());
        self.credit_stall(now);
        self.metrics.datagrams_received += 1;
        self.metrics.bytes_received += datagram.len() as u64;
        self.last_drop = None;
        let (from, payload) = match self.wire.decode(now, datagram) {
            Ok(Some(done)) => done,
            Ok(None) => {
                return crate::header::Header::decode(datagram)
                    .ok()
                    .map(|h| h.sender);
            }
            Err(DropReason::OwnEcho) if self.wire.is_own_echo(datagram) => {
                self.last_drop = Some(DropReason::OwnEcho);
                self.drops.record(DropReason::OwnEcho);
                return Some(self.me);
            }
            Err(reason) => {
                self.last_drop = Some(reason);
                self.drops.record(reason);
                tracing::trace!(reason = reason.as_str(), "datagram dropped");
                if let Some((sender, offset)) = self.wire.take_last_stale() {
                    self.warn_stale(now, sender, offset);
                }
                return None;
            }
        };
        // A message meant for another member (a group transport brings every member all of
        // them) is only proof of life: it is not decoded past its target (`Msg::peek_target`).
        if let Some(to) = Msg::peek_target(&payload)
            && to != self.me
        {
            if let Some(p) = self.peers.get_mut(&from) {
                p.last_seen = now;
            }
            return Some(from);
        }
        // The replicated changes (nearly all the traffic) are read in place: their items
        // borrow `payload`, nothing is copied per change.
        let decoded = if Changes::is_changes(&payload) {
            Changes::decode(&payload).map(Decoded::Changes)
        } else {
            Msg::decode(&payload).map(Decoded::Msg)
        };
        let Some(decoded) = decoded else {
            self.metrics.malformed_messages += 1;
            self.drops.record(DropReason::Malformed);
            tracing::debug!(%from, len = payload.len(), "undecodable message dropped");
            return Some(from);
        };
        if self.left {
            return Some(from);
        }
        // Credit for answers: a message for this node alone (whatever the transport) can be
        // answered only here; one for everybody may be answered by every member.
        // (For one node alone, 3/4 of the bound: a margin for the framing estimate.)
        let size = self.wire_size(payload.len());
        let target = match &decoded {
            Decoded::Msg(msg) => msg.target(),
            Decoded::Changes(_) => None,
        };
        match target {
            Some(to) if to == self.me => self.budget.earn(now, from, size * 3 / 4, 1),
            Some(_) => {}
            None => self.budget.earn(now, from, size, self.peers.len() + 1),
        }
        if let Some(to) = target {
            if to != self.me {
                // Still proof of life.
                if let Some(p) = self.peers.get_mut(&from) {
                    p.last_seen = now;
                }
                return Some(from);
            }
        }
        match decoded {
            Decoded::Msg(msg) => self.handle_msg(now, from, msg, app),
            Decoded::Changes(changes) => self.handle_changes(now, from, &changes, app),
        }
        self.refresh_nak_timer();
        Some(from)
    }

    /// A `Data` or `Repair` message from `from`, read in place.
    fn handle_changes(
        &mut self,
        now: Instant,
        from: NodeId,
        changes: &Changes<'_>,
        app: &mut dyn AppState,
    ) {
        // What `touch_peer` reads of a data message is its sequence number (an empty item
        // list does not allocate).
        let head = match changes.seq {
            Some(seq) => Msg::Data {
                seq,
                items: Vec::new(),
            },
            None => Msg::Repair { items: Vec::new() },
        };
        if !self.touch_peer(now, from, &head) {
            return;
        }
        match changes.seq {
            Some(seq) => self.on_data(now, from, seq, &changes.items, app),
            None => self.apply_items(now, &changes.items, from, app, true),
        }
    }

    /// Dispatches one message from `from` (already opened, for this node or for everyone).
    fn handle_msg(&mut self, now: Instant, from: NodeId, msg: Msg, app: &mut dyn AppState) {
        if matches!(msg, Msg::Leave) {
            self.on_leave(from);
            return;
        }
        if !self.touch_peer(now, from, &msg) {
            return;
        }
        match msg {
            // `handle_datagram` reads these in place (`handle_changes`); owned ones are applied
            // the same way.
            Msg::Data { seq, items } => {
                let items: Vec<ItemRef<'_>> = items.iter().map(Item::view).collect();
                self.on_data(now, from, seq, &items, app)
            }
            Msg::Repair { items } => {
                let items: Vec<ItemRef<'_>> = items.iter().map(Item::view).collect();
                self.apply_items(now, &items, from, app, true)
            }
            hello @ Msg::Hello { .. } => self.on_hello(now, from, hello, app),
            Msg::Ack { acks } => self.on_ack_list(from, &acks),
            Msg::Tail { seq_hi } => {
                self.learn_seq_hi(now, from, seq_hi);
                self.on_tail_probe(from, seq_hi);
            }
            Msg::Leave => {}
            Msg::Nak { ranges, .. } => self.on_nak(from, &ranges),
            Msg::Gone { ranges, .. } => {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.recv.give_up(&ranges);
                }
                self.ack_if_held_back(from, 0);
                // What was lost must come back through anti-entropy: pulse soon.
                self.pulse_soon(now, GONE_PULSE_DELAY);
            }
            Msg::Digest { caches } => self.on_digest(now, from, caches, app),
            Msg::Buckets {
                cache,
                parts,
                keys,
                horizon,
                ..
            } => {
                if !self.refuse_ahead(now, &horizon, from) {
                    self.on_buckets(now, from, &cache, &parts, keys, horizon, app)
                }
            }
            Msg::Sums { cache, buckets, .. } => self.on_sums(now, from, &cache, buckets, app),
            Msg::Pull { cache, keys, .. } => self.on_pull(now, from, &cache, &keys, app),
            Msg::SnapshotReq {
                cache,
                cursor,
                until,
                ..
            } => self.on_snapshot_req(now, from, (cache, cursor, until), app),
            chunk @ Msg::SnapshotChunk { .. } => self.on_snapshot_chunk_msg(now, from, chunk, app),
            Msg::Query { id, query } => self.on_query(now, from, id, &query, app),
            Msg::Reply { id, body, .. } => self.events.push_back(Event::Reply { id, from, body }),
            Msg::Addresses { addrs } => self.on_addresses(from, addrs),
        }
    }

    /// A data message on `from`'s reliable stream: applied at once if new (in any order:
    /// versions decide), counted if a duplicate; acknowledged every `ack_every` messages, and
    /// at once when it fills a gap that held the cumulative ack back (see
    /// [`Endpoint::ack_if_held_back`]).
    fn on_data(
        &mut self,
        now: Instant,
        from: NodeId,
        seq: u64,
        items: &[ItemRef<'_>],
        app: &mut dyn AppState,
    ) {
        self.last_data_rx = Some(now);
        self.settle_stream(from, super::membership::stream_base(seq));
        self.bound_gaps(now, from, seq.saturating_sub(1));
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        let before = p.recv.contiguous();
        match p.recv.receive(now, seq, &self.cfg.nak) {
            Arrival::Duplicate => {
                self.metrics.duplicates += 1;
                self.drops.record(DropReason::DuplicateMessage);
            }
            Arrival::New => {
                p.received_since_ack += 1;
                // A gap filled: the cumulative ack moved past messages held above it.
                let filled = p.recv.contiguous() > before.saturating_add(1);
                let ack_now = p.received_since_ack >= self.ack_every();
                self.apply_items(now, items, from, app, false);
                if ack_now {
                    self.send_ack();
                } else if filled {
                    self.ack_if_held_back(from, 0);
                }
            }
        }
    }

    /// `from` announced that its stream reached `seq_hi` (a heartbeat or a tail): gaps before
    /// it are NAKed.
    pub(super) fn learn_seq_hi(&mut self, now: Instant, from: NodeId, seq_hi: u64) {
        if self.settle_stream(from, seq_hi) {
            return;
        }
        self.bound_gaps(now, from, seq_hi);
        if let Some(p) = self.peers.get_mut(&from) {
            p.recv.learn_hi(now, seq_hi, &self.cfg.nak);
        }
        self.ack_if_held_back(from, seq_hi);
    }

    /// A `Tail` announcing the same number more often than [`TAIL_ANNOUNCEMENTS`] in a row comes
    /// from a sender whose window is shut (`pack_data` repeats it): if this node holds its
    /// stream whole up to there, it acknowledges again, as its last ack may have been lost.
    fn on_tail_probe(&mut self, from: NodeId, seq_hi: u64) {
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        p.tails = match p.tails {
            (hi, n) if hi == seq_hi => (hi, n.saturating_add(1)),
            _ => (seq_hi, 1),
        };
        if p.tails.1 > u32::from(TAIL_ANNOUNCEMENTS) && p.recv.contiguous() >= seq_hi {
            self.send_ack();
        }
    }

    /// Sends an `Ack` at once if this node holds `from`'s stream whole up to at least `upto`
    /// and its last cumulative ack of it is half a window or more behind: `from`'s
    /// flow-control window may have shut on that ack. Acks otherwise go out every `ack_every`
    /// messages received; after a gap was filled (or given up), or an `Ack` lost, a sender
    /// whose window had shut on the old ack sent nothing more, so none came until the next
    /// heartbeat. With 5 % of the datagrams lost and writers flat out, three processes sent
    /// next to nothing for up to a whole heartbeat (1 s by default). Called when a data
    /// message fills a gap, on a `Gone`, and on a `Tail` or heartbeat. Half a window: never
    /// while data flows freely, so acks stay one per `ack_every` messages. (An ack that was
    /// sent and lost is repeated by [`Endpoint::on_tail_probe`].)
    pub(super) fn ack_if_held_back(&mut self, from: NodeId, upto: u64) {
        if let Some(p) = self.peers.get(&from) {
            let held = p.recv.contiguous();
            if held >= upto && held.saturating_sub(p.ack_sent) >= (self.window() / 2).max(1) {
                self.send_ack();
            }
        }
    }

    /// Before learning that `from` has sent up to `seq_hi`: if that would take the gaps
    /// tracked over all peers past [`MAX_TRACKED_GAPS`], gives the whole span up instead (the
    /// stream jumps to `seq_hi`; anti-entropy repairs what was in it) and counts `gap_budget`.
    pub(super) fn bound_gaps(&mut self, now: Instant, from: NodeId, seq_hi: u64) {
        let Some(p) = self.peers.get(&from) else {
            return;
        };
        // A stream opens at most MAX_AHEAD gaps at once (it abandons beyond that).
        let opens = seq_hi
            .saturating_sub(p.recv.seq_hi())
            .min(crate::reliability::MAX_AHEAD);
        if opens <= 1 {
            return;
        }
        let tracked: u64 = self.peers.values().map(|p| p.recv.missing()).sum();
        if tracked.saturating_add(opens) <= MAX_TRACKED_GAPS {
            return;
        }
        self.drops.record(DropReason::GapBudget);
        if let Some(p) = self.peers.get_mut(&from) {
            // O(1) jump (walking the span would cost the CPU the budget is meant to save).
            let old = std::mem::replace(&mut p.recv, RecvStream::new(seq_hi));
            p.recv.gaps_detected = old.gaps_detected;
            p.recv.abandoned = old
                .abandoned
                .saturating_add(seq_hi.saturating_sub(old.contiguous()));
        }
        self.pulse_soon(now, NEW_PEER_PULSE_DELAY);
    }

    /// Applies a message's items in order; each run of consecutive records of one cache goes
    /// to the application in one [`AppState::apply_run`] call.
    pub(super) fn apply_items(
        &mut self,
        now: Instant,
        items: &[ItemRef<'_>],
        from: NodeId,
        app: &mut dyn AppState,
        repair: bool,
    ) {
        let mut run: Vec<RecordRef<'_>> = Vec::new();
        let mut run_cache = "";
        for item in items {
            match *item {
                ItemRef::Rec { cache, rec } => {
                    if self.refuse_ahead(now, &rec.version, from) {
                        continue;
                    }
                    if cache != run_cache {
                        self.apply_run(run_cache, &run, from, app, repair);
                        run.clear();
                        run_cache = cache;
                    }
                    if run.is_empty() {
                        run.reserve(items.len());
                    }
                    run.push(rec);
                }
                ItemRef::Clear { cache, version } => {
                    self.apply_run(run_cache, &run, from, app, repair);
                    run.clear();
                    if !self.refuse_ahead(now, &version, from) {
                        app.apply_clear(cache, version, from);
                    }
                }
                ItemRef::Loading { cache, key } => {
                    self.apply_run(run_cache, &run, from, app, repair);
                    run.clear();
                    app.peer_loading(cache, key, from);
                }
            }
        }
        self.apply_run(run_cache, &run, from, app, repair);
    }

    /// Applies one run of records of `cache` (nothing if empty) and counts the outcomes.
    fn apply_run(
        &mut self,
        cache: &str,
        run: &[RecordRef<'_>],
        from: NodeId,
        app: &mut dyn AppState,
        repair: bool,
    ) {
        if run.is_empty() {
            return;
        }
        let (metrics, drops) = (&mut self.metrics, &mut self.drops);
        app.apply_run(cache, run, from, &mut |applied| match applied {
            Applied::Changed => {
                metrics.changes_applied += 1;
                if repair {
                    metrics.snapshot_records_applied += 1;
                }
            }
            Applied::Stale | Applied::Skipped => metrics.changes_stale += 1,
            Applied::BelowHorizon => {
                metrics.changes_stale += 1;
                drops.record(DropReason::BelowHorizon);
            }
            Applied::Undecodable => drops.record(DropReason::UndecodableRecord),
        });
    }
}

/// A message as `handle_datagram` decodes it: the changes in place, anything else owned.
enum Decoded<'a> {
    Changes(Changes<'a>),
    Msg(Msg),
}

#[cfg(test)]
// Tests start their explicit time from the real clock (proto/clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::record::{Op, Record};

    #[test]
    fn a_published_change_is_applied_by_a_peer_and_a_replay_is_dropped() {
        let t0 = Instant::now();
        let (mut a, mut b, app_a, mut app_b) = joined_pair(t0);
        let rec = Record {
            key: b"k".to_vec().into(),
            version: version_at(app_a.wall, a.id()),
            op: Op::Put {
                value: b"v".to_vec().into(),
                ttl_ms: None,
            },
        };
        a.publish(
            t0,
            Item::Rec {
                cache: "c".into(),
                rec: rec.clone(),
            },
        );
        let sent = drain(&mut a, t0);
        assert_eq!(sent.len(), 1, "one change, one datagram");
        for d in &sent {
            b.handle_datagram(t0, d, &mut app_b);
        }
        assert_eq!(app_b.record("c", b"k"), Some(rec));
        assert_eq!(b.metrics().changes_applied, 1);
        // The same datagram again is a replay at the wire.
        assert_eq!(b.handle_datagram(t0, &sent[0], &mut app_b), None);
        assert_eq!(b.last_drop(), Some(DropReason::Replay));
        assert!(
            app_a.record("c", b"k").is_none(),
            "the sender's state is its own business"
        );
    }

    #[test]
    fn runs_of_one_cache_are_applied_together_and_in_order_around_a_clear() {
        let t0 = Instant::now();
        let (mut a, mut b, app_a, mut app_b) = joined_pair(t0);
        let (wall, id) = (app_a.wall, a.id());
        let put = |key: &[u8], ms: u64| Record {
            key: key.to_vec().into(),
            version: version_at(wall + ms, id),
            op: Op::Put {
                value: b"v".to_vec().into(),
                ttl_ms: None,
            },
        };
        let items = [
            ("c", Some(put(b"k1", 1))),
            ("c", Some(put(b"k2", 2))),
            ("d", Some(put(b"k3", 3))),
            ("c", None), // a clear of c at +4
            ("c", Some(put(b"k4", 5))),
        ];
        for (cache, rec) in items {
            let item = match rec {
                Some(rec) => Item::Rec {
                    cache: cache.into(),
                    rec,
                },
                None => Item::Clear {
                    cache: cache.into(),
                    version: version_at(wall + 4, id),
                },
            };
            a.publish(t0, item);
        }
        let sent = drain(&mut a, t0);
        assert_eq!(sent.len(), 1, "one message");
        for d in &sent {
            b.handle_datagram(t0, d, &mut app_b);
        }
        let runs: Vec<(&str, usize)> = app_b.runs.iter().map(|(c, n)| (&c[..], *n)).collect();
        assert_eq!(runs, [("c", 2), ("d", 1), ("c", 1)]);
        // The clear came after k1 and k2 and before k4.
        assert!(app_b.record("c", b"k1").is_none());
        assert!(app_b.record("c", b"k2").is_none());
        assert_eq!(app_b.record("c", b"k4"), Some(put(b"k4", 5)));
        assert_eq!(app_b.record("d", b"k3"), Some(put(b"k3", 3)));
        assert_eq!(b.metrics().changes_applied, 4);
    }

    #[test]
    fn a_gap_is_naked_and_repaired_by_retransmission() {
        let t0 = Instant::now();
        let (mut a, mut b, mut app_a, mut app_b) = joined_pair(t0);
        let wall = app_a.wall;
        let mut lost = Vec::new();
        for (i, key) in [b"x", b"y"].iter().enumerate() {
            let version = version_at(wall + i as u64, a.id());
            let rec = Record {
                key: key.to_vec().into(),
                version,
                op: Op::Del,
            };
            a.publish(
                t0,
                Item::Rec {
                    cache: "c".into(),
                    rec,
                },
            );
            // Past the linger window: each change is its own data message.
            let t = t0 + a.cfg.linger * (i as u32 + 1) * 2;
            lost.push(drain(&mut a, t));
        }
        // The first message is lost; the second arrives and reveals the gap.
        for d in &lost[1] {
            b.handle_datagram(t0, d, &mut app_b);
        }
        assert_eq!(b.peers[&a.id()].recv.missing(), 1);
        let nak_at = b.poll_timeout().expect("a NAK is due");
        b.handle_timeout(nak_at, &mut app_b);
        assert!(b.metrics().retransmits_requested >= 1);
        deliver(&mut b, &mut a, &mut app_a, nak_at);
        assert_eq!(a.metrics().retransmits_served, 1);
        deliver(&mut a, &mut b, &mut app_b, nak_at);
        assert_eq!(b.peers[&a.id()].recv.missing(), 0);
        assert!(app_b.record("c", b"x").is_some());
    }
}
