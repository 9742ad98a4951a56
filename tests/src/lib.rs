//! Shared helpers for the end-to-end tests in `tests/tests/`: real `cairn` processes
//! ([`harness`]) and the network namespaces they run in ([`namespace`]).

pub mod harness;
pub mod namespace;
