//! Why a datagram, message or record was dropped, and counters for each reason.
//!
//! Network input is hostile: nothing that arrives is ever returned to a cache user as an error
//! or allowed to panic. Every datagram, message or record that is not accepted (and every
//! outgoing one that cannot be sent) is classified by a [`DropReason`] and counted in a
//! [`DropCounters`]. Users see them by name in `NetworkMetrics::dropped`
//! ([`DropCounters::to_map`]), the names being [`DropReason::as_str`].

use serde::Serialize;

/// Declares [`DropReason`], its names and [`DropCounters`] from one list, so the three never
/// drift apart.
macro_rules! drop_reasons {
    ($( $(#[doc = $doc:literal])* $variant:ident => $field:ident, $name:literal; )*) => {
        /// Why a datagram (or a partly reassembled message, a message, a record) was dropped.
        #[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
        pub enum DropReason {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl DropReason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant),*];

            /// A stable `snake_case` name, used in metrics and logs.
            ///
            /// ```
            /// use mccache_proto::drop::DropReason;
            /// assert_eq!(DropReason::AuthFailure.as_str(), "auth_failure");
            /// ```
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }
        }

        /// One counter per [`DropReason`].
        ///
        /// ```
        /// use mccache_proto::drop::{DropCounters, DropReason};
        /// let mut c = DropCounters::default();
        /// c.record(DropReason::Replay);
        /// c.record(DropReason::Replay);
        /// assert_eq!(c.get(DropReason::Replay), 2);
        /// assert_eq!(c.total(), 2);
        /// ```
        #[derive(Clone, Default, PartialEq, Eq, Debug, Serialize)]
        pub struct DropCounters {
            $( $(#[doc = $doc])* pub $field: u64, )*
        }

        impl DropCounters {
            /// Adds one to the counter of `reason`.
            pub fn record(&mut self, reason: DropReason) {
                self.add(reason, 1);
            }

            /// Adds `n` to the counter of `reason` (saturating).
            pub fn add(&mut self, reason: DropReason, n: u64) {
                let c = match reason {
                    $(DropReason::$variant => &mut self.$field,)*
                };
                *c = c.saturating_add(n);
            }

            /// The counter of `reason`.
            pub fn get(&self, reason: DropReason) -> u64 {
                match reason {
                    $(DropReason::$variant => self.$field,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// The datagram does not start with the magic bytes `"MC"`: not ours.
    BadMagic => bad_magic, "bad_magic";
    /// The wire version is not one this build speaks.
    BadVersion => bad_version, "bad_version";
    /// A sealed datagram failed authentication (wrong key, other cluster label, tampering), or a
    /// plaintext datagram arrived while this node requires encryption.
    AuthFailure => auth_failure, "auth_failure";
    /// A structurally invalid header or fragment: reserved bits set, zero node id or packet
    /// number, fragment index >= count, inconsistent fragment counts or sizes, empty fragment.
    Malformed => malformed, "malformed";
    /// A plaintext datagram whose crc32 does not match its content.
    BadChecksum => bad_checksum, "bad_checksum";
    /// A fragment that was already received for the same message.
    Duplicate => duplicate, "duplicate";
    /// The header's cluster id is not the crc32 of our `cluster_name`.
    ForeignCluster => foreign_cluster, "foreign_cluster";
    /// The packet number was already accepted from this sender, or is older than its window.
    Replay => replay, "replay";
    /// Shorter than a header (plus checksum or tag).
    TooShort => too_short, "too_short";
    /// Sealed with a key id that matches no key of our keyring (or we have no keys).
    UnknownKeyId => unknown_key_id, "unknown_key_id";
    /// The message is, or claims to be, larger than `max_message_size`.
    Oversize => oversize, "oversize";
    /// A reassembly bound (bytes held, assemblies per sender) was hit; the oldest assembly was
    /// evicted, or the new fragment could not be held at all.
    ReassemblyLimit => reassembly_limit, "reassembly_limit";
    /// A partly reassembled message made no progress within the reassembly timeout.
    Expired => expired, "expired";
    /// Sealed mode: sent (by the header's authenticated send time) longer ago than the replay
    /// horizon, or further in the future than `max_clock_skew`, or not after the floor of a
    /// forgotten sender: it cannot be told apart from a replay.
    Stale => stale, "stale";
    /// Our own datagram, looped back by multicast.
    OwnEcho => own_echo, "own_echo";
    /// A data message (not a fragment) already received from its sender.
    DuplicateMessage => duplicate_message, "duplicate";
    /// A message from a new sender while the membership table is full (`max_peers`).
    MembershipFull => membership_full, "membership_full";
    /// An announcement that would track more missing sequence numbers than
    /// [`crate::endpoint::MAX_TRACKED_GAPS`]: the stream jumped ahead instead.
    GapBudget => gap_budget, "gap_budget";
    /// A NAK not served because [`crate::endpoint::MAX_QUEUED_TRANSMIT_BYTES`] were queued.
    NakShed => nak_shed, "nak_shed";
    /// An answer its requester's answer budget did not pay for (the budget grows with what
    /// it sends; it asks again).
    AnswerBudget => answer_budget, "answer_budget";
    /// A peer's anti-entropy digest left unanswered: this node had answered
    /// [`crate::endpoint::DIGEST_ANSWERS_PER_PULSE`] digests within the pulse period and had
    /// answered this peer recently (the others answer it; its next pulse asks again).
    DigestPassed => digest_passed, "digest_passed";
    /// A record at or below the cache's tombstone horizon for a key it does not hold.
    BelowHorizon => below_horizon, "below_horizon";
    /// A record whose value the cache could not decode.
    UndecodableRecord => undecodable_record, "undecodable_record";
    /// A version, clear floor or horizon further ahead of this node's clock than
    /// `max_clock_skew`.
    ClockSkew => clock_skew, "clock_skew";
    /// A message this node could not encode (larger than `max_message_size`): not sent.
    Unsendable => unsendable, "unsendable";
    /// A datagram the socket refused to send (counted by the driver).
    SendError => send_error, "send_error";
}

impl DropCounters {
    /// Every `(reason, count)` pair, in declaration order, zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(move |&r| (r, self.get(r)))
    }

    /// The sum of all counters.
    pub fn total(&self) -> u64 {
        self.iter().fold(0u64, |acc, (_, n)| acc.saturating_add(n))
    }

    /// The non-zero counters by name, as `NetworkMetrics::dropped` shows them. Two reasons
    /// may share a name (a duplicate fragment and a duplicate data message are both
    /// `duplicate`): their counts add up.
    pub fn to_map(&self) -> std::collections::BTreeMap<String, u64> {
        let mut m = std::collections::BTreeMap::new();
        for (r, n) in self.iter().filter(|(_, n)| *n > 0) {
            let c: &mut u64 = m.entry(r.as_str().to_string()).or_default();
            *c = c.saturating_add(n);
        }
        m
    }

    /// Adds every counter of `other` into `self`.
    pub fn merge(&mut self, other: &DropCounters) {
        for (r, n) in other.iter() {
            self.add(r, n);
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_counters_are_independent() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        // `duplicate` names both duplicate fragments and duplicate data messages.
        assert_eq!(names.len(), DropReason::ALL.len() - 1);

        let mut c = DropCounters::default();
        for (i, &r) in DropReason::ALL.iter().enumerate() {
            c.add(r, i as u64 + 1);
        }
        for (i, (r, n)) in c.iter().enumerate() {
            assert_eq!(r, DropReason::ALL[i]);
            assert_eq!(n, i as u64 + 1);
        }
        let json = serde_json::to_value(&c).unwrap();
        let own_echo = DropReason::ALL
            .iter()
            .position(|r| *r == DropReason::OwnEcho)
            .unwrap();
        assert_eq!(json["own_echo"], own_echo as u64 + 1);
        assert_eq!(json["bad_magic"], 1);
    }

    #[test]
    fn the_map_holds_non_zero_counters_by_name_and_adds_shared_names() {
        let mut c = DropCounters::default();
        assert!(c.to_map().is_empty());
        c.record(DropReason::Duplicate);
        c.add(DropReason::DuplicateMessage, 2);
        c.record(DropReason::ClockSkew);
        let m = c.to_map();
        assert_eq!(m.len(), 2);
        assert_eq!(m["duplicate"], 3);
        assert_eq!(m["clock_skew"], 1);
    }
}
