//! Single flight: one load per missing key at a time, the other callers wait for its value.

use parking_lot::{Condvar, Mutex};

/// A single-flight load in progress. Blocking waiters sleep on `done`, async waiters on
/// `event`; whoever completes the flight sets `state` and wakes both.
pub(crate) struct Flight<V> {
    pub(crate) state: Mutex<Option<Option<V>>>,
    pub(crate) done: Condvar,
    pub(crate) event: event_listener::Event,
}

impl<V> Flight<V> {
    pub(crate) fn new() -> Flight<V> {
        Flight {
            state: Mutex::new(None),
            done: Condvar::new(),
            event: event_listener::Event::new(),
        }
    }

    /// Completes the flight with `value` (`None`: the load failed) and wakes every waiter.
    pub(crate) fn complete(&self, value: Option<V>) {
        *self.state.lock() = Some(value);
        self.done.notify_all();
        self.event.notify(usize::MAX);
    }
}
