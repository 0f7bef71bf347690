//! Anti-entropy: periodic digest pulses, bucket key lists for the buckets that differ, pushes
//! and pulls of the records that differ, and the answer budget that bounds what a peer's
//! requests can make this node send.

use super::*;
use crate::message::CacheDigest;
use crate::sync::{KeyVersion, MAX_PARTS, PART_KEYS, SYNC_BUCKETS};
use crate::version::Version;

impl Endpoint {
    /// Runs an anti-entropy pulse soon (after local changes could not be queued).
    pub fn schedule_pulse(&mut self, now: Instant) {
        self.timers
            .bring_forward(Timer::Pulse, now + OVERFLOW_PULSE_DELAY);
    }

    /// Runs an anti-entropy pulse at `at` at the latest.
    pub fn schedule_pulse_at(&mut self, at: Instant) {
        self.timers.bring_forward(Timer::Pulse, at);
    }

    /// Brings the next pulse forward to `now + delay`, but no closer than half a heartbeat after
    /// the last one: peers (or forged senders) appearing, or `Gone` answers, cannot make this
    /// node multicast digests back to back.
    pub(super) fn pulse_soon(&mut self, now: Instant, delay: Duration) {
        let mut at = now + delay;
        if let Some(last) = self.last_pulse_at {
            at = at.max(last + (self.cfg.heartbeat / 2).max(MIN_PULSE_SPACING));
        }
        self.timers.bring_forward(Timer::Pulse, at);
    }

    /// The driver says whether its targeted repair is pending: changes that overflowed its
    /// queue, whose keys it re-sends as soon as it can (`overflow::repair_step`). While it is,
    /// this node neither starts an anti-entropy exchange (periodic pulses wait) nor answers a
    /// peer's digest with its bucket lists, each for at most [`MAX_PULSE_DEFERRAL_PERIODS`]
    /// pulse periods in a row: what an exchange would find is mostly what that repair is
    /// sending. After 8 s of flat-out writes over 100,000 keys (1 s pulse), exchanges pushed
    /// ~460,000 records per node where 120,000–133,000 changes per node had overflowed, and
    /// the caches agreed 7 s after the writers stopped; waiting, 1.5–2 s.
    pub fn set_repair_pending(&mut self, pending: bool) {
        self.repair_pending = pending;
    }

    /// Whether the periodic pulse due now waits: only a periodic one (not one asked for by a
    /// new peer, a loss or an overload), only while data messages were sent or received within
    /// the settle time or the targeted repair is pending, and for at most
    /// [`MAX_PULSE_DEFERRAL_PERIODS`] pulse periods in a row.
    pub(super) fn defer_periodic_pulse(&mut self, now: Instant) -> bool {
        if self.timers.get(Timer::Pulse) != Some(self.periodic_pulse) {
            return false;
        }
        let recent =
            |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) < self.cfg.settle);
        if !(recent(self.linger.last_data_at()) || recent(self.last_data_rx) || self.repair_pending)
        {
            return false;
        }
        let since = *self.pulse_deferred_since.get_or_insert(now);
        now.duration_since(since) < self.cfg.pulse * MAX_PULSE_DEFERRAL_PERIODS
    }

    /// Whether this node's bucket lists for a digest that differs wait: while the targeted
    /// repair is pending, for at most [`MAX_PULSE_DEFERRAL_PERIODS`] pulse periods in a row
    /// (see [`Endpoint::set_repair_pending`]).
    fn defer_lists(&mut self, now: Instant) -> bool {
        if !self.repair_pending {
            self.lists_deferred_since = None;
            return false;
        }
        let since = *self.lists_deferred_since.get_or_insert(now);
        if now.duration_since(since) < self.cfg.pulse * MAX_PULSE_DEFERRAL_PERIODS {
            return true;
        }
        self.lists_deferred_since = None;
        false
    }

    pub(super) fn send_pulse(&mut self, app: &mut dyn AppState) {
        if self.peers.is_empty() {
            return;
        }
        let caches: Vec<CacheDigest> = app
            .caches()
            .into_iter()
            .filter_map(|cache| {
                let floor = app.clear_floor(&cache);
                app.digest(&cache).map(|digest| CacheDigest {
                    cache,
                    digest,
                    floor,
                })
            })
            .collect();
        if caches.is_empty() {
            return;
        }
        self.metrics.pulses_sent += 1;
        self.send_msg(&Msg::Digest { caches });
    }

    pub(super) fn on_digest(
        &mut self,
        now: Instant,
        from: NodeId,
        caches: Vec<CacheDigest>,
        app: &mut dyn AppState,
    ) {
        // Whether this digest is answered is decided once, at the first cache that differs.
        let mut answering = false;
        for line in caches {
            if app.digest(&line.cache).is_none() {
                continue;
            }
            // A clear this node missed (it joined later, or the message was lost for good).
            if line.floor > app.clear_floor(&line.cache)
                && !self.refuse_ahead(now, &line.floor, from)
            {
                app.apply_clear(&line.cache, line.floor, from);
            }
            let Some(mine) = app.digest(&line.cache) else {
                continue;
            };
            if mine.checksum == line.digest.checksum && mine.count == line.digest.count {
                continue;
            }
            if self.defer_lists(now) {
                continue;
            }
            if !answering {
                if !self.may_answer_digest(now, from) {
                    self.drops.record(DropReason::DigestPassed);
                    return;
                }
                answering = true;
            }
            let mut differing: Vec<u16> = (0..SYNC_BUCKETS)
                .filter(|&b| mine.buckets.get(b) != line.digest.buckets.get(b))
                .map(|b| b as u16)
                .collect();
            // Only the buckets the asker's answer budget pays for are listed (the rest at its
            // next pulses, the cursor moving on): building every differing bucket's list (a
            // walk, a copy of every key and an encoding) to send the first few made anti-entropy
            // the heaviest work of 9 processes on 2 cores that disagreed on most buckets; their
            // caches did not agree within 60 s of the writers stopping.
            let may = self.budget.available(now, from) as usize;
            if may == 0 {
                self.drops.record(DropReason::AnswerBudget);
                return;
            }
            // What a bucket's answer costs: its sums if it is cut in parts, else its list.
            let keys_per_bucket = (mine.count as usize).div_ceil(SYNC_BUCKETS);
            let per_bucket = if keys_per_bucket > PART_KEYS {
                keys_per_bucket.div_ceil(PART_KEYS) * 9
            } else {
                keys_per_bucket.saturating_mul(self.list_entry_bytes)
            }
            .max(1);
            if !differing.is_empty() {
                let start = self.digest_cursor % differing.len();
                differing.rotate_left(start);
                differing.truncate((may / per_bucket).max(1));
                self.digest_cursor = self.digest_cursor.wrapping_add(differing.len());
                differing.sort_unstable();
            }
            self.metrics.ae_exchanges += 1;
            // A bucket of a few keys is answered with its list. A longer one is answered with
            // the sums of its parts of about `PART_KEYS` keys, and the peer lists only the parts
            // whose sums differ: a few hundred keys that differ after a write burst touch every
            // bucket, and listing them whole sent every key version of the cache to each peer
            // whose digest differed (nine processes: 2.2 M key versions received by one node
            // in ~10 s, during which it applied nothing).
            let mut lists = Vec::new();
            let mut sums = Vec::new();
            let (mut listed, mut listed_bytes) = (0usize, 0usize);
            for b in differing {
                let b = usize::from(b);
                let len = self.bucket_lists.len(now, app, &line.cache, b);
                if len <= PART_KEYS {
                    let keys = self
                        .bucket_lists
                        .parts(now, app, &line.cache, (b, 1), &[0])
                        .pop()
                        .unwrap_or_default();
                    listed += keys.len();
                    listed_bytes += keys.iter().map(|k| k.key.len() + 24).sum::<usize>();
                    lists.push(((b as u16, 0, 1), keys));
                } else {
                    let of = len.div_ceil(PART_KEYS).clamp(2, usize::from(MAX_PARTS)) as u16;
                    let part_sums = self.bucket_lists.sums(now, app, &line.cache, b, of);
                    sums.push((b as u16, of, part_sums));
                }
            }
            if listed > 0 {
                self.list_entry_bytes = listed_bytes.div_ceil(listed);
            }
            let horizon = app.horizon(&line.cache);
            if !self.send_lists(now, from, &line.cache, horizon, lists)
                || !self.send_sums(now, from, &line.cache, sums)
            {
                return;
            }
        }
    }

    /// Whether this node answers `from`'s digest that differs from its own: yes for the first
    /// [`DIGEST_ANSWERS_PER_PULSE`] digests of a pulse period, and for a peer not answered
    /// within `peers / DIGEST_ANSWERS_PER_PULSE + 1` periods (so none waits for ever behind
    /// quicker ones); counted against the period if so.
    fn may_answer_digest(&mut self, now: Instant, from: NodeId) -> bool {
        let period = self.cfg.pulse;
        let (count, since) = &mut self.digest_answers;
        if since.is_none_or(|t| now.saturating_duration_since(t) >= period) {
            *count = 0;
            *since = Some(now);
        }
        let overdue_after = period * (self.peers.len() as u32 / DIGEST_ANSWERS_PER_PULSE + 1);
        let Some(peer) = self.peers.get_mut(&from) else {
            return false;
        };
        let overdue = peer
            .digest_answered_at
            .is_none_or(|t| now.saturating_duration_since(t) >= overdue_after);
        if *count >= DIGEST_ANSWERS_PER_PULSE && !overdue {
            return false;
        }
        *count += 1;
        peer.digest_answered_at = Some(now);
        true
    }

    /// A peer whose digest differed from ours sent the sums of the parts of some buckets:
    /// the parts whose sums differ from ours are answered with our lists of them, as far as
    /// `from`'s answer budget pays (the rest at a later exchange). A bucket or part count out
    /// of range, or a number of sums other than the parts, is counted as `malformed`.
    pub(super) fn on_sums(
        &mut self,
        now: Instant,
        from: NodeId,
        cache: &str,
        buckets: Vec<(u16, u16, Vec<u64>)>,
        app: &mut dyn AppState,
    ) {
        if app.digest(cache).is_none() || self.defer_lists(now) {
            return;
        }
        let mut lists = Vec::new();
        for (b, of, theirs) in buckets {
            if usize::from(b) >= SYNC_BUCKETS
                || !(2..=MAX_PARTS).contains(&of)
                || theirs.len() != usize::from(of)
            {
                self.drops.record(DropReason::Malformed);
                continue;
            }
            let mine = self.bucket_lists.sums(now, app, cache, usize::from(b), of);
            let differ: Vec<u16> = (0..of)
                .filter(|&p| mine[usize::from(p)] != theirs[usize::from(p)])
                .collect();
            let keys = self
                .bucket_lists
                .parts(now, app, cache, (usize::from(b), of), &differ);
            lists.extend(differ.into_iter().map(|p| (b, p, of)).zip(keys));
        }
        let horizon = app.horizon(cache);
        self.send_lists(now, from, cache, horizon, lists);
    }

    /// Sends `to` our lists of `parts` of `cache`, each `((bucket, part, of), keys)`, in
    /// [`Msg::Buckets`] messages of a few datagrams each (so they get through a lossy network;
    /// a part longer than that is sent alone), paid from `to`'s answer budget. Returns false
    /// once the budget does not pay for the next message (the rest is not sent).
    fn send_lists(
        &mut self,
        now: Instant,
        to: NodeId,
        cache: &str,
        horizon: Version,
        parts: Vec<((u16, u16, u16), Vec<KeyVersion>)>,
    ) -> bool {
        let budget = self.list_budget();
        let mut names = Vec::new();
        let mut keys = Vec::new();
        let mut bytes = 0usize;
        let send = |ep: &mut Endpoint, names: Vec<(u16, u16, u16)>, keys: Vec<KeyVersion>| {
            let n = keys.len() as u64;
            let msg = Msg::Buckets {
                to,
                cache: cache.to_string(),
                parts: names,
                keys,
                horizon,
            };
            let sent = ep.send_paid(now, to, &msg);
            if sent {
                ep.metrics.ae_keys_listed += n;
            }
            sent
        };
        for (part, part_keys) in parts {
            let part_bytes: usize = part_keys.iter().map(|k| k.key.len() + 24).sum();
            if !names.is_empty() && bytes + part_bytes > budget {
                if !send(self, std::mem::take(&mut names), std::mem::take(&mut keys)) {
                    return false;
                }
                bytes = 0;
            }
            names.push(part);
            keys.extend(part_keys);
            bytes += part_bytes;
        }
        names.is_empty() || send(self, names, keys)
    }

    /// Sends `to` the sums of parts of buckets of `cache`, each `(bucket, of, sums)`, in
    /// [`Msg::Sums`] messages of a few datagrams each, paid from `to`'s answer budget. Returns
    /// false once the budget does not pay for the next message (the rest is not sent).
    fn send_sums(
        &mut self,
        now: Instant,
        to: NodeId,
        cache: &str,
        sums: Vec<(u16, u16, Vec<u64>)>,
    ) -> bool {
        let budget = self.list_budget();
        let mut buckets = Vec::new();
        let mut bytes = 0usize;
        for line in sums {
            let line_bytes = line.2.len() * 9 + 8;
            if !buckets.is_empty() && bytes + line_bytes > budget {
                let msg = Msg::Sums {
                    to,
                    cache: cache.to_string(),
                    buckets: std::mem::take(&mut buckets),
                };
                if !self.send_paid(now, to, &msg) {
                    return false;
                }
                bytes = 0;
            }
            buckets.push(line);
            bytes += line_bytes;
        }
        buckets.is_empty()
            || self.send_paid(
                now,
                to,
                &Msg::Sums {
                    to,
                    cache: cache.to_string(),
                    buckets,
                },
            )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_buckets(
        &mut self,
        now: Instant,
        from: NodeId,
        cache: &str,
        parts: &[(u16, u16, u16)],
        theirs: Vec<KeyVersion>,
        their_horizon: Version,
        app: &mut dyn AppState,
    ) {
        if app.digest(cache).is_none() {
            return;
        }
        // Their versions by key (the key moved, not copied).
        let mut their_map: BTreeMap<Vec<u8>, (Version, bool)> = theirs
            .into_iter()
            .map(|kv| (kv.key, (kv.version, kv.deleted)))
            .collect();
        let mut push = Vec::new();
        let mut pull = Vec::new();
        let mut doubtful = Vec::new();
        let my_horizon = app.horizon(cache);
        let cutoff = app
            .wall_ms()
            .saturating_sub(self.cfg.settle.as_millis() as u64);
        let settled = |v: &crate::version::Version| v.millis() <= cutoff;
        // An update-if-present cache skips a value for a key it does not hold live: neither
        // side sends one to the side that lacks it (that side would skip it at every pulse).
        let adopts = app.adopts_absent_keys(cache);
        // `holder_deleted`: the holder's is a tombstone; `lacker`: whether the other side holds
        // a tombstone (`None`: nothing).
        let skipped = |holder_deleted: bool, lacker: Option<bool>| {
            !adopts && !holder_deleted && lacker.is_none_or(|deleted| deleted)
        };
        // The parts listed, by bucket and cut: each bucket's list is walked once for all its
        // parts (a list answering sums names up to hundreds of parts of one bucket).
        let mut cuts: BTreeMap<(u16, u16), Vec<u16>> = BTreeMap::new();
        for &(b, part, of) in parts {
            if usize::from(b) < SYNC_BUCKETS && of != 0 && part < of {
                cuts.entry((b, of)).or_default().push(part);
            }
        }
        for ((b, of), mut wanted) in cuts {
            wanted.sort_unstable();
            wanted.dedup();
            let visit = |mine: &KeyVersion| {
                let theirs = their_map.remove(&mine.key);
                match theirs {
                    Some((version, deleted)) if version > mine.version => {
                        if settled(&version) && !skipped(deleted, Some(mine.deleted)) {
                            pull.push((mine.key.clone(), version))
                        }
                    }
                    Some((version, _)) if version == mine.version => {}
                    // They do not hold the key and may have forgotten its delete: a live
                    // entry is dropped here (a miss is safe, a resurrection is not), a
                    // tombstone need not be sent (they refuse what it would refuse).
                    None if mine.version <= their_horizon => {
                        if !mine.deleted {
                            doubtful.push((mine.key.clone(), mine.version));
                        }
                    }
                    _ => {
                        if settled(&mine.version)
                            && !skipped(mine.deleted, theirs.map(|(_, deleted)| deleted))
                        {
                            push.push(mine.key.clone())
                        }
                    }
                }
            };
            self.bucket_lists
                .visit_parts(now, app, cache, (usize::from(b), of), &wanted, visit);
        }
        for (key, version) in doubtful {
            if app.drop_doubtful(cache, &key, version) {
                self.metrics.horizon_drops += 1;
            }
        }
        // Keys they hold and we do not know at all (unless we would refuse them: they drop
        // those live ones when they compare against our horizon).
        pull.extend(
            their_map
                .into_iter()
                .filter(|(_, (version, deleted))| {
                    settled(version) && *version > my_horizon && !skipped(*deleted, None)
                })
                .map(|(key, (version, _))| (key, version)),
        );
        // While this node is overloaded, pushes wait for an outbox with room (see
        // `PUSH_OUTBOX_MAX`); the peer pulls what it lacks when it pulses, and pulls are
        // always answered (as far as the budget pays).
        if !self.repair_pending
            || (self.outbox.len() < PUSH_OUTBOX_MAX && self.outbox_bytes < PUSH_OUTBOX_BYTES)
        {
            self.send_records(now, from, cache, push.iter().map(|k| k.as_slice()), app);
        } else if !push.is_empty() {
            self.metrics.pushes_deferred += push.len() as u64;
        }
        let budget = self.list_budget();
        let mut keys = Vec::new();
        let mut bytes = 0;
        let pending = self.pull_pending();
        for (k, version) in pull {
            if !self.coalesce.pull(cache, &k, version, now, pending) {
                self.metrics.repairs_coalesced += 1;
                continue;
            }
            bytes += k.len() + 4;
            keys.push(serde_bytes::ByteBuf::from(k));
            if bytes >= budget {
                self.send_msg(&Msg::Pull {
                    to: from,
                    cache: cache.to_string(),
                    keys: std::mem::take(&mut keys),
                });
                bytes = 0;
            }
        }
        if !keys.is_empty() {
            self.send_msg(&Msg::Pull {
                to: from,
                cache: cache.to_string(),
                keys,
            });
        }
    }

    /// A peer asks for the records of `keys`: sent on the reliable stream, as far as its
    /// answer budget pays.
    pub(super) fn on_pull(
        &mut self,
        now: Instant,
        from: NodeId,
        cache: &str,
        keys: &[serde_bytes::ByteBuf],
        app: &mut dyn AppState,
    ) {
        self.send_records(now, from, cache, keys.iter().map(|k| k.as_slice()), app);
    }

    /// How long a key pulled is not asked of another peer while its answer is awaited: 3/4 of
    /// a pulse period (the next exchange asks again if it never came).
    pub(super) fn pull_pending(&self) -> Duration {
        self.cfg.pulse * 3 / 4
    }

    /// Sends `from` the records this node holds for `keys` of `cache`, as repairs on the
    /// reliable stream, as far as its answer budget pays (the rest is asked for again at a
    /// later exchange). Records are read out of the cache one at a time and only until the
    /// budget runs out: reading every record of a long list before cutting it to the budget
    /// held the network thread for up to half a second on a starved core.
    fn send_records<'k>(
        &mut self,
        now: Instant,
        from: NodeId,
        cache: &str,
        keys: impl Iterator<Item = &'k [u8]>,
        app: &mut dyn AppState,
    ) {
        let name: Arc<str> = Arc::from(cache);
        let may = self.budget.available(now, from) as usize;
        let (mut coalesced, mut paid) = (0u64, 0usize);
        let mut cut = false;
        let mut items = Vec::new();
        for k in keys {
            let Some(rec) = app.record(cache, k) else {
                continue;
            };
            // Already on its way to every member: not paid for, nor queued, again.
            if self.coalesce.repair_waits(cache, &rec.key, rec.version) {
                coalesced += 1;
                continue;
            }
            let item = Item::Rec {
                cache: name.clone(),
                rec,
            };
            let wire = self.wire_size(item.weight());
            if paid + wire > may {
                cut = true;
                break;
            }
            paid += wire;
            items.push(item);
        }
        self.metrics.repairs_coalesced += coalesced;
        if cut {
            self.drops.record(DropReason::AnswerBudget);
        }
        if paid > 0 {
            self.budget.spend(now, from, paid);
        }
        self.send_repair(items);
    }

    /// Takes `bytes` of `to`'s answer budget; counts `answer_budget` and returns false if it
    /// does not have them.
    pub(super) fn pay(&mut self, now: Instant, to: NodeId, bytes: usize) -> bool {
        if self.budget.spend(now, to, bytes) {
            return true;
        }
        self.drops.record(DropReason::AnswerBudget);
        false
    }
}

#[cfg(test)]
// Tests start their explicit time from the real clock (proto/clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::record::Op;

    /// Runs both nodes' timers and exchanges everything at each step until `until`.
    fn run(
        a: &mut Endpoint,
        b: &mut Endpoint,
        app_a: &mut MapApp,
        app_b: &mut MapApp,
        from: Instant,
        until: Instant,
    ) {
        let mut now = from;
        while now <= until {
            a.handle_timeout(now, app_a);
            b.handle_timeout(now, app_b);
            for _ in 0..4 {
                deliver(a, b, app_b, now);
                deliver(b, a, app_a, now);
            }
            now += Duration::from_millis(10);
        }
    }

    #[test]
    fn pulses_repair_what_a_peer_missed_in_both_directions() {
        let t0 = Instant::now();
        let (mut a, mut b, mut app_a, mut app_b) = joined_pair(t0);
        // Written long enough ago to be settled, never published.
        let old = app_a.wall - 60_000;
        app_a.put("c", put_at(b"from-a", b"1", old, a.id()));
        app_b.put("c", put_at(b"from-b", b"2", old, b.id()));
        let until = t0 + a.cfg.pulse * 2;
        run(&mut a, &mut b, &mut app_a, &mut app_b, t0, until);
        assert_eq!(app_a.caches, app_b.caches);
        assert!(app_b.record("c", b"from-a").is_some());
        assert!(a.metrics().pulses_sent >= 1);
        assert!(a.metrics().ae_exchanges + b.metrics().ae_exchanges >= 1);
        assert!(a.metrics().ae_repairs + b.metrics().ae_repairs >= 2);
    }

    /// Every bucket, whole: the parts a peer's list for a whole cache names.
    fn all_parts() -> Vec<(u16, u16, u16)> {
        (0..SYNC_BUCKETS).map(|b| (b as u16, 0, 1)).collect()
    }

    /// `a` handles `from`'s list of `theirs` over every bucket of cache `c` at `now`.
    fn list_from(
        a: &mut Endpoint,
        app: &mut MapApp,
        from: NodeId,
        theirs: &[KeyVersion],
        now: Instant,
    ) {
        let parts = all_parts();
        a.on_buckets(now, from, "c", &parts, theirs.to_vec(), Version::ZERO, app);
    }

    #[test]
    fn a_record_pushed_for_one_list_is_not_queued_again_for_the_next_until_it_went_out() {
        let (mut a, b, mut app_a, _, t1) = pair_past_join(Instant::now());
        let old = app_a.wall - 60_000;
        // Fewer than the asker's answer budget pays for.
        for i in 0..10u32 {
            app_a.put("c", put_at(&i.to_be_bytes(), b"1", old, a.id()));
        }
        // Two peers' lists (here twice the same peer's) without any of the keys: each asks
        // for every record, which goes to the whole group.
        let before = a.metrics().ae_repairs;
        for _ in 0..2 {
            list_from(&mut a, &mut app_a, b.id(), &[], t1);
        }
        assert_eq!(a.metrics().ae_repairs - before, 10);
        assert_eq!(a.metrics().repairs_coalesced, 10);
        // Once packed and sent, a later exchange that still finds them missing sends them again.
        drain(&mut a, t1);
        let t2 = t1 + a.cfg.heartbeat;
        list_from(&mut a, &mut app_a, b.id(), &[], t2);
        // (As many as the asker's budget still pays for.)
        assert!(a.metrics().ae_repairs - before > 10);
        assert_eq!(a.metrics().repairs_coalesced, 10, "none waited");
    }

    #[test]
    fn a_key_is_pulled_from_one_peer_while_the_answer_is_awaited() {
        let (mut a, b, mut app_a, _, t1) = pair_past_join(Instant::now());
        let old = app_a.wall - 60_000;
        app_a.put("c", put_at(b"held", b"1", old, a.id()));
        let theirs: Vec<KeyVersion> = (0..20u32)
            .map(|i| KeyVersion {
                key: i.to_be_bytes().to_vec(),
                version: version_at(old, b.id()),
                deleted: false,
            })
            .collect();
        let pulls = |a: &mut Endpoint| drain(a, t1).len();
        list_from(&mut a, &mut app_a, b.id(), &theirs, t1);
        assert!(pulls(&mut a) >= 1, "the first list pulls");
        list_from(&mut a, &mut app_a, b.id(), &theirs, t1);
        assert_eq!(pulls(&mut a), 0, "the second asks for nothing");
        assert_eq!(a.metrics().repairs_coalesced, 20);
        let later = t1 + a.cfg.pulse;
        list_from(&mut a, &mut app_a, b.id(), &theirs, later);
        assert!(pulls(&mut a) >= 1, "unanswered a pulse later: asked again");
    }

    /// A joined pair run past its join (whose state transfer would copy what a test writes
    /// afterwards, instead of anti-entropy), and the time it is at.
    fn pair_past_join(t0: Instant) -> (Endpoint, Endpoint, MapApp, MapApp, Instant) {
        let (mut a, mut b, mut app_a, mut app_b) = joined_pair(t0);
        let t1 = t0 + a.cfg.join_wait * 2;
        run(&mut a, &mut b, &mut app_a, &mut app_b, t0, t1);
        (a, b, app_a, app_b, t1)
    }

    #[test]
    fn a_node_answers_two_differing_digests_a_pulse_period_and_every_peer_in_turn() {
        use crate::sync::SyncDigest;
        let t0 = Instant::now();
        let mut a = endpoint(1, t0);
        let mut app = MapApp::default();
        app.put("c", put_at(b"k", b"v", app.wall - 60_000, a.id()));
        let peers: Vec<NodeId> = (2..=5).map(NodeId).collect();
        for &id in &peers {
            a.peers.insert(id, peer_heard_at(t0));
            a.budget.earn(t0, id, 1 << 20, 1);
        }
        // Every peer's cache is empty: each digest differs from a's.
        let empty = || {
            vec![CacheDigest {
                cache: "c".into(),
                digest: SyncDigest {
                    count: 0,
                    checksum: 0,
                    buckets: vec![0; SYNC_BUCKETS],
                },
                floor: Version::ZERO,
            }]
        };
        let period = a.cfg.pulse;
        // A first digest from each is answered (none was answered before)...
        for &id in &peers {
            a.on_digest(t0, id, empty(), &mut app);
        }
        assert_eq!(a.metrics().ae_exchanges, 4);
        // ...then two a period: the third and fourth digests of the next period wait.
        let t1 = t0 + period;
        for &id in &peers {
            a.on_digest(t1, id, empty(), &mut app);
        }
        assert_eq!(a.metrics().ae_exchanges, 6);
        assert_eq!(a.drops().get(DropReason::DigestPassed), 2);
        // The same order every period would starve peers 4 and 5: a peer not answered for
        // peers / 2 + 1 = 3 periods is answered whatever the count.
        let t4 = t0 + period * 3;
        for &id in &peers {
            a.on_digest(t4, id, empty(), &mut app);
        }
        assert_eq!(a.metrics().ae_exchanges, 10, "2 + peers 4 and 5 (overdue)");
        assert_eq!(a.drops().get(DropReason::DigestPassed), 2);
    }

    #[test]
    fn an_exchange_over_a_wide_cache_lists_it_in_a_few_passes_not_one_per_message() {
        let (mut a, mut b, mut app_a, mut app_b, t1) = pair_past_join(Instant::now());
        // Every key differs: the lists of either side fill hundreds of parts.
        let old = app_a.wall - 60_000;
        let keys = 30_000u32;
        for i in 0..keys {
            app_a.put("c", put_at(&i.to_be_bytes(), b"1", old, a.id()));
            app_b.put("c", put_at(&i.to_be_bytes(), b"2", old + 1, b.id()));
        }
        // Peers whose earlier traffic earned them the credit for lists of every key (in
        // plaintext, without it, an exchange sends what the little a digest earns pays for).
        a.budget.earn(t1, b.id(), 1 << 30, 1);
        b.budget.earn(t1, a.id(), 1 << 30, 1);
        let t2 = t1 + a.cfg.pulse * 20;
        run(&mut a, &mut b, &mut app_a, &mut app_b, t1, t2);
        let differ = (0..keys)
            .filter(|i| {
                let k = i.to_be_bytes();
                app_a.record("c", &k) != app_b.record("c", &k)
            })
            .count();
        assert_eq!(differ, 0);
        let seven = app_a.record("c", &7u32.to_be_bytes()).unwrap();
        assert_eq!(seven.version.millis(), old + 1);
        assert_eq!(a.metrics().snapshot_records_applied, 0);
        // Each side compared the other's lists with its own, listed a window of buckets per
        // pass over its cache: a few passes for the parts of an exchange (before: one per
        // part, or per message of a few parts).
        let (pa, qa) = a.bucket_lists.passes_and_parts();
        let (pb, qb) = b.bucket_lists.passes_and_parts();
        let (passes, parts) = (pa + pb, qa + qb);
        assert!(parts >= 100, "{parts} parts");
        assert!(
            passes > 0 && passes * 5 <= parts,
            "{passes} passes for {parts} parts"
        );
    }

    #[test]
    fn a_few_keys_that_differ_in_a_wide_cache_are_listed_with_their_parts_not_with_the_cache() {
        let (mut a, mut b, mut app_a, mut app_b, t1) = pair_past_join(Instant::now());
        let old = app_a.wall - 60_000;
        let keys = 30_000u32;
        for i in 0..keys {
            let rec = put_at(&i.to_be_bytes(), b"1", old, a.id());
            app_a.put("c", rec.clone());
            app_b.put("c", rec);
        }
        // 20 keys b wrote later (each in a part of its bucket of about `PART_KEYS` keys).
        let newer: Vec<u32> = (0..20).map(|i| i * 1_499).collect();
        for &i in &newer {
            app_b.put("c", put_at(&i.to_be_bytes(), b"2", old + 1, b.id()));
        }
        let t2 = t1 + a.cfg.pulse * 3;
        run(&mut a, &mut b, &mut app_a, &mut app_b, t1, t2);
        for &i in &newer {
            let k = i.to_be_bytes();
            assert_eq!(app_a.record("c", &k), app_b.record("c", &k), "key {i}");
        }
        assert_eq!(app_a.caches, app_b.caches);
        // Each side listed only the parts whose sums differed: a few hundred key versions, not
        // the 30,000 of the cache (before sums: every key of every differing bucket).
        let listed = a.metrics().ae_keys_listed + b.metrics().ae_keys_listed;
        assert!(listed > 0);
        let bound = newer.len() as u64 * PART_KEYS as u64 * 2 * 4;
        assert!(
            listed <= bound,
            "{listed} key versions listed (bound {bound})"
        );
    }

    #[test]
    fn sums_out_of_range_are_counted_as_malformed_and_answered_with_nothing() {
        let (mut a, b, mut app_a, _, t1) = pair_past_join(Instant::now());
        let old = app_a.wall - 60_000;
        for i in 0..1_000u32 {
            app_a.put("c", put_at(&i.to_be_bytes(), b"1", old, a.id()));
        }
        a.budget.earn(t1, b.id(), 1 << 30, 1);
        drain(&mut a, t1);
        let bad = vec![
            (SYNC_BUCKETS as u16, 2, vec![0, 0]),
            (0, 0, Vec::new()),
            (0, 1, vec![0]),
            (0, MAX_PARTS + 1, vec![0; usize::from(MAX_PARTS) + 1]),
            (0, 3, vec![0, 0]),
            (u16::MAX, u16::MAX, Vec::new()),
        ];
        let n = bad.len() as u64;
        a.on_sums(t1, b.id(), "c", bad, &mut app_a);
        assert_eq!(a.drops().get(DropReason::Malformed), n);
        assert!(drain(&mut a, t1).is_empty());
        assert_eq!(a.metrics().ae_keys_listed, 0);
        // A line in range whose sums all differ is answered with the lists of its parts.
        a.on_sums(t1, b.id(), "c", vec![(5, 4, vec![1, 2, 3, 4])], &mut app_a);
        assert!(!drain(&mut a, t1).is_empty());
        let in_bucket = (0..1_000u32)
            .filter(|i| crate::sync::key_bucket(&i.to_be_bytes()) == 5)
            .count() as u64;
        assert_eq!(a.metrics().ae_keys_listed, in_bucket);
    }

    #[test]
    fn a_pending_targeted_repair_puts_exchanges_off_for_a_bounded_time() {
        // b holds a settled key that a lacks.
        let setup = || {
            let (a, b, mut app_a, mut app_b, t1) = pair_past_join(Instant::now());
            app_b.put("c", put_at(b"k", b"1", app_b.wall - 60_000, b.id()));
            app_a.caches.entry("c".into()).or_default();
            (a, b, app_a, app_b, t1)
        };
        let (mut a, mut b, mut app_a, mut app_b, t1) = setup();
        // b, which holds the key a lacks, has a targeted repair pending.
        b.set_repair_pending(true);
        let (pulse, cap) = (a.cfg.pulse, a.cfg.pulse * MAX_PULSE_DEFERRAL_PERIODS);
        // Within the deferral b neither starts an exchange (pulses) nor answers a's digests
        // with its lists.
        run(&mut a, &mut b, &mut app_a, &mut app_b, t1, t1 + cap - pulse);
        assert_eq!(a.metrics().ae_exchanges + b.metrics().ae_exchanges, 0);
        assert!(app_a.record("c", b"k").is_none());
        // It is bounded: with the repair still pending, the exchange happens after all...
        run(
            &mut a,
            &mut b,
            &mut app_a,
            &mut app_b,
            t1 + cap - pulse,
            t1 + cap * 3,
        );
        assert!(a.metrics().ae_exchanges + b.metrics().ae_exchanges > 0);
        assert!(app_a.record("c", b"k").is_some());
        // ...and without one, at the next pulse.
        let (mut a, mut b, mut app_a, mut app_b, t1) = setup();
        run(&mut a, &mut b, &mut app_a, &mut app_b, t1, t1 + pulse * 2);
        assert!(app_a.record("c", b"k").is_some());
    }

    #[test]
    fn update_if_present_caches_go_quiet_when_one_side_lacks_keys() {
        let t0 = Instant::now();
        let (mut a, mut b, mut app_a, mut app_b) = joined_pair(t0);
        app_a.adopts_absent = false;
        app_b.adopts_absent = false;
        let old = app_a.wall - 60_000;
        // a holds a key b lacks, and a newer value of a key b holds only as a tombstone.
        app_a.put("c", put_at(b"only-a", b"1", old, a.id()));
        app_a.put("c", put_at(b"dead-at-b", b"2", old + 1, a.id()));
        let mut tomb = put_at(b"dead-at-b", b"", old, b.id());
        tomb.op = Op::Del;
        app_b.put("c", tomb);
        app_b.caches.entry("c".into()).or_default();
        let until = t0 + a.cfg.pulse * 4;
        run(&mut a, &mut b, &mut app_a, &mut app_b, t0, until);
        assert!(a.metrics().ae_exchanges + b.metrics().ae_exchanges >= 1);
        assert_eq!(
            a.metrics().ae_repairs + b.metrics().ae_repairs,
            0,
            "nothing sent that would be skipped"
        );
        assert!(app_b.record("c", b"only-a").is_none());
    }

    #[test]
    fn pulses_brought_forward_keep_their_spacing() {
        let t0 = Instant::now();
        let mut a = endpoint(1, t0);
        a.last_pulse_at = Some(t0);
        a.pulse_soon(t0, GONE_PULSE_DELAY);
        let spacing = (a.cfg.heartbeat / 2).max(MIN_PULSE_SPACING);
        assert_eq!(a.timers.get(Timer::Pulse), Some(t0 + spacing));
        a.schedule_pulse_at(t0 + Duration::from_millis(1));
        assert_eq!(
            a.timers.get(Timer::Pulse),
            Some(t0 + Duration::from_millis(1))
        );
    }

    #[test]
    fn while_overloaded_pushes_wait_for_the_outbox_and_pulls_are_still_answered() {
        let (mut a, b, mut app_a, _, t1) = pair_past_join(Instant::now());
        let old = app_a.wall - 60_000;
        let n = PUSH_OUTBOX_MAX as u32;
        for i in 0..n {
            app_a.put("c", put_at(&i.to_be_bytes(), b"1", old, a.id()));
        }
        // A peer whose traffic earned it an answer budget for all of them.
        a.budget.earn(t1, b.id(), 1 << 30, 1);
        list_from(&mut a, &mut app_a, b.id(), &[], t1);
        assert_eq!(a.outbox_len(), PUSH_OUTBOX_MAX);
        assert_eq!(a.metrics().pushes_deferred, 0);
        // With that backlog, while the targeted repair is pending (the node overloaded), the
        // next list's pushes wait (the ten new keys too) and nothing is read out of the cache
        // for them...
        for i in n..n + 10 {
            app_a.put("c", put_at(&i.to_be_bytes(), b"1", old, a.id()));
        }
        a.set_repair_pending(true);
        // (Past the half second for which this node keeps its own lists.)
        let t2 = t1 + Duration::from_millis(600);
        let reads = app_a.reads.get();
        list_from(&mut a, &mut app_a, b.id(), &[], t2);
        assert_eq!(a.outbox_len(), PUSH_OUTBOX_MAX);
        assert_eq!(a.metrics().pushes_deferred, u64::from(n) + 10);
        assert_eq!(app_a.reads.get(), reads);
        // ...but a pull is answered.
        let pulled = vec![serde_bytes::ByteBuf::from(n.to_be_bytes().to_vec())];
        a.on_pull(t2, b.id(), "c", &pulled, &mut app_a);
        assert_eq!(a.outbox_len(), PUSH_OUTBOX_MAX + 1);
        // Once the overload is over, a list's pushes are queued whatever the outbox holds: the
        // nine new keys not queued yet.
        a.set_repair_pending(false);
        list_from(&mut a, &mut app_a, b.id(), &[], t2);
        assert_eq!(a.outbox_len(), PUSH_OUTBOX_MAX + 10);
        assert_eq!(a.metrics().pushes_deferred, u64::from(n) + 10);
    }

    #[test]
    fn answers_stop_at_the_requesters_budget_and_read_nothing_past_it() {
        let t0 = Instant::now();
        let mut a = endpoint(1, t0);
        let mut app = MapApp::default();
        let keys: Vec<serde_bytes::ByteBuf> = (0..1000u32)
            .map(|i| {
                app.put("c", put_at(&i.to_be_bytes(), &[0; 1000], 1, NodeId(1)));
                serde_bytes::ByteBuf::from(i.to_be_bytes().to_vec())
            })
            .collect();
        // A stranger cannot ask for a megabyte.
        a.on_pull(t0, NodeId(9), "c", &keys, &mut app);
        assert!(a.metrics().ae_repairs < 1000);
        assert_eq!(a.drops().get(DropReason::AnswerBudget), 1);
        // A requester whose traffic earned it about a hundred of these records gets them, and
        // only those are read out of the cache, with the one that did not fit: not the other
        // thousand.
        let (sent, reads) = (a.metrics().ae_repairs, app.reads.get());
        assert_eq!(sent, 0);
        a.budget.earn(t0, NodeId(9), 100_000, 1);
        a.on_pull(t0, NodeId(9), "c", &keys, &mut app);
        let more = a.metrics().ae_repairs - sent;
        assert!(more > 10 && more < 1000, "{more}");
        assert_eq!(app.reads.get() - reads, more + 1);
        assert_eq!(a.drops().get(DropReason::AnswerBudget), 2);
    }
}
