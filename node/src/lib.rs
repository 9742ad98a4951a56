//! # cairn-node: the Cairn node as a library
//!
//! What the `cairn` command and daemon are made of: identity, contacts, end-to-end sealing.

pub mod contact;
pub mod identity;
pub mod seal;
