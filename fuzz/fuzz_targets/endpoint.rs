#![no_main]
//! Fuzz target `endpoint`: see `fuzz/common.rs`.

#[path = "../common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = common::endpoint(data);
});
