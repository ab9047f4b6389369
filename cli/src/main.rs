//! The `deathtensors` binary.

fn main() {
    std::process::exit(deathtensors_cli::run(std::env::args_os()));
}
