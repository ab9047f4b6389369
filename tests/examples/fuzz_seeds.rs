//! Write the seed corpus of the cargo-fuzz targets (`fuzz/run.sh` runs this).
//!
//! ```text
//! cargo run -p deathtensors-integration-tests --example fuzz_seeds -- fuzz/corpus
//! ```
//!
//! Writes one folder per target under the given folder; see
//! `fuzz/src/seeds.rs` for what the seeds hold.

use std::path::PathBuf;
use std::process::ExitCode;

#[allow(dead_code)] // the seeds use only the chunk-input builder of the harness
#[path = "../../fuzz/src/harness.rs"]
mod harness;
#[path = "../../fuzz/src/seeds.rs"]
mod seeds;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz_seeds CORPUS_DIR");
        return ExitCode::from(2);
    };
    match seeds::write_seeds(&dir) {
        Ok(written) => {
            for target in seeds::TARGETS {
                let n = written.iter().filter(|(t, _)| *t == target).count();
                println!("{target}: {n} seeds in {}", dir.join(target).display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fuzz_seeds: {e}");
            ExitCode::FAILURE
        }
    }
}
