//! Why datagrams from other senders could not be opened, counted by likely cause, with a
//! rate-limited warning naming the cause and the sender. Two nodes with different keys or
//! cluster names otherwise each look alone, with no message at all.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::proto::drop::DropReason;
use crate::proto::header::Header;

/// Likely cause of a datagram from another sender that this node could not open.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OpenFailure {
    /// Sealed with a key this node does not hold (another `crypto_key`), or tampered with.
    OtherKey,
    /// Sent by a node with another `cluster_name` on the same group and port.
    OtherCluster,
    /// Plaintext (the sender has no `crypto_key`) while this node requires a key.
    PlaintextSender,
    /// Sealed while this node has no `crypto_key` (it runs in plaintext).
    SealedSender,
}

impl OpenFailure {
    /// Every cause, in declaration order.
    pub const ALL: &'static [OpenFailure] = &[
        OpenFailure::OtherKey,
        OpenFailure::OtherCluster,
        OpenFailure::PlaintextSender,
        OpenFailure::SealedSender,
    ];

    /// What to check, in one sentence.
    pub fn hint(self) -> &'static str {
        match self {
            OpenFailure::OtherKey => {
                "sealed with another crypto_key: give every node of the cluster the same key"
            }
            OpenFailure::OtherCluster => {
                "sent by a node with another cluster_name on the same multicast group and port"
            }
            OpenFailure::PlaintextSender => {
                "the sender has no crypto_key (plaintext) while this node requires one"
            }
            OpenFailure::SealedSender => {
                "the sender seals its datagrams with a crypto_key while this node has none"
            }
        }
    }

    /// Classifies a drop: `None` for reasons that are not about keys or cluster names
    /// (replays, fragments, garbage).
    pub(crate) fn classify(reason: DropReason, datagram: &[u8], sealed: bool) -> Option<Self> {
        match reason {
            DropReason::ForeignCluster => Some(OpenFailure::OtherCluster),
            DropReason::AuthFailure => {
                let plaintext = Header::decode(datagram).is_ok_and(|h| !h.encrypted);
                Some(if sealed && plaintext {
                    OpenFailure::PlaintextSender
                } else {
                    OpenFailure::OtherKey
                })
            }
            DropReason::UnknownKeyId if !sealed => Some(OpenFailure::SealedSender),
            DropReason::UnknownKeyId => Some(OpenFailure::OtherKey),
            _ => None,
        }
    }
}

impl fmt::Display for OpenFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hint())
    }
}

/// The last datagram this node could not open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Unopened {
    /// The sender's address.
    pub from: SocketAddr,
    /// The likely cause.
    pub cause: OpenFailure,
    /// When it arrived.
    pub at: SystemTime,
}

/// How often the warning for one cause is repeated at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Counters and the rate limiter, kept by the driver and read by `Node::health`.
#[derive(Default, Debug)]
pub(crate) struct OpenFailures {
    counts: BTreeMap<OpenFailure, u64>,
    last: Option<Unopened>,
    /// Per cause: when it was last warned about, and how many arrived since.
    warned: BTreeMap<OpenFailure, (Instant, u64)>,
}

impl OpenFailures {
    /// Counts one datagram from `from` that could not be opened, and warns (at most once per
    /// cause every 10 s, with the count since the last warning).
    pub(crate) fn record(&mut self, cause: OpenFailure, from: SocketAddr, now: Instant) {
        *self.counts.entry(cause).or_default() += 1;
        self.last = Some(Unopened {
            from,
            cause,
            at: SystemTime::now(),
        });
        let due = match self.warned.get_mut(&cause) {
            None => Some(1),
            Some((at, since)) => {
                *since += 1;
                (now.duration_since(*at) >= WARN_EVERY).then_some(*since)
            }
        };
        if let Some(n) = due {
            self.warned.insert(cause, (now, 0));
            crate::warn::user_warning(&format!(
                "{n} datagram(s) from {from} could not be opened: {}",
                cause.hint()
            ));
        }
    }

    /// Datagrams counted for each cause (zeros left out).
    pub(crate) fn counts(&self) -> BTreeMap<OpenFailure, u64> {
        self.counts.clone()
    }

    /// The last one.
    pub(crate) fn last(&self) -> Option<Unopened> {
        self.last.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_and_rate_limit() {
        assert_eq!(
            OpenFailure::classify(DropReason::ForeignCluster, &[], true),
            Some(OpenFailure::OtherCluster)
        );
        assert_eq!(
            OpenFailure::classify(DropReason::UnknownKeyId, &[], false),
            Some(OpenFailure::SealedSender)
        );
        assert_eq!(
            OpenFailure::classify(DropReason::UnknownKeyId, &[], true),
            Some(OpenFailure::OtherKey)
        );
        assert_eq!(OpenFailure::classify(DropReason::Replay, &[], true), None);
        let mut f = OpenFailures::default();
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..5 {
            f.record(OpenFailure::OtherKey, from, t0 + Duration::from_millis(i));
        }
        assert_eq!(f.counts()[&OpenFailure::OtherKey], 5);
        // One warning so far; four counted towards the next one.
        assert_eq!(f.warned[&OpenFailure::OtherKey].1, 4);
        f.record(OpenFailure::OtherKey, from, t0 + WARN_EVERY);
        assert_eq!(f.warned[&OpenFailure::OtherKey].1, 0);
        assert_eq!(f.last().unwrap().from, from);
    }
}
