//! Shared helpers for the end-to-end tests in `tests/tests/`: real `cairn` processes
//! ([`harness`]), the network namespaces they run in ([`namespace`]), serial cables
//! made of pseudo-terminals ([`cable`]), and virtual LoRa radios ([`vradio`]).

pub mod cable;
pub mod harness;
pub mod namespace;
pub mod vradio;
