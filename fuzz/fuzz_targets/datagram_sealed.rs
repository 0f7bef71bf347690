#![no_main]
//! Fuzz target `datagram_sealed`: see `fuzz/common.rs`.

#[path = "../common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = common::datagram_sealed(data);
});
