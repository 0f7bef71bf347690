//! Why a received datagram was dropped, and counters for each reason.
//!
//! Network input is hostile: nothing that arrives is ever returned to a cache user as an error
//! or allowed to panic. Every datagram that is not accepted is classified by a [`DropReason`]
//! and counted in a [`DropCounters`], which the metrics layer exposes.

use serde::Serialize;

/// Declares [`DropReason`], its names and [`DropCounters`] from one list, so the three never
/// drift apart.
macro_rules! drop_reasons {
    ($( $(#[doc = $doc:literal])* $variant:ident => $field:ident, $name:literal; )*) => {
        /// Why a datagram (or a partly reassembled message) was dropped.
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
    /// Our own datagram, looped back by multicast.
    OwnEcho => own_echo, "own_echo";
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
        assert_eq!(names.len(), DropReason::ALL.len());

        let mut c = DropCounters::default();
        for (i, &r) in DropReason::ALL.iter().enumerate() {
            c.add(r, i as u64 + 1);
        }
        for (i, (r, n)) in c.iter().enumerate() {
            assert_eq!(r, DropReason::ALL[i]);
            assert_eq!(n, i as u64 + 1);
        }
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["own_echo"], DropReason::ALL.len() as u64);
        assert_eq!(json["bad_magic"], 1);
    }
}
