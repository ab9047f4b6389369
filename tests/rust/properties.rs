//! Property tests (proptest): random tensors round-trip bit-exact; damaged files give typed errors.
