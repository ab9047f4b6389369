//! Tensor layouts other than dense.

pub mod sparse_coo;
