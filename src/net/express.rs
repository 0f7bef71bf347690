//! The express lane: a writer that finds the network thread idle sends its change itself.
//!
//! At low write rates a change finds the driver parked with nothing to do. Waking it costs a
//! context switch and a cold pass through the runtime before the datagram leaves, which was
//! most of the replication lag between processes. Instead, the writer takes the core's lock (it
//! never waits for it: if the driver holds it, the change goes through the
//! [`super::overflow::ChangeQueue`] as before), publishes its change and writes what the core
//! packs straight to the socket. Only while the node is not streaming (no data message in the
//! last `linger`): a node that sends steadily leaves its changes to the driver, which packs
//! several per datagram and sends several datagrams per system call, off the writers' threads
//! (1 KiB changes, one datagram each, sent by their writers one `sendto` at a time cost the
//! writers a fifth of a core at 8,000 writes/s per node).
//!
//! The driver's timer is a `timerfd` that any thread can move, so a writer whose change needs
//! an earlier timer (the tail announcement after a data message) arms it itself instead of
//! waking the driver to do so; and it fires at the microsecond the core asks for, where tokio's
//! timer wheel has a 1 ms tick.
//!
//! Lock order: the core's lock, then the change queue's. Writers only `try_lock` the core.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use parking_lot::{Mutex, MutexGuard};
use tokio::io::unix::AsyncFd;

use super::overflow::ChangeQueue;
use crate::proto::endpoint::Endpoint;
use crate::proto::message::Item;

/// The protocol core and what the driver and express writers share under its lock.
pub(crate) struct Core {
    /// The I/O-free protocol core.
    pub ep: Endpoint,
    /// The driver is parked with no change staged and nothing left to send: a writer may use
    /// the express lane.
    idle: bool,
    /// The deadline the timer is armed for (`None`: disarmed, or fired since).
    armed: Option<Instant>,
    /// Where datagrams for the whole group go from the express lane: the multicast group, or
    /// the unicast targets (refreshed by the driver).
    targets: Vec<SocketAddr>,
    /// Reused datagram buffers of the express lane.
    bufs: Vec<Vec<u8>>,
}

/// The core behind its lock, the driver's timer, and the express lane's socket (see the
/// module docs).
pub(crate) struct Express {
    core: Mutex<Core>,
    /// A copy of [`Core::idle`] read without the lock (a busy driver costs writers one load).
    idle: AtomicBool,
    timer: TimerFd,
    /// The send socket (a duplicate of the transport's descriptor); `None` turns the lane off.
    sock: Option<std::net::UdpSocket>,
    /// Datagrams the express lane could not send (the reliable stream recovers them by NAK).
    send_errors: AtomicU64,
    /// Changes writers sent themselves.
    changes: AtomicU64,
}

impl Express {
    /// Wraps the core. `sock` is a duplicate of the socket the transport sends from (`None`:
    /// every change goes through the driver, as under fault injection); `targets` is where
    /// group datagrams go (the multicast group; unicast targets arrive with
    /// [`Express::set_targets`]).
    pub(crate) fn new(
        ep: Endpoint,
        sock: Option<std::net::UdpSocket>,
        targets: Vec<SocketAddr>,
    ) -> io::Result<Express> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        if let Some(s) = &sock {
            s.set_nonblocking(true)?;
        }
        Ok(Express {
            core: Mutex::new(Core {
                ep,
                idle: false,
                armed: None,
                targets,
                bufs: Vec::new(),
            }),
            idle: AtomicBool::new(false),
            timer,
            sock,
            send_errors: AtomicU64::new(0),
            changes: AtomicU64::new(0),
        })
    }

    /// The core, for one pass of the driver.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock()
    }

    /// Datagrams the express lane could not send so far.
    pub(crate) fn send_errors(&self) -> u64 {
        self.send_errors.load(Ordering::Relaxed)
    }

    /// Changes writers sent themselves so far.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// The driver's side, before it parks: arms the timer for the core's next deadline (or
    /// `wake_at`, the driver's own, if earlier) and opens the express lane if `idle` (no
    /// change staged, nothing left to send).
    pub(crate) fn park(&self, core: &mut Core, idle: bool, wake_at: Option<Instant>) {
        self.arm_if_earlier(core, wake_at);
        core.idle = idle && self.sock.is_some();
        self.idle.store(core.idle, Ordering::Release);
    }

    /// The driver's side, after a wake-up: closes the express lane for the pass.
    pub(crate) fn unpark(&self, core: &mut Core) {
        Self::close(core, &self.idle);
    }

    /// Closes the express lane (under the core's lock) until the driver parks again.
    fn close(core: &mut Core, idle: &AtomicBool) {
        core.idle = false;
        idle.store(false, Ordering::Release);
    }

    /// Unicast: where group datagrams go now (the driver's address book's targets).
    pub(crate) fn set_targets(core: &mut Core, targets: &[SocketAddr]) {
        if core.targets != targets {
            core.targets.clear();
            core.targets.extend_from_slice(targets);
        }
    }

    /// Arms the timer for the core's next deadline (or `also`, if earlier) if it is earlier
    /// than the one armed (or none is). Only an earlier deadline moves it: under traffic the tail announcement moves
    /// later with every data message, and re-arming for it would cost a system call per pass;
    /// a timer left early fires once for nothing and is re-armed.
    fn arm_if_earlier(&self, core: &mut Core, also: Option<Instant>) {
        let next = match (core.ep.poll_timeout(), also) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = next {
            if core.armed.is_none_or(|a| at < a) {
                self.arm(core, at);
            }
        }
    }

    fn arm(&self, core: &mut Core, at: Instant) {
        // A zero expiration would disarm the timer: a due deadline fires in 1 ns.
        let wait = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let res = self.timer.set(
            Expiration::OneShot(TimeSpec::from_duration(wait)),
            TimerSetTimeFlags::empty(),
        );
        if let Err(e) = res {
            // Cannot happen with a valid descriptor and expiration; if it does, the driver
            // still wakes on every datagram and change, and retries at the next pass.
            tracing::warn!(error = %e, "mccache: cannot arm the network timer");
            core.armed = None;
        } else {
            core.armed = Some(at);
        }
    }

    /// Whether the express lane may be open (a load; [`Express::try_send`] decides). A writer
    /// that finds it closed queues its change without building it for the lane.
    #[inline]
    pub(crate) fn may_send(&self) -> bool {
        self.sock.is_some() && self.idle.load(Ordering::Acquire)
    }

    /// The writer's side: sends `change` (its credit is the caller's) through the express
    /// lane, as the item `make` builds from it, or gives it back if the lane is closed: the
    /// driver is busy or holds the lock, changes are queued or lingering, a data message left
    /// less than `linger` ago (the node is streaming: the driver batches), or the lane is off.
    /// The item is built only to be sent (a record's takes a count on its cache name).
    pub(crate) fn try_send<C>(
        &self,
        change: C,
        make: impl FnOnce(C) -> Item,
        queue: &ChangeQueue,
    ) -> Result<(), C> {
        if !self.idle.load(Ordering::Acquire) {
            return Err(change);
        }
        let Some(sock) = &self.sock else {
            return Err(change);
        };
        let Some(mut guard) = self.core.try_lock() else {
            return Err(change);
        };
        let core = &mut *guard;
        if !core.idle {
            return Err(change);
        }
        // Changes queued, or left to send: the driver has work (the clock is not read).
        let mut now = None;
        let closed = core.ep.outbox_len() > 0
            || !queue.is_empty()
            // A node that is sending steadily leaves its changes to the driver, which batches
            // them (several datagrams per system call) off the writers' threads.
            || core.ep.is_streaming(*now.insert(Instant::now()));
        if closed {
            // It stays closed until the driver's next pass (which re-opens it if it parks
            // idle again): every reason above lasts at least until then, since this change
            // goes through the queue and wakes the driver, or lingers until a deadline the
            // driver's timer is armed for. The writers that follow pay one load, not the
            // core's lock, the queue's and a clock reading each (a flat-out writer while
            // the driver lingered: once per write).
            Self::close(core, &self.idle);
            return Err(change);
        }
        let now = now.unwrap_or_else(Instant::now);
        core.ep.publish(now, make(change));
        self.changes.fetch_add(1, Ordering::Relaxed);
        let mut n = 0;
        loop {
            if core.bufs.len() <= n {
                core.bufs.push(Vec::new());
            }
            // The lane is open only when the driver left nothing to send, so everything here
            // is this change's data message (for the whole group).
            if core.ep.poll_transmit(now, &mut core.bufs[n]).is_none() {
                break;
            }
            n += 1;
        }
        // Armed before the sends: a receiver on this host that a send wakes is often placed on
        // this thread's core, and waits until this thread yields it; the system call that
        // arms the timer is then not part of that wait.
        self.arm_if_earlier(core, None);
        let mut failed = 0;
        for buf in &core.bufs[..n] {
            for to in &core.targets {
                if let Err(e) = sock.send_to(buf, to) {
                    tracing::debug!(error = %e, %to, "express send failed");
                    failed += 1;
                }
            }
        }
        if failed > 0 {
            self.send_errors.fetch_add(failed, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The timer, registered with the driver's runtime (call inside it).
    pub(crate) fn timer(&self) -> io::Result<AsyncFd<BorrowedFd<'_>>> {
        super::sockopt::watch(self.timer.as_fd())
    }

    /// Resolves when the timer has fired (cancel-safe); the core's armed deadline is then
    /// forgotten, so the next [`Express::park`] arms it again.
    pub(crate) async fn fired(&self, timer: &AsyncFd<BorrowedFd<'_>>) -> io::Result<()> {
        loop {
            let mut ready = timer.readable().await?;
            match self.timer.wait() {
                Ok(()) => {
                    ready.clear_ready();
                    self.core.lock().armed = None;
                    return Ok(());
                }
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::endpoint::EndpointConfig;
    use crate::proto::record::{Op, Record};
    use crate::proto::version::{NodeId, Version};
    use crate::proto::wire::WireConfig;

    fn item(k: u8) -> Item {
        Item::Rec {
            cache: "c".into(),
            rec: Record {
                key: vec![k].into(),
                version: Version::ZERO,
                op: Op::Del,
            },
        }
    }

    #[test]
    fn a_writer_that_finds_the_lane_busy_closes_it_until_the_driver_parks_again() {
        let cfg = EndpointConfig::new(
            "n".into(),
            WireConfig::default(),
            Duration::from_secs(1),
            Duration::from_secs(10),
        );
        let ep = Endpoint::new(cfg, NodeId::from_random(1), Instant::now());
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let express = Express::new(ep, Some(sock), Vec::new()).unwrap();
        let queue = ChangeQueue::default();
        express.park(&mut express.lock(), true, None);
        assert!(express.may_send());
        // A change waits in the queue: the lane is closed for this one and those after it.
        queue.push(item(1));
        assert!(express.try_send(item(2), |i| i, &queue).is_err());
        assert!(!express.may_send(), "closed until the driver's next pass");
        assert!(express.try_send(item(3), |i| i, &queue).is_err());
        assert_eq!(express.changes(), 0);
        // The driver's pass takes the queue and parks idle: open again, and a change goes.
        let mut staged = std::collections::VecDeque::new();
        let mut spare = crate::net::overflow::Spare::default();
        assert!(queue.take_all(&mut staged, &mut spare));
        express.unpark(&mut express.lock());
        assert!(!express.may_send());
        express.park(&mut express.lock(), true, None);
        assert!(express.may_send());
        assert!(express.try_send(item(4), |i| i, &queue).is_ok());
        assert_eq!(express.changes(), 1);
    }
}
