//! `deathtensors-npz`: the standard `deathtensors` command line plus the
//! example `npz` converter.
//!
//! This is all a third-party plugin needs to ship a CLI: link the plugin crate
//! and run the stock command tree. The `use ... as _` line names the crate, and
//! calling its `link()` keeps its registration through the link (a crate
//! nothing refers to is dropped, and its plugins vanish with it).

use deathtensors_npz_converter as _;

fn main() {
    deathtensors_npz_converter::link();
    std::process::exit(deathtensors_cli::run(std::env::args_os()));
}
