//! What this node sends: local changes published onto its reliable stream (batched into data
//! messages, flow-controlled, kept for retransmission), the send queue that
//! [`Endpoint::poll_transmit`] writes out a datagram at a time, and retransmissions for NAKs.

use super::*;
use crate::message::Msg;
use crate::reliability::to_ranges;

/// A message waiting to be sent, written one datagram at a time by [`Endpoint::poll_transmit`].
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) to: Destination,
    pub(super) payload: Arc<[u8]>,
    /// Wire message id.
    pub(super) id: u64,
    /// Next fragment to write, of `count`; this entry writes the fragments before `end` (a
    /// resent snapshot chunk may be sent a window of fragments at a time).
    pub(super) next: u16,
    pub(super) end: u16,
    pub(super) count: u16,
    /// What this entry counts in `transmit_bytes`.
    pub(super) bytes: usize,
}

impl Endpoint {
    /// Queues a local change for replication; [`Endpoint::poll_transmit`] packs it into a
    /// data message. Never blocks: if the outbound queue is full the change is dropped,
    /// counted, and an anti-entropy pulse is scheduled so peers repair it.
    pub fn publish(&mut self, now: Instant, item: Item) {
        if self.left {
            return;
        }
        if self.outbox.len() >= self.cfg.queue_max {
            self.metrics.outbound_overflow += 1;
            self.timers
                .bring_forward(Timer::Pulse, now + OVERFLOW_PULSE_DELAY);
            return;
        }
        self.outbox_bytes += item.weight();
        self.outbox.push_back(item);
    }

    /// Packs queued changes into one data message (as many as fit a datagram) and queues it.
    /// Returns false if nothing was packed: nothing queued, the flow-control window is full,
    /// or the changes linger for more to join them (then [`Timer::Linger`] is set). `no_linger`
    /// packs lingering changes at once (leaving).
    pub(super) fn pack_data(&mut self, now: Instant, no_linger: bool) -> bool {
        if self.outbox.is_empty() {
            self.timers.stop(Timer::Linger);
            return false;
        }
        let chunk = self.wire.chunk_size().max(64);
        // Lingering only pays if another change like the newest would still fit: a change of
        // 1 KiB at MTU 1500 leaves no room for a second one, so it goes at once.
        let newest = self.outbox.back().map_or(0, Item::weight);
        if !no_linger && self.outbox_bytes + DATA_MSG_OVERHEAD + newest <= chunk {
            if let Some(due) = self.linger.until(now, self.cfg.linger) {
                self.timers.set(Timer::Linger, due);
                return false;
            }
        }
        self.timers.stop(Timer::Linger);
        if self.in_flight() >= self.window() {
            // Flow control: wait for acks (or for slow peers to be removed). The tail is
            // announced again while the window stays shut: a peer that holds everything but
            // whose last ack was lost acknowledges again (`on_tail_probe`).
            if self.timers.get(Timer::Tail).is_none() {
                self.timers
                    .set(Timer::Tail, now + self.cfg.tail_delay * TAIL_REPEAT_SPACING);
                self.tail_repeats = 1;
            }
            return false;
        }
        let mut items = Vec::new();
        let mut bytes = DATA_MSG_OVERHEAD;
        while let Some(item) = self.outbox.front() {
            let w = item.weight();
            if !items.is_empty() && bytes + w > chunk {
                break;
            }
            bytes += w;
            self.outbox_bytes = self.outbox_bytes.saturating_sub(w);
            items.extend(self.outbox.pop_front());
            if bytes >= chunk {
                break;
            }
        }
        self.metrics.changes_sent += items.len() as u64;
        self.coalesce.taken(items.len());
        // A lone change that left room for another like it: the linger applied to it.
        let shareable = items.len() == 1 && bytes + items[0].weight() <= chunk;
        if self
            .linger
            .sent(now, items.len(), shareable, self.cfg.linger)
        {
            self.metrics.lingered_alone += 1;
        }
        let seq = self.send.next_seq();
        let msg = Msg::Data { seq, items };
        let payload: Arc<[u8]> = msg.encode().into();
        if let Msg::Data { items, .. } = msg {
            self.spent.keep(items);
        }
        self.metrics.data_messages_sent += 1;
        if let Some(id) = self.queue(payload.clone(), None, Destination::Group) {
            if !self.peers.is_empty() {
                self.send.keep(seq, id, payload);
            }
        }
        self.timers.set(Timer::Tail, now + self.cfg.tail_delay);
        self.tail_repeats = TAIL_ANNOUNCEMENTS;
        true
    }

    /// Sends the newest records of keys whose changes could not be queued (the targeted repair
    /// after an overload), on the reliable stream, past the `queue_max` bound.
    pub fn repair(&mut self, now: Instant, items: Vec<Item>) {
        if !self.left && !items.is_empty() {
            self.advance_wall(now);
            self.send_repair(items);
        }
    }

    /// Repairs travel on the reliable stream like local changes (they are idempotent by
    /// version), so they get the same loss recovery.
    /// A record whose repair (at its version or newer) still waits in the outbox is not
    /// queued again.
    pub(super) fn send_repair(&mut self, items: Vec<Item>) {
        for item in items {
            if let Item::Rec { cache, rec } = &item {
                if !self
                    .coalesce
                    .queue_repair(cache, &rec.key, rec.version, self.outbox.len())
                {
                    self.metrics.repairs_coalesced += 1;
                    continue;
                }
            }
            self.metrics.ae_repairs += 1;
            self.outbox_bytes += item.weight();
            self.outbox.push_back(item);
        }
    }

    /// Announces that this node leaves; peers drop it at once. Changes still queued are
    /// packed first (as far as the flow-control window allows), so they go out before the
    /// announcement; nothing is accepted afterwards.
    pub fn leave(&mut self, now: Instant) {
        if !self.left {
            self.advance_wall(now);
            while self.pack_data(now, true) {}
            self.send_msg(&Msg::Leave);
            self.left = true;
        }
    }

    /// Writes the next datagram to send into `buf` (cleared first) and says where it goes;
    /// `None` when there is nothing to send now. Queued changes are packed into data messages
    /// here, as late as possible (so changes published meanwhile share datagrams), and each
    /// datagram is sealed only when asked for: call it until it returns `None` after every
    /// other call.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.advance_wall(now);
        if self.transmits.is_empty() && (self.left || !self.pack_data(now, false)) {
            return None;
        }
        let out = self.transmits.front_mut()?;
        let (destination, index, count) = (out.to, out.next, out.count);
        let written = self
            .wire
            .encode_fragment(&out.payload, out.id, index, count, buf);
        out.next += 1;
        if out.next >= out.end {
            let done = self.transmits.pop_front()?;
            self.transmit_bytes = self.transmit_bytes.saturating_sub(done.bytes);
        }
        if let Err(e) = written {
            // Only an exhausted packet counter fails here: the node must restart.
            tracing::warn!(error = %e, "datagram not sent");
            self.drops.record(DropReason::Unsendable);
            buf.clear();
            return self.poll_transmit(now, buf);
        }
        self.metrics.datagrams_sent += 1;
        self.metrics.bytes_sent += buf.len() as u64;
        Some(Transmit {
            destination,
            size: buf.len(),
        })
    }

    /// Sends an answer to `to` if its answer budget pays for it.
    pub(super) fn send_paid(&mut self, now: Instant, to: NodeId, msg: &Msg) -> bool {
        let payload = msg.encode();
        if !self.pay(now, to, self.wire_size(payload.len())) {
            return false;
        }
        self.queue(payload.into(), None, destination(msg));
        true
    }

    pub(super) fn send_msg(&mut self, msg: &Msg) -> Option<u64> {
        self.queue(msg.encode().into(), None, destination(msg))
    }

    /// Queues one message for `to` as wire message `id` (a new id if `None`); returns the id
    /// used. Its datagrams are sealed by [`Endpoint::poll_transmit`].
    pub(super) fn queue(
        &mut self,
        payload: Arc<[u8]>,
        id: Option<u64>,
        to: Destination,
    ) -> Option<u64> {
        match self.wire.begin_message(payload.len(), id) {
            Ok((id, count)) => {
                let bytes = self.wire_size(payload.len());
                self.transmit_bytes += bytes;
                self.transmits.push_back(Outgoing {
                    to,
                    payload,
                    id,
                    next: 0,
                    end: count,
                    count,
                    bytes,
                });
                Some(id)
            }
            Err(e) => {
                // Only oversized messages fail; caches refuse entries that could cause this.
                tracing::warn!(error = %e, len = payload.len(), "message not sent");
                self.drops.record(DropReason::Unsendable);
                None
            }
        }
    }

    pub(super) fn on_nak(&mut self, from: NodeId, ranges: &[(u64, u64)]) {
        let mut gone = Vec::new();
        // What is below the retransmit buffer is released (acknowledged by every live peer, or
        // evicted) and gone for good, however long the span: answered as whole ranges, with no
        // walk, so a peer that fell far behind (it was suspected, and the window ran on without
        // it) gives its gap up after one NAK. Walked 4,096 numbers per NAK, a 15,000-message gap
        // took four NAK rounds and their backoff, ~0.4-1 s, while its cumulative ack, stuck at
        // the gap, held every sender's window shut.
        let mut gone_ranges = Vec::new();
        let held_from = self
            .send
            .oldest()
            .unwrap_or_else(|| self.send.seq_hi().saturating_add(1));
        let mut budget = NAK_WORK_BUDGET; // bound the work one NAK can cause
        for &(a, b) in ranges {
            if a > b || b > self.send.seq_hi() {
                continue;
            }
            if a < held_from {
                gone_ranges.push((a, b.min(held_from - 1)));
            }
            for seq in a.max(held_from)..=b {
                if budget == 0 {
                    break;
                }
                budget -= 1;
                if self.transmit_bytes >= MAX_QUEUED_TRANSMIT_BYTES {
                    // Shed: the asker NAKs again after its backoff.
                    self.drops.record(DropReason::NakShed);
                    budget = 0;
                    break;
                }
                match self.send.get(seq).map(|(id, p)| (id, p.clone())) {
                    Some((id, payload)) => {
                        self.metrics.retransmits_served += 1;
                        // Same message id: fragments the receiver already holds still count.
                        // For the peer that asked (others missing it ask on their own).
                        self.queue(payload, Some(id), Destination::Node(from));
                    }
                    None => gone.push(seq),
                }
            }
        }
        if !gone.is_empty() || !gone_ranges.is_empty() {
            gone_ranges.extend(to_ranges(&gone));
            let count = gone_ranges
                .iter()
                .fold(0u64, |n, &(a, b)| n.saturating_add(b - a + 1));
            self.metrics.retransmits_gone = self.metrics.retransmits_gone.saturating_add(count);
            self.send_msg(&Msg::Gone {
                to: from,
                ranges: gone_ranges,
            });
        }
    }

    /// NAKs, one message per peer with gaps due.
    pub(super) fn send_due_naks(&mut self, now: Instant) {
        let mut naks = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            if p.recv.next_nak().is_some_and(|t| t <= now) {
                let ranges = p.recv.due_naks(now, &self.cfg.nak);
                if !ranges.is_empty() {
                    naks.push((*id, ranges));
                }
            }
        }
        for (to, ranges) in naks {
            self.metrics.retransmits_requested += ranges.len() as u64;
            self.send_msg(&Msg::Nak { to, ranges });
        }
    }
}

#[cfg(test)]
// Tests start their explicit time from the real clock (proto/clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn put(ep: &Endpoint, key: &[u8], value: &[u8]) -> Item {
        Item::Rec {
            cache: "c".into(),
            rec: put_at(key, value, MapApp::default().wall, ep.id()),
        }
    }

    #[test]
    fn changes_published_together_share_a_datagram_and_are_kept_for_retransmission() {
        let t0 = Instant::now();
        let (mut a, _b, _, _) = joined_pair(t0);
        for i in 0..10u8 {
            let item = put(&a, &[i], b"value");
            a.publish(t0, item);
        }
        assert_eq!(a.outbox_len(), 10, "nothing is packed before it is polled");
        let sent = drain(&mut a, t0);
        assert_eq!(sent.len(), 1);
        assert_eq!(a.outbox_len(), 0);
        assert_eq!(a.metrics().changes_sent, 10);
        assert_eq!(a.metrics().data_messages_sent, 1);
        assert_eq!(a.send.len(), 1, "kept until the peer acknowledges it");
        assert_eq!(a.in_flight(), 1);
        assert!(!a.is_quiet());
    }

    #[test]
    fn a_lone_change_right_after_a_data_message_lingers() {
        let t0 = Instant::now();
        let (mut a, _b, _, _) = joined_pair(t0);
        let item = put(&a, b"1", b"v");
        a.publish(t0, item);
        assert_eq!(
            drain(&mut a, t0).len(),
            1,
            "at low load a change leaves at once"
        );
        let item = put(&a, b"2", b"v");
        a.publish(t0, item);
        assert!(drain(&mut a, t0).is_empty(), "it waits for company");
        let due = t0 + a.cfg.linger;
        assert_eq!(a.timers.get(Timer::Linger), Some(due));
        assert!(a.poll_timeout().is_some_and(|t| t <= due));
        assert_eq!(drain(&mut a, due).len(), 1);
        assert_eq!(a.timers.get(Timer::Linger), None);
    }

    #[test]
    fn a_change_that_leaves_no_room_for_another_like_it_does_not_linger() {
        let t0 = Instant::now();
        let (mut a, _b, _, _) = joined_pair(t0);
        let big = vec![7u8; a.wire.chunk_size() * 2 / 3];
        let item = put(&a, b"1", &big);
        a.publish(t0, item);
        assert_eq!(drain(&mut a, t0).len(), 1);
        // Right after a data message, but a second change this size could not join it.
        let item = put(&a, b"2", &big);
        a.publish(t0, item);
        assert_eq!(drain(&mut a, t0).len(), 1, "sent at once");
        assert_eq!(a.timers.get(Timer::Linger), None);
        // A small change right after still waits for company.
        let item = put(&a, b"3", b"v");
        a.publish(t0, item);
        assert!(drain(&mut a, t0).is_empty());
    }

    #[test]
    fn a_node_streams_for_a_linger_after_each_data_message() {
        let t0 = Instant::now();
        let (mut a, _b, _, _) = joined_pair(t0);
        assert!(!a.is_streaming(t0), "nothing sent yet");
        let item = put(&a, b"1", b"v");
        a.publish(t0, item);
        assert_eq!(drain(&mut a, t0).len(), 1, "a lone change leaves at once");
        let linger = a.cfg.linger;
        assert!(a.is_streaming(t0 + linger / 2));
        assert!(!a.is_streaming(t0 + linger));
        // A change published while streaming lingers; one published after does not.
        let item = put(&a, b"2", b"v");
        a.publish(t0 + linger / 2, item);
        assert!(drain(&mut a, t0 + linger / 2).is_empty());
        assert_eq!(drain(&mut a, t0 + linger).len(), 1);
    }

    #[test]
    fn lingering_tells_until_when_and_how_many_bytes_a_change_would_wait() {
        let t0 = Instant::now();
        let (mut a, _b, _, _) = joined_pair(t0);
        assert_eq!(a.lingering(t0), None, "nothing sent: a change goes at once");
        let item = put(&a, b"1", b"v");
        a.publish(t0, item);
        assert_eq!(drain(&mut a, t0).len(), 1);
        let due = t0 + a.cfg.linger;
        let chunk = a.wire.chunk_size();
        let (until, room) = a.lingering(t0).expect("streaming");
        assert_eq!(until, due);
        assert_eq!(room, chunk - DATA_MSG_OVERHEAD);
        // A lingering change takes its bytes off the room.
        let item = put(&a, b"2", b"v");
        let w = item.weight();
        a.publish(t0, item);
        assert!(drain(&mut a, t0).is_empty());
        assert_eq!(a.lingering(t0), Some((due, room - w)));
        // A second one joins it; at the deadline they go together, and the next message
        // lingers from then.
        let item = put(&a, b"3", b"v");
        a.publish(t0, item);
        assert!(drain(&mut a, t0).is_empty());
        assert_eq!(drain(&mut a, due).len(), 1);
        assert_eq!(a.metrics().data_messages_sent, 2);
        assert_eq!(a.lingering(due).map(|(t, _)| t), Some(due + a.cfg.linger));
        assert_eq!(a.lingering(due + a.cfg.linger), None);
    }

    #[test]
    fn changes_that_waited_for_nothing_stop_the_next_ones_from_waiting() {
        // One write in flight at a time: each change comes after the previous one was seen,
        // so none ever has company.
        let t0 = Instant::now();
        let (mut a, _b, _, _) = joined_pair(t0);
        let item = put(&a, b"1", b"v");
        a.publish(t0, item);
        assert_eq!(drain(&mut a, t0).len(), 1);
        let mut due = t0;
        for i in 2..=3u8 {
            let t = due + a.cfg.linger / 10;
            let item = put(&a, &[i], b"v");
            a.publish(t, item);
            assert!(drain(&mut a, t).is_empty(), "change {i} waits for company");
            due += a.cfg.linger;
            assert_eq!(drain(&mut a, due).len(), 1, "and goes alone");
        }
        assert_eq!(a.metrics().lingered_alone, 2);
        // Twice in a row it waited for nothing: the next changes leave at once, however close.
        let mut t = due;
        for i in 4..10u8 {
            t += a.cfg.linger / 10;
            assert!(!a.is_streaming(t));
            let item = put(&a, &[i], b"v");
            a.publish(t, item);
            assert_eq!(drain(&mut a, t).len(), 1, "change {i} leaves at once");
        }
        // Changes that come faster than they leave share a message and linger again.
        for i in 10..12u8 {
            let item = put(&a, &[i], b"v");
            a.publish(t, item);
        }
        assert_eq!(drain(&mut a, t).len(), 1);
        assert_eq!(a.metrics().changes_sent, 11);
        assert_eq!(a.metrics().lingered_alone, 2);
        assert!(a.is_streaming(t));
        let item = put(&a, b"12", b"v");
        a.publish(t, item);
        assert!(drain(&mut a, t).is_empty(), "lingers again");
    }

    #[test]
    fn the_window_holds_new_data_until_acks_arrive() {
        let t0 = Instant::now();
        let (mut a, mut b, mut app_a, mut app_b) = joined_pair(t0);
        a.cfg.window = 1;
        let item = put(&a, b"1", b"v");
        a.publish(t0, item);
        let first = drain(&mut a, t0);
        assert_eq!(first.len(), 1);
        let t1 = t0 + a.cfg.linger * 2;
        let item = put(&a, b"2", b"v");
        a.publish(t1, item);
        assert!(
            drain(&mut a, t1).is_empty(),
            "one message in flight fills the window"
        );
        for d in &first {
            b.handle_datagram(t1, d, &mut app_b);
        }
        // b's heartbeat acknowledges it.
        let hb = t0 + b.cfg.heartbeat;
        b.handle_timeout(hb, &mut app_b);
        deliver(&mut b, &mut a, &mut app_a, hb);
        assert_eq!(a.in_flight(), 0);
        assert_eq!(a.send.len(), 0, "released once acknowledged");
        assert!(!drain(&mut a, hb).is_empty());
        assert_eq!(a.outbox_len(), 0);
        assert_eq!(a.metrics().data_messages_sent, 2);
    }

    /// Nodes `a` and `b` with windows of 9 data messages: `a` sends 9 changes of 1 KB (one
    /// data message each), the first lost on its way to `b`, so `b`'s acks stop at the gap and
    /// `a`'s window shuts with a 10th change queued; then `b` NAKs the first message and gets
    /// it again. Returns the nodes, their apps and the time of the resend.
    fn resent_into_a_shut_window(t0: Instant) -> (Endpoint, Endpoint, MapApp, MapApp, Instant) {
        let (mut a, mut b, mut app_a, mut app_b) = joined_pair(t0);
        a.cfg.window = 9;
        b.cfg.window = 9;
        assert_eq!(b.ack_every(), 2);
        let mut t = t0;
        for i in 0..9u32 {
            t += a.cfg.linger * 2;
            let item = put(&a, &i.to_be_bytes(), &[7; 1000]);
            a.publish(t, item);
            let sent = drain(&mut a, t);
            assert_eq!(sent.len(), 1, "message {} goes out at once", i + 1);
            if i > 0 {
                b.handle_datagram(t, &sent[0], &mut app_b);
                deliver(&mut b, &mut a, &mut app_a, t);
            }
        }
        // b acknowledged four times, each time only up to the gap: the window is shut.
        assert_eq!(a.in_flight(), 9);
        let item = put(&a, b"next", &[7; 1000]);
        a.publish(t, item);
        assert!(drain(&mut a, t).is_empty(), "the window is shut");
        let later = t + Duration::from_millis(5);
        b.handle_timeout(later, &mut app_b);
        deliver(&mut b, &mut a, &mut app_a, later);
        deliver(&mut a, &mut b, &mut app_b, later);
        assert!(later < t0 + b.cfg.heartbeat, "no heartbeat involved");
        (a, b, app_a, app_b, later)
    }

    #[test]
    fn a_window_shut_on_a_gap_reopens_when_the_gap_is_filled_not_at_the_next_heartbeat() {
        let (mut a, mut b, mut app_a, _, later) = resent_into_a_shut_window(Instant::now());
        // b acknowledges the whole stream at once (the resend is only the first message it
        // counts towards its next ack: before, none came until its heartbeat).
        deliver(&mut b, &mut a, &mut app_a, later);
        assert_eq!(a.in_flight(), 0);
        assert_eq!(drain(&mut a, later).len(), 1, "the next change goes out");
    }

    #[test]
    fn a_shut_window_announces_its_tail_until_a_peer_holding_everything_acknowledges() {
        let t0 = Instant::now();
        let (mut a, mut b, mut app_a, mut app_b, later) = resent_into_a_shut_window(t0);
        assert!(!drain(&mut b, later).is_empty(), "b's ack, lost");
        assert_eq!(a.in_flight(), 9);
        // a keeps announcing its tail while its window stays shut; b answers with its ack.
        let mut now = later;
        for _ in 0..4 {
            now += a.cfg.tail_delay * TAIL_REPEAT_SPACING;
            a.handle_timeout(now, &mut app_a);
            deliver(&mut a, &mut b, &mut app_b, now);
            deliver(&mut b, &mut a, &mut app_a, now);
        }
        assert!(now < t0 + b.cfg.heartbeat, "no heartbeat involved");
        assert_eq!(
            a.metrics().data_messages_sent,
            10,
            "the window reopened and the next change went out"
        );
        assert_eq!(a.send.len(), 1, "the nine first acknowledged");
    }

    #[test]
    fn a_capped_receive_buffer_shrinks_the_window_and_brings_acks_sooner() {
        let t0 = Instant::now();
        let (mut a, mut b, mut app_a, mut app_b) = joined_pair(t0);
        assert_eq!(
            a.window(),
            a.cfg.window,
            "a 32 MiB buffer holds a full window"
        );
        // Linux's default cap (`net.core.rmem_max` = 212,992, read back doubled).
        a.cfg.recv_buffer = 425_984;
        b.cfg.recv_buffer = 425_984;
        assert_eq!(a.window(), 138, "what the buffer holds from one peer");
        assert_eq!(b.ack_every(), 34, "a quarter of the window");
        let mut t = t0;
        for i in 0..34u32 {
            t += a.cfg.linger * 2;
            let item = put(&a, &i.to_be_bytes(), &[7; 1000]);
            a.publish(t, item);
            let sent = drain(&mut a, t);
            assert_eq!(sent.len(), 1, "a 1 KB change is a data message of its own");
            b.handle_datagram(t, &sent[0], &mut app_b);
        }
        assert_eq!(a.in_flight(), 34);
        // b acknowledges the 34th message at once, long before its next heartbeat.
        deliver(&mut b, &mut a, &mut app_a, t);
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn leaving_sends_what_is_queued_before_the_leave() {
        let t0 = Instant::now();
        let (mut a, mut b, _, mut app_b) = joined_pair(t0);
        let item = put(&a, b"k", b"v");
        a.publish(t0, item);
        a.leave(t0);
        let item = put(&a, b"late", b"v");
        a.publish(t0, item);
        assert_eq!(a.outbox_len(), 0, "nothing is accepted after leaving");
        assert_eq!(deliver(&mut a, &mut b, &mut app_b, t0), 2);
        assert!(app_b.record("c", b"k").is_some());
        assert!(b.peers().is_empty());
        let left = std::iter::from_fn(|| b.poll_event()).any(|e| {
            e == Event::Member(MemberEvent::Left {
                id: a.id(),
                failed: false,
            })
        });
        assert!(left);
    }

    #[test]
    fn a_gap_wider_than_one_naks_work_is_given_up_after_one_nak() {
        let t0 = Instant::now();
        let (mut a, mut b, _, mut app_b) = joined_pair(t0);
        // A ran 10,000 messages ahead of B, and every live peer acknowledged them (B was
        // suspected meanwhile): they are released.
        for _ in 0..10_000 {
            a.send.next_seq();
        }
        let hi = a.send.seq_hi();
        assert!(hi > u64::from(NAK_WORK_BUDGET) * 2);
        b.learn_seq_hi(t0, a.id(), hi);
        let missing = b.peers[&a.id()].recv.missing();
        assert!(missing >= 10_000, "B tracks the gap: {missing}");
        a.on_nak(b.id(), &[(1, hi)]);
        assert_eq!(a.metrics().retransmits_gone, hi);
        let mut buf = Vec::new();
        a.poll_transmit(t0, &mut buf).expect("the Gone answer");
        b.handle_datagram(t0, &buf, &mut app_b);
        assert_eq!(
            b.peers[&a.id()].recv.missing(),
            0,
            "one answer covers it all"
        );
        assert_eq!(b.peers[&a.id()].recv.contiguous(), hi);
    }

    #[test]
    fn a_nak_for_a_released_message_is_answered_gone() {
        let t0 = Instant::now();
        let (mut a, mut b, _, mut app_b) = joined_pair(t0);
        let item = put(&a, b"k", b"v");
        a.publish(t0, item);
        drain(&mut a, t0);
        a.send.release_all();
        a.on_nak(b.id(), &[(1, 1)]);
        assert_eq!(a.metrics().retransmits_gone, 1);
        let mut buf = Vec::new();
        let t = a.poll_transmit(t0, &mut buf).expect("the Gone answer");
        assert_eq!(t.destination, Destination::Node(b.id()));
        b.handle_datagram(t0, &buf, &mut app_b);
        assert_eq!(b.peers[&a.id()].recv.missing(), 0);
    }
}
