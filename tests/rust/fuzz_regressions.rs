//! Regression tests: every input that crashed, hung or exhausted memory under cargo-fuzz, replayed.
