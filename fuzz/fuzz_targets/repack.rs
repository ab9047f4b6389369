//! cargo-fuzz target `repack`: see [`deathtensors_fuzz::harness::repack`].

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Refusals are the expected outcome for most inputs; panics are the bugs.
    let _ = deathtensors_fuzz::harness::repack(data);
});
