//! # cairn-tools: the mesh simulator, benchmarks and diagnostics
//!
//! Everything here drives the real protocol cores from `cairn-sync` (and later the
//! transports): the simulator runs real sync engines over simulated contacts in virtual time;
//! the benchmarks measure them and print one JSON object so a script can compare runs.

pub mod bench;
pub mod sim;
