//! Progress bars on stderr for long operations, only when stderr is a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Work smaller than this finishes too fast to need a bar
/// (`DEATHTENSORS_PROGRESS_MIN_BYTES` overrides it).
const MIN_BYTES: u64 = 64 << 20;

fn wanted(total: u64) -> bool {
    let min = std::env::var("DEATHTENSORS_PROGRESS_MIN_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MIN_BYTES);
    total >= min && std::io::stderr().is_terminal()
}

/// A byte-counting bar for `total` bytes of work, or `None` when stderr is
/// not a terminal or the work is small.
pub(crate) fn bar(total: u64, what: &str) -> Option<ProgressBar> {
    if !wanted(total) {
        return None;
    }
    let style = ProgressStyle::with_template("{msg:>9} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let pb = ProgressBar::new(total).with_style(style).with_message(what.to_owned());
    Some(pb)
}

/// A spinner for work of about `total` bytes whose progress is not reported.
pub(crate) fn spinner(total: u64, what: &str) -> Option<ProgressBar> {
    if !wanted(total) {
        return None;
    }
    let pb = ProgressBar::new_spinner().with_message(what.to_owned());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(pb)
}
