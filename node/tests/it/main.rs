//! End-to-end tests of `pk` as a user runs it: a real binary, real swtpm and SoftHSM2
//! processes, a node directory on disk.

mod harness;
mod keyslots;
