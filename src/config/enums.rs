//! The configuration's enumerations: `cache_mode`, `monkey_tantrum_side` and `overload`
//! (the transport's and the memcached tier's are in `transport.rs` and `backing.rs`).

use serde::{Deserialize, Serialize};

/// How a cache replicates its writes to peers (`cache_mode`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
#[non_exhaustive]
pub enum CacheMode {
    /// `0`: a peer updates a key only if it already holds it (McCache's documented meaning).
    UpdateIfPresent,
    /// `1`: full replication (the default).
    #[default]
    Replicate,
    /// `2`: invalidate: peers drop their copy, so their next read misses.
    Invalidate,
}

impl TryFrom<u8> for CacheMode {
    type Error = String;
    fn try_from(v: u8) -> std::result::Result<Self, String> {
        match v {
            0 => Ok(CacheMode::UpdateIfPresent),
            1 => Ok(CacheMode::Replicate),
            2 => Ok(CacheMode::Invalidate),
            _ => Err(format!("{v} is not a cache mode (0, 1 or 2)")),
        }
    }
}

impl From<CacheMode> for u8 {
    fn from(m: CacheMode) -> u8 {
        match m {
            CacheMode::UpdateIfPresent => 0,
            CacheMode::Replicate => 1,
            CacheMode::Invalidate => 2,
        }
    }
}

/// Which direction `monkey_tantrum` drops datagrams in (`monkey_tantrum_side`).
///
/// ```
/// use mccache::TantrumSide;
///
/// assert!(TantrumSide::Both.drops_sends() && TantrumSide::Both.drops_receives());
/// assert!(!TantrumSide::Recv.drops_sends());
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TantrumSide {
    /// `"send"`: drop outgoing datagrams only.
    Send,
    /// `"recv"`: drop incoming datagrams only.
    Recv,
    /// `"both"`: drop in both directions (the default).
    #[default]
    Both,
}

impl TantrumSide {
    /// Whether outgoing datagrams are subject to the tantrum.
    pub fn drops_sends(self) -> bool {
        matches!(self, TantrumSide::Send | TantrumSide::Both)
    }

    /// Whether incoming datagrams are subject to the tantrum.
    pub fn drops_receives(self) -> bool {
        matches!(self, TantrumSide::Recv | TantrumSide::Both)
    }

    /// The configuration spelling: `"send"`, `"recv"` or `"both"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TantrumSide::Send => "send",
            TantrumSide::Recv => "recv",
            TantrumSide::Both => "both",
        }
    }
}

/// What a local write does when the outbound replication queue (`queue_max`) is full
/// (`overload`).
///
/// ```
/// let config = mccache::Config::from_toml_str(r#"overload = "block""#)?;
/// assert_eq!(config.overload, mccache::Overload::Block);
/// # Ok::<(), mccache::Error>(())
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Overload {
    /// `"repair"` (the default): the write is stored locally and returns at once; its change is
    /// not queued, and an anti-entropy repair of the caches starts at once, so peers get the
    /// newer versions shortly after the load drops.
    #[default]
    Repair,
    /// `"block"`: the writer waits for queue space, at most `overload_timeout`, then fails with
    /// [`crate::Error::Overloaded`] (nothing stored). Back-pressure.
    Block,
    /// `"error"`: the write fails at once with [`crate::Error::Overloaded`] (nothing stored).
    Error,
}

impl Overload {
    /// The configuration spelling: `"repair"`, `"block"` or `"error"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Overload::Repair => "repair",
            Overload::Block => "block",
            Overload::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tantrum_side_directions() {
        assert!(TantrumSide::Send.drops_sends() && !TantrumSide::Send.drops_receives());
        assert!(!TantrumSide::Recv.drops_sends() && TantrumSide::Recv.drops_receives());
        assert_eq!(TantrumSide::default().as_str(), "both");
    }

    #[test]
    fn cache_modes_are_numbers() {
        for m in [
            CacheMode::UpdateIfPresent,
            CacheMode::Replicate,
            CacheMode::Invalidate,
        ] {
            assert_eq!(CacheMode::try_from(u8::from(m)), Ok(m));
        }
        assert!(CacheMode::try_from(3).is_err());
    }
}
