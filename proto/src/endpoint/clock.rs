//! Peers' clocks: versions (and clear floors, horizons) too far ahead of this node's wall clock
//! are refused, and clock offsets are measured from heartbeats and warned about.

use super::*;
use crate::version::{Version, too_far_ahead};

/// Shortest interval between two warnings of one kind (clock skew, clock offset).
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Endpoint {
    /// True (and counted as `clock_skew`, with a rate-limited warning) if `version` is further
    /// ahead of this node's wall clock than `max_clock_skew`: it must not be applied, stored
    /// as a floor or horizon, or observed into the clock.
    pub(super) fn refuse_ahead(&mut self, now: Instant, version: &Version, from: NodeId) -> bool {
        let skew = self.cfg.max_clock_skew.as_millis().min(u64::MAX as u128) as u64;
        if self.wall_ms == 0 || !too_far_ahead(version, self.wall_ms, skew) {
            return false;
        }
        self.drops.record(DropReason::ClockSkew);
        if self
            .warned_skew
            .is_none_or(|t| now.saturating_duration_since(t) >= WARN_EVERY)
        {
            self.warned_skew = Some(now);
            tracing::warn!(
                peer = %from,
                ahead_ms = version.millis().saturating_sub(self.wall_ms),
                max_clock_skew_ms = skew,
                "refused a version further ahead of this node's clock than max_clock_skew \
                 (a peer's clock is wrong, or the datagram is forged)"
            );
        }
        true
    }

    /// Whether a clock warning may be logged now (at most one per [`WARN_EVERY`]); if so, the
    /// next one waits from now.
    fn offset_warning_due(&mut self, now: Instant) -> bool {
        if self
            .warned_offset
            .is_some_and(|t| now.saturating_duration_since(t) < WARN_EVERY)
        {
            return false;
        }
        self.warned_offset = Some(now);
        true
    }

    /// An authentic datagram stamped too far from this node's clock: one of the two clocks is
    /// wrong (or it is a replay). Rate-limited warning.
    pub(super) fn warn_stale(&mut self, now: Instant, sender: NodeId, offset: i64) {
        let skew = self.cfg.max_clock_skew.as_millis().min(i64::MAX as u128) as i64;
        if offset.abs() <= skew.saturating_mul(2) {
            // Plausibly an old replay rather than a clock problem: counted, not warned about.
            return;
        }
        if !self.offset_warning_due(now) {
            return;
        }
        if self.peers.is_empty() {
            self.metrics.clock_offset_ms = -offset;
        }
        tracing::warn!(
            peer = %sender,
            offset_ms = offset,
            "refusing authentic datagrams stamped this far from this node's clock (beyond \
             the replay horizon / max_clock_skew): this node's clock or the peer's is wrong"
        );
    }

    /// Notes a peer's wall clock from its heartbeat; warns (rate-limited) when this node's
    /// clock is more than half of `max_clock_skew` away from every peer's, or one peer's is.
    pub(super) fn on_peer_clock(&mut self, now: Instant, from: NodeId, their_wall: u64) {
        if their_wall == 0 || self.wall_ms == 0 {
            return;
        }
        let offset = (their_wall as i128 - self.wall_ms as i128)
            .clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        p.clock_offset_ms = Some(offset);
        let limit = (self.cfg.max_clock_skew.as_millis() / 2).min(i64::MAX as u128) as i64;
        let offsets: Vec<i64> = self
            .peers
            .values()
            .filter_map(|p| p.clock_offset_ms)
            .collect();
        let mut sorted = offsets.clone();
        sorted.sort_unstable();
        self.metrics.clock_offset_ms = sorted
            .get(sorted.len().saturating_sub(1) / 2)
            .map_or(0, |m| -m);
        if offset.unsigned_abs() <= limit as u64 {
            return;
        }
        if !self.offset_warning_due(now) {
            return;
        }
        if offsets
            .iter()
            .all(|o| o.unsigned_abs() > limit as u64 && o.signum() == offset.signum())
        {
            tracing::warn!(
                offset_ms = -offset,
                peers = offsets.len(),
                "this node's clock is {} of every peer's by more than half of max_clock_skew: \
                 fix its time synchronisation (its writes may be refused or lose to older ones)",
                if offset > 0 { "behind" } else { "ahead" }
            );
        } else {
            tracing::warn!(
                peer = %from,
                offset_ms = offset,
                "a peer's clock differs from this node's by more than half of max_clock_skew"
            );
        }
    }
}

#[cfg(test)]
// Tests start their explicit time from the real clock (proto/clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn versions_too_far_ahead_are_refused_and_counted() {
        let t0 = Instant::now();
        let mut ep = endpoint(1, t0);
        let mut app = MapApp::default();
        ep.handle_timeout(t0, &mut app); // takes the wall clock
        let wall = app.wall_ms();
        let skew = ep.cfg.max_clock_skew.as_millis() as u64;
        let near = version_at(wall, NodeId(2));
        assert!(!ep.refuse_ahead(t0, &near, NodeId(2)));
        let far = version_at(wall + skew + 1000, NodeId(2));
        assert!(ep.refuse_ahead(t0, &far, NodeId(2)));
        assert_eq!(ep.drops().get(DropReason::ClockSkew), 1);
    }

    #[test]
    fn a_peer_clock_offset_is_measured_from_its_heartbeat() {
        let t0 = Instant::now();
        let (mut a, mut b) = (endpoint(1, t0), endpoint(2, t0));
        let mut app_a = MapApp::default();
        let mut app_b = MapApp {
            wall: MapApp::default().wall + 5_000,
            ..MapApp::default()
        };
        a.handle_timeout(t0, &mut app_a);
        b.handle_timeout(t0, &mut app_b);
        deliver(&mut b, &mut a, &mut app_a, t0);
        assert_eq!(a.metrics().clock_offset_ms, -5_000);
    }
}
