//! Answer budgets: how many bytes a node may send in answer to one requester's requests
//! (snapshot chunks, anti-entropy lists and pushes, pull answers, query replies, join answers),
//! so that a stream of requests cannot make the cluster send much more than it receives.
//!
//! A message for everybody may be answered by every member, so for it each node earns
//! [`AMPLIFICATION`] / *members* times its wire size as credit for its sender; a message for
//! one node (a snapshot request, a pull, an anti-entropy list) is answered only by that node,
//! which earns three quarters of [`AMPLIFICATION`] for it (a margin for framing; the others
//! earn nothing). Either way the
//! whole cluster never answers more than [`AMPLIFICATION`] times what a requester sent, over
//! multicast or unicast. Credit is capped ([`CREDIT_CAP`]).
//!
//! In sealed mode requesters are authenticated members, and bulk work such as a state
//! transfer or a repair after a partition needs more than a small request earns. Members heard
//! for at least `established` (three heartbeats) may then also draw on a pool that refills at
//! [`POOL_RATE`] bytes per second (at most [`POOL_BURST`] saved): a bound on the whole node, not
//! per requester, so more identities do not buy more. In plaintext mode anyone can forge any
//! identity, so there is no pool: only earned credit. Answers that do not fit are not sent
//! (counted as `answer_budget`); the requester asks again after sending more.
//!
//! Pure: time comes in as `now`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::version::NodeId;

/// What the cluster as a whole may send per byte a requester sends.
pub const AMPLIFICATION: u64 = 4;
/// Most credit one requester can save.
pub const CREDIT_CAP: u64 = 4 << 20;
/// Sealed mode: bytes per second the shared pool refills.
pub const POOL_RATE: u64 = 4 << 20;
/// Sealed mode: most bytes the pool saves.
pub const POOL_BURST: u64 = 4 << 20;
/// Requesters tracked at most (the least recently heard is forgotten beyond).
pub const MAX_ACCOUNTS: usize = 1024;

#[derive(Debug)]
struct Account {
    credit: u64,
    first: Instant,
    last: Instant,
}

/// Per-requester answer credit, and the sealed-mode pool.
#[derive(Debug)]
pub struct AnswerBudget {
    accounts: HashMap<NodeId, Account, foldhash::fast::RandomState>,
    pool: u64,
    pool_at: Option<Instant>,
    sealed: bool,
    established: Duration,
}

impl AnswerBudget {
    /// A budget; `sealed` enables the pool for requesters heard for `established` or longer.
    pub fn new(sealed: bool, established: Duration) -> AnswerBudget {
        AnswerBudget {
            accounts: HashMap::default(),
            pool: if sealed { POOL_BURST } else { 0 },
            pool_at: None,
            sealed,
            established,
        }
    }

    /// `from` sent a message of `bytes` on the wire; `members` nodes (this one included) may
    /// answer it (1 for a message addressed to this node alone).
    pub fn earn(&mut self, now: Instant, from: NodeId, bytes: usize, members: usize) {
        let gain = (bytes as u64).saturating_mul(AMPLIFICATION) / members.max(1) as u64;
        if !self.accounts.contains_key(&from) && self.accounts.len() >= MAX_ACCOUNTS {
            // O(accounts), only when a new requester arrives at a full table.
            if let Some(oldest) = self
                .accounts
                .iter()
                .min_by_key(|(_, a)| a.last)
                .map(|(id, _)| *id)
            {
                self.accounts.remove(&oldest);
            }
        }
        let a = self.accounts.entry(from).or_insert(Account {
            credit: 0,
            first: now,
            last: now,
        });
        a.credit = a.credit.saturating_add(gain).min(CREDIT_CAP);
        a.last = now;
    }

    fn refill(&mut self, now: Instant) {
        if !self.sealed {
            return;
        }
        if let Some(at) = self.pool_at {
            let add = now.saturating_duration_since(at).as_micros() as u64 * POOL_RATE / 1_000_000;
            self.pool = self.pool.saturating_add(add).min(POOL_BURST);
        }
        self.pool_at = Some(now);
    }

    fn established(&self, now: Instant, a: &Account) -> bool {
        self.sealed && now.saturating_duration_since(a.first) >= self.established
    }

    /// Bytes that may be sent to `from` now.
    pub fn available(&mut self, now: Instant, from: NodeId) -> u64 {
        self.refill(now);
        match self.accounts.get(&from) {
            Some(a) if self.established(now, a) => a.credit.saturating_add(self.pool),
            Some(a) => a.credit,
            None => 0,
        }
    }

    /// Takes `bytes` for an answer to `from` (its credit first, then the pool). False, and
    /// nothing taken, if they are not available.
    pub fn spend(&mut self, now: Instant, from: NodeId, bytes: usize) -> bool {
        let bytes = bytes as u64;
        if self.available(now, from) < bytes {
            return false;
        }
        if let Some(a) = self.accounts.get_mut(&from) {
            let own = a.credit.min(bytes);
            a.credit -= own;
            self.pool -= bytes - own;
        }
        true
    }

    /// Forgets a requester that left.
    pub fn forget(&mut self, who: NodeId) {
        self.accounts.remove(&who);
    }
}

#[cfg(test)]
// Tests start their explicit time from the real clock (proto/clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_answers_are_bounded_by_what_the_requester_sent() {
        let t = Instant::now();
        let mut b = AnswerBudget::new(false, Duration::from_secs(1));
        assert_eq!(b.available(t, NodeId(1)), 0);
        b.earn(t, NodeId(1), 300, 3); // 3 members: 4 × 300 / 3
        assert_eq!(b.available(t, NodeId(1)), 400);
        assert!(!b.spend(t, NodeId(1), 401));
        assert!(b.spend(t, NodeId(1), 400));
        assert!(
            !b.spend(t + Duration::from_secs(60), NodeId(1), 1),
            "no pool in plaintext"
        );
        assert_eq!(b.available(t, NodeId(2)), 0, "per requester");
    }

    #[test]
    fn sealed_members_draw_on_a_shared_bounded_pool_once_established() {
        let t = Instant::now();
        let mut b = AnswerBudget::new(true, Duration::from_secs(1));
        b.earn(t, NodeId(1), 100, 1);
        assert_eq!(b.available(t, NodeId(1)), 400, "not established yet");
        let later = t + Duration::from_secs(2);
        b.earn(later, NodeId(1), 0, 1);
        assert_eq!(b.available(later, NodeId(1)), 400 + POOL_BURST);
        assert!(b.spend(later, NodeId(1), (POOL_BURST + 400) as usize));
        assert_eq!(b.available(later, NodeId(1)), 0);
        // The pool refills with time, for everyone together.
        let after = later + Duration::from_millis(500);
        assert_eq!(b.available(after, NodeId(1)), POOL_RATE / 2);
    }

    #[test]
    fn accounts_are_bounded() {
        let t = Instant::now();
        let mut b = AnswerBudget::new(false, Duration::from_secs(1));
        for i in 0..(MAX_ACCOUNTS as u64 + 10) {
            b.earn(t + Duration::from_micros(i), NodeId(i + 1), 10, 1);
        }
        assert_eq!(b.accounts.len(), MAX_ACCOUNTS);
        assert_eq!(b.available(t, NodeId(1)), 0, "the oldest was forgotten");
    }
}
