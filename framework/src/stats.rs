//! Per-tensor statistics computed over stored bytes, block by block.
//!
//! (Being written: see the `stats` helper task.)
