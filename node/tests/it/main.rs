//! End-to-end tests of `pk` as a user runs it: a real binary, real swtpm and SoftHSM2
//! processes, a node directory on disk.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod auth_matrix;
mod crash;
mod gestalts;
mod github;
mod harness;
mod hostile;
mod keyslots;
mod logs;
mod peers;
mod relay;
mod secrets;
mod yubikey;
