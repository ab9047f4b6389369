//! Converters between `.deathtensors` and foreign formats.

pub mod safetensors;
