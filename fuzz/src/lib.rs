//! Fuzzing of deathtensors with cargo-fuzz (libFuzzer).
//!
//! This crate is not a member of the root workspace: it needs a nightly
//! compiler and sanitizer flags (`cargo +nightly fuzz ...`). The target
//! bodies live in [`harness`], which `tests/rust/fuzz_regressions.rs` also
//! includes to replay saved inputs; `fuzz/run.sh` builds a seed corpus and
//! runs every target. See docs/security.md.

#![warn(missing_docs)]

pub mod harness;
