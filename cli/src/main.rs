//! The `deathtensors` binary.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether standard output was closed when the process started. Rust's
/// runtime opens `/dev/null` on a closed descriptor 0, 1 or 2 before `main`,
/// so the check runs earlier: as a constructor, which the loader calls
/// before the runtime starts.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_closed_stdout() {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    let closed = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_GETFD) } == -1;
    STDOUT_CLOSED.store(closed, Ordering::Relaxed);
}

#[used]
#[link_section = ".init_array"]
static NOTE_CLOSED_STDOUT: extern "C" fn() = note_closed_stdout;

fn main() {
    deathtensors_cli::stdout_closed_at_start(STDOUT_CLOSED.load(Ordering::Relaxed));
    std::process::exit(deathtensors_cli::run(std::env::args_os()));
}
