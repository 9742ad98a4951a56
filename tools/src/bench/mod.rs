//! `cairn-bench` subcommands. Each prints one JSON object on stdout.

pub mod lan;
pub mod radio;
pub mod reconcile;
pub mod store;
