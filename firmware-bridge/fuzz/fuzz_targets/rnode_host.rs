//! The RNode host driver, after a reset, fed arbitrary serial bytes from "the device" in
//! arbitrary pieces, with the clock advancing and deadlines handled as a real caller would:
//! never a panic, deadlines never in the past of what the driver was told, and frames the
//! caller sends are either taken or refused with a typed error.
//!
//! Input layout: byte 0 the chunk size, byte 1 how far the clock moves per chunk (in 8 ms
//! steps, so both the detect retries and the flow-control deadlines come due); the rest is
//! what the device says. The seeds hold a complete handshake (detect answer, version, every
//! echo, radio on) so the fuzzer starts from a configured radio as often as from a silent one.
#![no_main]

use cairn_firmware_bridge::rnode::{RnodeConfig, RnodeHost};
use cairn_firmware_bridge::{BridgeError, Firmware, LoraParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [chunk, step, line @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let step = u64::from(*step) * 8;

    let mut host = RnodeHost::new(LoraParams::sf7(), RnodeConfig::default());
    let mut now = 1_000;
    host.reset(now);
    for piece in line.chunks(chunk) {
        now += step;
        host.handle_serial(now, piece);
        if host.poll_timeout().is_some_and(|due| due <= now) {
            if host.handle_timeout(now).is_err() {
                host.reset(now);
            } else if let Some(next) = host.poll_timeout() {
                // A handled deadline is never due again at once: no busy loop for the caller.
                assert!(next > now, "deadline {next} still due at {now}");
            }
        }
        match host.send_frame(piece) {
            Ok(()) => assert!(host.is_ready() && piece.len() <= host.max_frame()),
            Err(BridgeError::NotReady) => assert!(!host.is_ready()),
            Err(BridgeError::FrameTooLarge { len, max }) => {
                assert_eq!(len, piece.len());
                assert!(len > max);
            }
            Err(other) => panic!("send_frame refused with {other:?}"),
        }
        while host.poll_serial().is_some() {}
        while host.poll_event().is_some() {}
    }
});
