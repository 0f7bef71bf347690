//! Membership: the peer table, heartbeats (`Hello`), cumulative acks, clean leaves and failure
//! detection.

use super::*;
use crate::message::Msg;

/// The peer table.
pub(super) type PeerMap = BTreeMap<NodeId, Peer>;

/// A peer as this node tracks it.
#[derive(Debug)]
pub(super) struct Peer {
    pub(super) name: String,
    pub(super) last_seen: Instant,
    pub(super) suspect: bool,
    /// Our stream, as acknowledged by this peer.
    pub(super) acked: u64,
    /// This peer's stream, as received here.
    pub(super) recv: RecvStream,
    /// False while the peer was met through a message that tells nothing of its stream (an
    /// ack, a digest, a repair…): `recv` then starts at the first sequence number heard
    /// (its `Tail`, `Hello` or `Data`), not at 0, so that a peer removed as failed and heard
    /// again does not NAK its whole history; anti-entropy repairs what it missed meanwhile.
    pub(super) stream_known: bool,
    /// When this node last answered the peer's digest with its lists or sums.
    pub(super) digest_answered_at: Option<Instant>,
    pub(super) received_since_ack: u64,
    /// Our cumulative ack of this peer's stream as last sent (in an `Ack` or a heartbeat).
    pub(super) ack_sent: u64,
    /// The last `Tail` heard from this peer and how many times in a row it announced that
    /// same number: more than [`TAIL_ANNOUNCEMENTS`] means its window is shut (it probes).
    pub(super) tails: (u64, u32),
    /// Its wall clock minus ours, in ms, from its last heartbeat (`None` until one arrives).
    pub(super) clock_offset_ms: Option<i64>,
}

impl Endpoint {
    /// A peer left cleanly: it is dropped at once.
    pub(super) fn on_leave(&mut self, from: NodeId) {
        if self.peers.remove(&from).is_some() {
            self.wire.forget_sender(from);
            self.budget.forget(from);
            self.events.push_back(Event::Member(MemberEvent::Left {
                id: from,
                failed: false,
            }));
            self.release_acked();
        }
    }

    /// A heartbeat, or a joiner's announcement (`join`), which is answered at once.
    pub(super) fn on_hello(
        &mut self,
        now: Instant,
        from: NodeId,
        msg: Msg,
        app: &mut dyn AppState,
    ) {
        let Msg::Hello {
            name,
            join,
            seq_hi,
            acks,
            caches,
            wall_ms,
        } = msg
        else {
            return;
        };
        self.on_peer_clock(now, from, wall_ms);
        self.on_ack_list(from, &acks);
        if let Some(p) = self.peers.get_mut(&from) {
            p.name = name;
        }
        self.learn_seq_hi(now, from, seq_hi);
        if join {
            // Answer at once so the joiner learns the membership and our caches (if
            // its budget allows; otherwise it hears our next heartbeat).
            let caches = app.caches();
            let size =
                128 + 24 * self.peers.len() + caches.iter().map(|c| c.len() + 2).sum::<usize>();
            if self.pay(now, from, self.wire_size(size)) {
                self.send_hello(false, caches);
            }
        }
        self.maybe_start_transfer(now, from, caches, app);
    }

    /// Records that `from` is alive; adds it if new. Returns false if the table is full.
    pub(super) fn touch_peer(&mut self, now: Instant, from: NodeId, msg: &Msg) -> bool {
        if let Some(p) = self.peers.get_mut(&from) {
            p.last_seen = now;
            if p.suspect {
                p.suspect = false;
                self.events
                    .push_back(Event::Member(MemberEvent::Alive { id: from }));
            }
            return true;
        }
        if self.peers.len() >= self.cfg.max_peers {
            self.drops.record(DropReason::MembershipFull);
            return false;
        }
        // Where its stream starts for us: history before we met is covered by state transfer
        // and anti-entropy. A young stream is taken from the start so that its first messages,
        // if lost, are still NAKed.
        let (base, stream_known) = match msg {
            Msg::Hello { seq_hi, .. } | Msg::Tail { seq_hi } => (*seq_hi, true),
            Msg::Data { seq, .. } => (stream_base(*seq), true),
            _ => (0, false),
        };
        let name = match msg {
            Msg::Hello { name, .. } => name.clone(),
            _ => String::new(),
        };
        self.peers.insert(
            from,
            Peer {
                name: name.clone(),
                last_seen: now,
                suspect: false,
                // It does not need our past: it fetches state on its own.
                acked: self.send.seq_hi(),
                recv: RecvStream::new(base),
                stream_known,
                digest_answered_at: None,
                received_since_ack: 0,
                ack_sent: base,
                tails: (0, 0),
                clock_offset_ms: None,
            },
        );
        self.events
            .push_back(Event::Member(MemberEvent::Joined { id: from, name }));
        if !matches!(msg, Msg::Hello { .. }) {
            // Learn its name and our caches quickly; also ask it to announce itself (paid from
            // what it sent: a stream of new forged ids must not buy a Hello each).
            let size = 128 + 24 * self.peers.len();
            if self.pay(now, from, self.wire_size(size)) {
                self.send_hello(true, Vec::new());
            }
        }
        // A peer that (re)appears may have missed anything: compare digests soon.
        self.pulse_soon(now, NEW_PEER_PULSE_DELAY);
        true
    }

    /// Where the stream of a peer whose stream was not known starts: at `seq_hi` (announced by
    /// a `Hello` or `Tail`) or before `seq` (a data message). Returns true if it was not known
    /// (the caller then has nothing to NAK).
    pub(super) fn settle_stream(&mut self, from: NodeId, base: u64) -> bool {
        match self.peers.get_mut(&from) {
            Some(p) if !p.stream_known => {
                p.recv = RecvStream::new(base);
                p.stream_known = true;
                true
            }
            _ => false,
        }
    }

    /// Time in which this node did not run does not count as its peers' silence: when more
    /// than two heartbeats passed since the last datagram or timer it handled (the process was
    /// descheduled or stopped, or one pass of its driver took that long), the excess is added
    /// to every peer's last-seen time. A driver calls in at least every housekeeping period
    /// (250 ms) while it runs. Without this, nine processes flat out on two cores removed
    /// peers whose datagrams waited unread in their own socket after a pass of ~1 s, each
    /// removal resetting a stream that anti-entropy then had to repair key by key.
    pub(super) fn credit_stall(&mut self, now: Instant) {
        let allowance = self.cfg.heartbeat * 2;
        if let Some(prev) = self.last_call {
            let gap = now.saturating_duration_since(prev);
            if gap > allowance {
                let credit = gap - allowance;
                for p in self.peers.values_mut() {
                    p.last_seen = (p.last_seen + credit).min(now);
                }
                self.metrics.stalls += 1;
            }
        }
        self.last_call = Some(self.last_call.map_or(now, |prev| prev.max(now)));
    }

    pub(super) fn detect_failures(&mut self, now: Instant) {
        let suspect_after = self.cfg.heartbeat * self.cfg.suspect_after;
        let remove_after = self.cfg.heartbeat * self.cfg.remove_after;
        let mut removed = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            let silent = now.saturating_duration_since(p.last_seen);
            if silent >= remove_after {
                removed.push(*id);
            } else if silent >= suspect_after && !p.suspect {
                p.suspect = true;
                self.events
                    .push_back(Event::Member(MemberEvent::Suspect { id: *id }));
            }
        }
        for id in removed {
            self.metrics.peers_failed += 1;
            self.peers.remove(&id);
            self.wire.forget_sender(id);
            self.budget.forget(id);
            self.events
                .push_back(Event::Member(MemberEvent::Left { id, failed: true }));
        }
        self.release_acked();
    }

    pub(super) fn send_hello(&mut self, join: bool, caches: Vec<String>) {
        let acks = self.acks_out();
        let msg = Msg::Hello {
            name: self.cfg.name.clone(),
            join,
            seq_hi: self.send.seq_hi(),
            acks,
            caches,
            wall_ms: self.wall_ms,
        };
        self.send_msg(&msg);
    }

    pub(super) fn send_ack(&mut self) {
        let acks = self.acks_out();
        self.send_msg(&Msg::Ack { acks });
    }

    /// The cumulative acks to send now, one per peer, noted as sent (the count towards the
    /// next `Ack` starts again).
    fn acks_out(&mut self) -> Vec<(NodeId, u64)> {
        self.peers
            .iter_mut()
            .map(|(id, p)| {
                p.received_since_ack = 0;
                p.ack_sent = p.recv.contiguous();
                (*id, p.ack_sent)
            })
            .collect()
    }

    pub(super) fn on_ack_list(&mut self, from: NodeId, acks: &[(NodeId, u64)]) {
        if let Some(&(_, upto)) = acks.iter().find(|(id, _)| *id == self.me) {
            if let Some(p) = self.peers.get_mut(&from) {
                p.acked = p.acked.max(upto.min(self.send.seq_hi()));
            }
            self.release_acked();
        }
    }

    pub(super) fn release_acked(&mut self) {
        match self.peers.values().map(|p| p.acked).min() {
            Some(min) => self.send.release(min),
            None => self.send.release_all(),
        }
    }
}

/// Where a stream first heard through data message `seq` starts: a young stream from the start,
/// so that its first messages, if lost, are still NAKed; an older one just before `seq`.
pub(super) fn stream_base(seq: u64) -> u64 {
    if seq <= YOUNG_STREAM { 0 } else { seq - 1 }
}

#[cfg(test)]
// Tests start their explicit time from the real clock (proto/clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn peers_meet_through_their_announcements() {
        let t0 = Instant::now();
        let (mut a, mut b) = (endpoint(1, t0), endpoint(2, t0));
        let (mut app_a, mut app_b) = (MapApp::default(), MapApp::default());
        a.handle_timeout(t0, &mut app_a);
        deliver(&mut a, &mut b, &mut app_b, t0);
        assert_eq!(
            b.poll_event(),
            Some(Event::Member(MemberEvent::Joined {
                id: a.id(),
                name: "test".into()
            }))
        );
        // b answers the joiner at once.
        deliver(&mut b, &mut a, &mut app_a, t0);
        assert_eq!(a.peers().len(), 1);
        assert_eq!(b.peers()[0].id, a.id());
    }

    #[test]
    fn a_silent_peer_is_suspected_then_removed() {
        let t0 = Instant::now();
        let (mut a, b, mut app_a, _) = joined_pair(t0);
        let hb = a.cfg.heartbeat;
        let mut events = Vec::new();
        for i in 1..=a.cfg.remove_after {
            let t = t0 + hb * i;
            a.handle_timeout(t, &mut app_a);
            drain(&mut a, t);
            events.extend(std::iter::from_fn(|| a.poll_event()));
        }
        let id = b.id();
        let member = |e: &Event| matches!(e, Event::Member(m) if *m != MemberEvent::Ready);
        let members: Vec<Event> = events.into_iter().filter(member).collect();
        assert_eq!(
            members,
            vec![
                Event::Member(MemberEvent::Suspect { id }),
                Event::Member(MemberEvent::Left { id, failed: true }),
            ]
        );
        assert!(a.peers().is_empty());
    }

    #[test]
    fn time_this_node_stood_still_is_not_held_against_its_peers() {
        let t0 = Instant::now();
        let (mut a, b, mut app_a, _) = joined_pair(t0);
        let hb = a.cfg.heartbeat;
        let id = b.id();
        let member = |e: &Event| matches!(e, Event::Member(m) if *m != MemberEvent::Ready);
        a.handle_timeout(t0 + hb / 2, &mut app_a);
        drain(&mut a, t0 + hb / 2);
        // `a` stands still for ten heartbeats (b's datagrams would wait in its socket).
        let back = t0 + hb * 10;
        a.handle_timeout(back, &mut app_a);
        drain(&mut a, back);
        let events: Vec<Event> = std::iter::from_fn(|| a.poll_event())
            .filter(member)
            .collect();
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(a.peers().len(), 1);
        assert_eq!(a.metrics().stalls, 1);
        // Running again, it still finds a peer that stays silent.
        let mut events = Vec::new();
        for i in 1..=a.cfg.remove_after * 2 {
            let t = back + hb / 2 * i;
            a.handle_timeout(t, &mut app_a);
            drain(&mut a, t);
            events.extend(std::iter::from_fn(|| a.poll_event()).filter(member));
        }
        assert_eq!(
            events,
            vec![
                Event::Member(MemberEvent::Suspect { id }),
                Event::Member(MemberEvent::Left { id, failed: true }),
            ]
        );
    }

    #[test]
    fn a_peer_heard_again_through_an_ack_takes_its_stream_up_where_it_now_is() {
        use crate::record::{Op, Record};
        let t0 = Instant::now();
        let (mut a, mut b, mut app_a, mut app_b) = joined_pair(t0);
        let hb = a.cfg.heartbeat;
        // b stops hearing a: a's data messages are lost until b removes it as failed.
        let mut t = t0;
        for i in 1..=b.cfg.remove_after * 2 {
            t = t0 + hb / 2 * i;
            a.publish(
                t,
                Item::Rec {
                    cache: "c".into(),
                    rec: Record {
                        key: vec![i as u8].into(),
                        version: version_at(app_a.wall + u64::from(i), a.id()),
                        op: Op::Del,
                    },
                },
            );
            a.handle_timeout(t, &mut app_a);
            drain(&mut a, t);
            b.handle_timeout(t, &mut app_b);
            drain(&mut b, t);
        }
        assert!(b.peers().is_empty(), "a was removed");
        assert!(a.send.seq_hi() > 0);
        // The first thing b hears again is an ack: it tells nothing of a's stream.
        a.send_ack();
        deliver(&mut a, &mut b, &mut app_b, t);
        assert!(!b.peers[&a.id()].stream_known);
        // Its next heartbeat does: the stream starts there, with nothing to NAK (what b missed
        // is anti-entropy's to repair).
        a.send_hello(false, Vec::new());
        deliver(&mut a, &mut b, &mut app_b, t);
        let p = &b.peers[&a.id()];
        assert!(p.stream_known);
        assert_eq!(p.recv.missing(), 0);
        assert_eq!(p.recv.contiguous(), a.send.seq_hi());
    }

    #[test]
    fn a_full_table_refuses_new_peers() {
        let t0 = Instant::now();
        let (mut a, mut b) = (endpoint(1, t0), endpoint(2, t0));
        b.cfg.max_peers = 0;
        let (mut app_a, mut app_b) = (MapApp::default(), MapApp::default());
        a.handle_timeout(t0, &mut app_a);
        deliver(&mut a, &mut b, &mut app_b, t0);
        assert!(b.peers().is_empty());
        assert_eq!(b.drops().get(DropReason::MembershipFull), 1);
    }
}
