//! # cairn-node: the Cairn node as a library
//!
//! What the `cairn` command and daemon are made of: identity, contacts, end-to-end sealing,
//! the node's home directory and its message database.

pub mod app;
pub mod at_rest;
pub mod contact;
pub mod daemon;
pub mod direct;
pub mod home;
pub mod identity;
pub mod pair_link;
pub mod seal;
