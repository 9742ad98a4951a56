//! `cairn-bench` subcommands. Each prints one JSON object on stdout.

pub mod lan;
pub mod reconcile;
pub mod store;
