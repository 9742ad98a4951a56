//! A `FrameLink` fed an honest peer's frames (delivered, lost, repeated, reordered) mixed
//! with hostile ones, and timers: see `link_common.rs` for the input and the invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "link_common.rs"]
#[allow(dead_code)]
mod link_common;

fuzz_target!(|data: &[u8]| link_common::run(data));
