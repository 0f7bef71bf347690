//! mccache's integration tests, in one test binary: `cargo test --release --test it`, one
//! module with `cargo test --release --test it sim::`. Each module is one area, tested through
//! the public API the way an application uses it; several start separate processes (the
//! `mccache` binary, this binary re-run as one test, or the `fault_node` example).
//!
//! One binary instead of one per file: the 38 binaries took 214 s of CPU to compile and link
//! (each with its own copy of mccache's generic code), this one 70 s, and the files ran one
//! after another where the modules' tests now run side by side.
//! The memcached tier's tests, which need the `memcached` feature, stay apart
//! (`tests/memcached.rs`, `tests/config_backing.rs`) so that `.ci/run` builds only them again
//! with it.

mod hostile_util;
mod support;

mod amplification;
mod async_api;
mod builder;
mod busy_node;
mod cache_api;
mod cache_concurrency;
mod cache_model;
mod cli;
mod clock_replay;
mod cluster;
mod config;
mod config_process;
mod diag_netns;
mod diagnostics;
mod direct_path;
mod flood;
mod fuzz_corpus;
mod hostile_audit;
mod hostile_input;
mod keyring;
mod metrics_scrape;
mod multiprocess;
mod netns_faults;
mod netns_resurrection;
mod netns_unicast;
mod overload;
mod peer_failure;
mod peer_load;
mod sim;
mod sim_unicast;
mod swr;
mod tantrum;
mod unicast;
mod userside;
mod wakeups;
mod wire_hostile;
mod wire_roundtrip;
