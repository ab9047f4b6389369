//! Regression tests: every input that crashed, hung or exhausted memory under cargo-fuzz, replayed.
//!
//! The fuzz target bodies live in `fuzz/src/harness.rs`, included here as a
//! module, so a saved input goes through exactly the code the fuzzer ran
//! (the invariant checks included). Inputs are files under
//! `tests/data/fuzz-regressions/<target>/`; each must be refused with a
//! typed error, never panic. The seed corpus (`fuzz/src/seeds.rs`) is
//! replayed too: every seed must be accepted by its target, which proves
//! that the harness reaches past the parser, and small deterministic
//! mutations of each seed must be refused cleanly or accepted.
//!
//! To add a crash found by `fuzz/run.sh`: fix it, then copy the file from
//! `fuzz/artifacts/<target>/` into `tests/data/fuzz-regressions/<target>/`
//! with a name that says what it was (see docs/security.md).

use std::path::{Path, PathBuf};

use deathtensors::Error;

#[path = "../../fuzz/src/harness.rs"]
mod harness;
#[path = "../../fuzz/src/seeds.rs"]
mod seeds;

type Target = fn(&[u8]) -> Result<(), Error>;

fn target(name: &str) -> Target {
    match name {
        "header" => harness::header,
        "open_read" => harness::open_read,
        "chunks" => harness::chunks,
        "safetensors_import" => harness::safetensors_import,
        "append" => harness::append,
        "sharded_index" => harness::sharded_index,
        "repack" => harness::repack,
        other => panic!("no fuzz target {other:?}"),
    }
}

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fuzz-regressions")
}

/// The files saved for `target`, sorted; none when the folder is absent.
fn saved_inputs(target: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(regressions_dir().join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read the regressions folder").path())
        .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    files
}

#[test]
fn regression_folders_name_only_targets() {
    let Ok(entries) = std::fs::read_dir(regressions_dir()) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            assert!(
                seeds::TARGETS.contains(&name.as_str()),
                "{} names no fuzz target",
                path.display()
            );
        }
    }
}

#[test]
fn saved_crashes_are_refused_with_typed_errors() {
    for name in seeds::TARGETS {
        let run = target(name);
        for file in saved_inputs(name) {
            let bytes = std::fs::read(&file).unwrap();
            match run(&bytes) {
                Ok(()) => panic!("{}: a saved crash input is accepted by {name}", file.display()),
                Err(e) => {
                    // A typed error that renders and maps to a Python class.
                    assert!(!e.to_string().is_empty(), "{}", file.display());
                    assert!(!e.class_name().is_empty());
                }
            }
        }
    }
}

#[test]
fn every_seed_is_accepted_by_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let written = seeds::write_seeds(dir.path()).expect("write the seed corpus");
    for name in seeds::TARGETS {
        let count = written.iter().filter(|(t, _)| *t == name).count();
        assert!(count >= 3, "target {name} has only {count} seeds");
    }
    for (name, file) in &written {
        let bytes = std::fs::read(file).unwrap();
        if let Err(e) = target(name)(&bytes) {
            panic!("seed {} is refused by {name}: {e}", file.display());
        }
    }
}

#[test]
fn mutated_seeds_are_refused_cleanly_or_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let written = seeds::write_seeds(dir.path()).expect("write the seed corpus");
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut refused, mut total) = (0, 0);
    for (name, file) in &written {
        let original = std::fs::read(file).unwrap();
        for round in 0..8 {
            let mut bytes = original.clone();
            match round % 4 {
                // Truncate.
                0 => bytes.truncate((next() % (bytes.len() as u64 + 1)) as usize),
                // Flip one bit, then three bytes.
                1 | 2 => {
                    for _ in 0..(round % 4) * 2 - 1 {
                        if !bytes.is_empty() {
                            let at = (next() % bytes.len() as u64) as usize;
                            bytes[at] ^= 1 << (next() % 8);
                        }
                    }
                }
                // Overwrite eight bytes with 0xff (huge lengths and offsets).
                _ => {
                    let at = (next() % (bytes.len() as u64 + 1)) as usize;
                    let end = (at + 8).min(bytes.len());
                    bytes[at..end].fill(0xff);
                }
            }
            total += 1;
            if target(name)(&bytes).is_err() {
                refused += 1;
            }
        }
    }
    // Most damage must be noticed: otherwise the harness checks nothing.
    assert!(
        refused * 2 > total,
        "only {refused} of {total} mutated seeds were refused"
    );
}
