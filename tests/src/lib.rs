//! Shared helpers for the end-to-end tests in `tests/tests/`: real `cairn` processes
//! ([`harness`]), the network namespaces they run in ([`namespace`]), and serial cables
//! made of pseudo-terminals ([`cable`]).

pub mod cable;
pub mod harness;
pub mod namespace;
