//! The `deathtensors` command line.
//!
//! The installed `deathtensors` binary and `python -m deathtensors` both call
//! [`run`], so they share one command tree. Exit codes: 0 success, 1 a bad or
//! unverifiable file, 2 a usage error. Errors are one line on stderr.

#![warn(missing_docs)]

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use deathtensors::format::Layout;
use deathtensors::reader::{hex, DtReader};
use deathtensors::registry;
use deathtensors::sharded::names_checkpoint;
use deathtensors::Error;
use serde_json::{json, Value};

/// Exit code for success.
pub const EXIT_OK: i32 = 0;
/// Exit code for a bad, unreadable or unverifiable file.
pub const EXIT_BAD_FILE: i32 = 1;
/// Exit code for a usage error, or output that could not be written.
pub const EXIT_USAGE: i32 = 2;

mod convert;
mod diff;
mod hub;
mod manifest;
mod progress;
mod repack;
mod sharded;

#[derive(Parser)]
#[command(
    name = "deathtensors",
    version,
    about = "Safe, fast, pickle-free tensor storage: inspect and check .deathtensors files",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the file's format details, global metadata and tensor table.
    Info {
        /// A .deathtensors (or legacy .dt) file, or a sharded checkpoint (its index or base path); ~ and $VARS are expanded.
        path: OsString,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List tensor names, one per line, in saved order.
    List {
        /// The file, or a sharded checkpoint (its index or base path).
        path: OsString,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Verify the checksum footer (exit 1 if it does not match or is absent); of every shard for a checkpoint.
    Verify {
        /// The file, or a sharded checkpoint (its index or base path).
        path: OsString,
        /// Print a JSON object; on failure too (`"ok": false` and the error).
        #[arg(long)]
        json: bool,
    },
    /// Per-tensor statistics (min/max/mean/stddev/nnz, NaN and Inf counts), computed without loading tensors.
    Stats {
        /// The file, or a sharded checkpoint (its index or base path).
        path: OsString,
        /// Only these tensors (default: all).
        names: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Compare two files: added, removed, changed tensors (exit 1 when they differ, like diff(1)).
    Diff(diff::DiffArgs),
    /// Write (or print) the JSON manifest sidecar of a file.
    Manifest(manifest::ManifestArgs),
    /// Convert between .deathtensors and other formats (safetensors, ...).
    Convert(convert::ConvertArgs),
    /// Rewrite a .deathtensors file (or a sharded checkpoint) with another compression or checksum; the rest is kept.
    Repack(repack::RepackArgs),
    /// Upload a .deathtensors file (or a sharded checkpoint) to a Hugging Face Hub repo, creating the repo if needed.
    HubPush(hub::PushArgs),
    /// Download a .deathtensors file (or a sharded checkpoint) from the Hub into the Hugging Face cache.
    HubPull(hub::PullArgs),
    /// List the .deathtensors files of a Hub repo.
    HubList(hub::ListArgs),
    /// Show a Hub repo's downloads, likes and .deathtensors files, or one remote file's tensor table.
    HubInfo(hub::InfoArgs),
    /// Convert a .safetensors file of a Hub repo to .deathtensors (read by range, no local copy) and upload it in one commit.
    HubConvert(hub::ConvertArgs),
    /// List registered plugins: codecs, checksums, filters, dtypes, layouts, converters.
    Plugins {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
}

/// Run the command line with `args` (the first item is the program name).
///
/// Returns the process exit code; never panics on bad files or bad arguments.
/// The `hub-*` commands and conversions of sharded checkpoints need the
/// Python package (see [`run_with_python`]); here they fail with a usage
/// error that says how to run them.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_with_python(args, |request| {
        let command = serde_json::from_str::<Value>(request)
            .ok()
            .and_then(|v| v["command"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(std::io::stderr(), "deathtensors: error: {}", needs_python(&command));
        EXIT_USAGE
    })
}

/// What the standalone binary says of a `command` handed to the Python
/// package: which command needs it, and how to run it there.
fn needs_python(command: &str) -> String {
    if command.starts_with("hub-") {
        return "the Hub commands run through the Python package: pip install deathtensors[huggingface], then \
                `python -m deathtensors hub-...`"
            .into();
    }
    let doing = if command == "repack" { "repacking" } else { "converting" };
    format!("{doing} a sharded checkpoint runs through the Python package: `python -m deathtensors {command} ...`")
}

/// [`run`], with `python` running the commands that need the Python package:
/// the Hugging Face Hub commands and conversions of sharded checkpoints.
///
/// Such a command is parsed and checked here like every other command, then
/// handed to `python` as a JSON object (`{"command": "hub-push", "repo_id":
/// ..., ...}`, one key per argument; `{"command": "convert", ...}` for a
/// sharded conversion), whose return value is the exit code.
/// `python -m deathtensors` passes a callback into `deathtensors._cli`.
pub fn run_with_python<I, T, H>(args: I, python: H) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
    H: FnOnce(&str) -> i32,
{
    deathtensors_plugins::link();
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if let Some(codec) = codec_after_bare_compress(&args) {
        let _ = writeln!(
            std::io::stderr(),
            "deathtensors: error: `--compress {codec}` would compress with zstd and read {codec:?} as a file name: \
             write `--compress={codec}` (or `./{codec}` for a file of that name)"
        );
        return EXIT_USAGE;
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if let Some((word, known)) = unknown_direction(&args) {
                let known: Vec<String> = known.iter().map(|k| format!("`convert {k} SRC DST`")).collect();
                let _ = writeln!(
                    std::io::stderr(),
                    "deathtensors: error: unknown conversion {word:?}: use {}, or `convert SRC DST --to FORMAT` \
                     (see deathtensors convert --help)",
                    known.join(", ")
                );
                return EXIT_USAGE;
            }
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                // Help and version go to stdout: one that cannot take them fails like any other output.
                if let Err(err) = e.print().and_then(|()| std::io::stdout().flush()) {
                    if err.kind() != std::io::ErrorKind::BrokenPipe {
                        let _ = writeln!(std::io::stderr(), "deathtensors: error: cannot write the output: {err}");
                        return EXIT_USAGE;
                    }
                }
            } else {
                let _ = writeln!(std::io::stderr(), "deathtensors: error: {}", usage_error_line(&e));
            }
            return code;
        }
    };
    match execute(cli.command) {
        Ok(Outcome::Python(request)) => {
            let _ = std::io::stdout().flush();
            python(&request)
        }
        Ok(Outcome::Done(text, _)) if !text.is_empty() && !stdout_is_open() => {
            let _ = writeln!(
                std::io::stderr(),
                "deathtensors: error: cannot write the output: standard output is closed"
            );
            EXIT_USAGE
        }
        Ok(Outcome::Done(text, code)) => {
            let mut out = std::io::stdout().lock();
            match out
                .write_all(terminal_safe(&text).as_bytes())
                .and_then(|()| out.flush())
            {
                // A reader that stopped early (`| head`) is not a failure.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    let _ = writeln!(std::io::stderr(), "deathtensors: error: cannot write the output: {e}");
                    EXIT_USAGE
                }
                _ => code,
            }
        }
        Err(e) => report(&e),
    }
}

/// Set by the standalone binary, whose runtime replaced a closed stdout
/// with `/dev/null` before `main` (see `main.rs`).
static STDOUT_CLOSED_AT_START: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Tell the CLI that standard output was closed when the process started
/// (the binary checks before Rust's runtime reopens it as `/dev/null`).
pub fn stdout_closed_at_start(closed: bool) {
    STDOUT_CLOSED_AT_START.store(closed, std::sync::atomic::Ordering::Relaxed);
}

/// Whether file descriptor 1 is open. Rust's stdout takes a write to a
/// closed one as done (it swallows `EBADF`), so `list FILE >&-` would succeed
/// having printed nothing.
fn stdout_is_open() -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    !STDOUT_CLOSED_AT_START.load(std::sync::atomic::Ordering::Relaxed)
        && unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_GETFD) != -1 }
}

/// Write `e` to stderr as one line and return its exit code.
fn report(e: &Error) -> i32 {
    let line = e.to_string().replace('\n', " ");
    let _ = writeln!(std::io::stderr(), "deathtensors: error: {}", terminal_safe(&line));
    if e.is_bad_file() {
        EXIT_BAD_FILE
    } else {
        EXIT_USAGE
    }
}

/// For `convert to-gguf A B` (a word shaped like a direction that is none of
/// `convert`'s subcommands, which clap would take for SRC and then complain
/// about B): that word and the directions there are.
fn unknown_direction(args: &[OsString]) -> Option<(String, Vec<String>)> {
    use clap::CommandFactory;
    let at = args.iter().position(|a| a == "convert")?;
    let word = args.get(at + 1)?.to_str()?;
    if !(word.starts_with("to-") || word.starts_with("from-")) || args.len() < at + 4 {
        return None;
    }
    let cli = Cli::command();
    let known: Vec<String> = cli
        .find_subcommand("convert")?
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    (!known.iter().any(|k| k == word)).then(|| (word.to_owned(), known))
}

/// For `--compress lz4`: a bare `--compress` (which means zstd, its codec
/// being given only as `--compress=CODEC`) followed by a word that names a
/// registered codec. clap reads that word as the next positional argument, so
/// `convert from-safetensors a.safetensors --compress lz4` would write a
/// zstd file named `lz4`; this returns the codec so that the run is refused.
fn codec_after_bare_compress(args: &[OsString]) -> Option<String> {
    let codecs = registry::codecs().ok()?;
    args.iter()
        .take_while(|a| *a != "--")
        .zip(args.iter().skip(1))
        .find_map(|(flag, next)| {
            let next = next.to_str()?;
            (flag == "--compress" && codecs.ids().any(|id| id == next)).then(|| next.to_owned())
        })
}

/// A command-line error from clap in one line: its message and the usage of
/// the command (clap prints them over several lines, with blank lines).
fn usage_error_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let usage_at = lines.iter().position(|l| l.starts_with("Usage: "));
    let message = lines[..usage_at.unwrap_or(lines.len())]
        .iter()
        .filter(|l| !l.starts_with("For more information"))
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    match usage_at.and_then(|i| lines[i].strip_prefix("Usage: ")) {
        Some(usage) => format!("{message} (usage: {usage}; see --help)"),
        None => format!("{message} (see --help)"),
    }
}

/// Whether `c` must not reach a terminal raw from a file: a control
/// character (a newline that would fake a row, an escape sequence that would
/// drive the terminal), or an invisible one that changes how the rest shows:
/// the bidirectional marks, embeddings, overrides and isolates (with U+202E
/// the name `layer.0.` + U+202E + `thgiew` shows as `layer.0.weight`) and the
/// line and paragraph separators.
pub fn unsafe_for_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// A tensor name as printed in a table or report: itself, or, when it holds
/// a character [`unsafe_for_terminal`], its escaped form (`evil\u{1b}[2J`).
/// Names come from files, which are untrusted.
pub fn shown(name: &str) -> Cow<'_, str> {
    if name.chars().any(unsafe_for_terminal) {
        Cow::Owned(name.escape_debug().to_string())
    } else {
        Cow::Borrowed(name)
    }
}

/// `text` with every character [`unsafe_for_terminal`] but newline and tab
/// escaped as `\uXXXX`: the last guard before anything derived from a file
/// reaches the terminal. The escape is JSON's, so `--json` output stays valid
/// JSON (serde escapes only the controls below 0x20; DEL and the C1
/// controls, such as U+009B, a one-character CSI, would pass raw).
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| unsafe_for_terminal(c) && c != '\n' && c != '\t';
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Expand `~` and `$VAR` / `${VAR}` in a path, as every front does. A path
/// that is not valid UTF-8 is expanded the same way, byte for byte.
pub fn expand_path(raw: impl AsRef<OsStr>) -> PathBuf {
    let raw = raw.as_ref().as_encoded_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let home = std::env::var_os("HOME").unwrap_or_default();
    let rest = if raw == b"~" {
        out.extend_from_slice(home.as_encoded_bytes());
        &[][..]
    } else if let Some(r) = raw.strip_prefix(b"~/") {
        out.extend_from_slice(home.as_encoded_bytes());
        out.push(b'/');
        r
    } else if let Some(user) = raw.strip_prefix(b"~") {
        // `~name/...`, as Python's expanduser: left as is when there is no such user.
        let at = user.iter().position(|&b| b == b'/').unwrap_or(user.len());
        match home_of(&user[..at]) {
            Some(dir) => {
                out.extend_from_slice(&dir);
                &user[at..]
            }
            None => raw,
        }
    } else {
        raw
    };
    let mut i = 0;
    while i < rest.len() {
        if rest[i] != b'$' {
            out.push(rest[i]);
            i += 1;
            continue;
        }
        let braced = rest.get(i + 1) == Some(&b'{');
        let name_start = i + 1 + usize::from(braced);
        let name_end = rest[name_start..]
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
            .map_or(rest.len(), |n| name_start + n);
        let closed = !braced || rest.get(name_end) == Some(&b'}');
        let after = name_end + usize::from(braced && closed);
        // The name is ASCII alphanumerics, so valid UTF-8.
        let name = std::str::from_utf8(&rest[name_start..name_end]).unwrap_or_default();
        match std::env::var_os(name) {
            Some(v) if !name.is_empty() && closed => out.extend_from_slice(v.as_encoded_bytes()),
            _ => out.extend_from_slice(&rest[i..after]),
        }
        i = after;
    }
    // SAFETY: `out` joins pieces of `raw` cut only next to ASCII bytes (`~`,
    // `/`, `$`, `{`, `}`, a variable's name) and whole encoded `OsStr`s (HOME,
    // variables' values, and a home folder from the password database, whose
    // bytes are a Unix `OsStr` as they are): a mixture that
    // `from_encoded_bytes_unchecked` allows.
    PathBuf::from(unsafe { OsString::from_encoded_bytes_unchecked(out) })
}

/// The home folder of the user `name` (`getpwnam_r`), if there is one.
fn home_of(name: &[u8]) -> Option<Vec<u8>> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids); it is only read after
    // getpwnam_r fills it.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` holds the strings `entry` points into.
    let rc = unsafe { libc::getpwnam_r(name.as_ptr(), &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || entry.pw_dir.is_null() {
        return None;
    }
    // SAFETY: getpwnam_r succeeded, so pw_dir is a NUL-terminated string inside `buf`.
    Some(unsafe { std::ffi::CStr::from_ptr(entry.pw_dir) }.to_bytes().to_vec())
}

/// What a command comes to.
enum Outcome {
    /// Text for stdout, and the exit code.
    Done(String, i32),
    /// A request for the Python package (see [`run_with_python`]).
    Python(String),
}

/// Run one command, or turn it into a request for the Python package.
fn execute(command: Command) -> Result<Outcome, Error> {
    let python = |request| Ok(Outcome::Python(request));
    match command {
        Command::HubPush(a) => python(hub::request("hub-push", &a)),
        Command::HubPull(a) => python(hub::request("hub-pull", &a)),
        Command::HubList(a) => python(hub::request("hub-list", &a)),
        Command::HubInfo(a) => python(hub::request("hub-info", &a)),
        Command::HubConvert(a) => python(hub::request("hub-convert", &a)),
        Command::Convert(args) => convert::run(args),
        Command::Repack(args) => repack::run(args),
        Command::Verify { path, json: true } => {
            let shown = expand_path(&path).to_string_lossy().into_owned();
            Ok(match execute_here(Command::Verify { path, json: true }) {
                Ok((text, code)) => Outcome::Done(text, code),
                // A script reading `--json` gets an answer on failure too; the error still goes to stderr.
                Err(e) => Outcome::Done(
                    pretty(&json!({"path": shown, "ok": false, "error": e.to_string()})),
                    report(&e),
                ),
            })
        }
        command => execute_here(command).map(|(text, code)| Outcome::Done(text, code)),
    }
}

/// Run one command that needs no Python: its output and exit code.
fn execute_here(command: Command) -> Result<(String, i32), Error> {
    let mut s = String::new();
    match command {
        Command::Diff(args) => return diff::run(args),
        Command::Manifest(args) => return manifest::run(args),
        Command::Info { path, json } if names_checkpoint(expand_path(&path)) => {
            return Ok((sharded::info(&expand_path(&path), json)?, EXIT_OK))
        }
        Command::List { path, json } if names_checkpoint(expand_path(&path)) => {
            return Ok((sharded::list(&expand_path(&path), json)?, EXIT_OK))
        }
        Command::Verify { path, json } if names_checkpoint(expand_path(&path)) => {
            return Ok((sharded::verify(&expand_path(&path), json)?, EXIT_OK))
        }
        Command::Stats { path, names, json } if names_checkpoint(expand_path(&path)) => {
            return Ok((sharded::stats(&expand_path(&path), &names, json)?, EXIT_OK))
        }
        Command::Info { path, json } => {
            let r = DtReader::open(expand_path(&path))?;
            if json {
                s = pretty(&info_json(&r));
            } else {
                s.push_str(&info_text(&r.path().display().to_string(), r.layout(), r.file_len()));
            }
        }
        Command::List { path, json } => {
            let r = DtReader::open(expand_path(&path))?;
            // Parts of non-dense tensors (sparse indices) are not tensors of their own.
            let names: Vec<&str> = r
                .tensors()
                .iter()
                .filter(|t| t.part_of.is_none())
                .map(|t| t.name.as_str())
                .collect();
            if json {
                s = pretty(&json!(names));
            } else {
                for k in names {
                    let _ = writeln!(s, "{}", shown(k));
                }
            }
        }
        Command::Verify { path, json } => {
            let r = DtReader::open(expand_path(&path))?;
            let total = r
                .file_len()
                .saturating_sub(deathtensors::format::PREAMBLE_LEN + deathtensors::format::FOOTER_LEN);
            let pb = progress::bar(total, "verify");
            let verified = r.verify_with_progress(&|done| {
                if let Some(pb) = &pb {
                    pb.set_position(done);
                }
            });
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            verified?;
            let algorithm = r.checksum().map(|c| c.id()).unwrap_or_default();
            let digest = hex(&r.stored_digest()?);
            if json {
                s = pretty(
                    &json!({"path": r.path().to_string_lossy(), "ok": true, "algorithm": algorithm, "digest": digest}),
                );
            } else {
                let _ = writeln!(s, "OK  {}  {algorithm}:{digest}", r.path().display());
            }
        }
        Command::Stats { path, names, json } => {
            let r = DtReader::open(expand_path(&path))?;
            let rows = if names.is_empty() {
                let total = r.tensors().iter().map(|t| t.nbytes).fold(0, u64::saturating_add);
                let pb = progress::bar(total, "stats");
                let all = deathtensors::stats::all_stats_with_progress(&r, &|n| {
                    if let Some(pb) = &pb {
                        pb.inc(n);
                    }
                });
                if let Some(pb) = pb {
                    pb.finish_and_clear();
                }
                let mut all = all?;
                all.retain(|row| r.tensor(&row.name).is_ok_and(|t| t.part_of.is_none()));
                all
            } else {
                names
                    .iter()
                    .map(|n| deathtensors::stats::tensor_stats(&r, n))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| match e {
                        Error::TensorNotFound(_) => e.in_file(r.path()),
                        e => e,
                    })?
            };
            if json {
                s = pretty(&serde_json::to_value(&rows).unwrap_or_default());
            } else {
                write_stats(&mut s, &rows);
            }
        }
        Command::HubPush(_)
        | Command::HubPull(_)
        | Command::HubList(_)
        | Command::HubInfo(_)
        | Command::HubConvert(_)
        | Command::Convert(_)
        | Command::Repack(_) => {
            return Err(Error::InvalidArgument(
                "hub-*, convert and repack are run by execute".into(),
            ))
        }
        Command::Plugins { json } => {
            let rows = registry::list_plugins()?;
            if json {
                let v: Vec<Value> = rows
                    .iter()
                    .map(|p| json!({"kind": p.kind, "id": p.id, "summary": p.summary, "crate": p.crate_name}))
                    .collect();
                s = pretty(&json!(v));
            } else {
                let width = rows.iter().map(|p| p.id.len()).max().unwrap_or(0);
                let mut kind = "";
                for p in &rows {
                    if p.kind != kind {
                        kind = p.kind;
                        let _ = writeln!(s, "{kind}s:");
                    }
                    let _ = writeln!(s, "  {:width$}  {}  [{}]", p.id, p.summary, p.crate_name);
                }
            }
        }
    }
    Ok((s, EXIT_OK))
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn info_json(r: &DtReader) -> Value {
    let tensors: Vec<Value> = r
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name, "dtype": t.dtype.id(), "shape": t.shape, "nbytes": t.nbytes,
                "stored_nbytes": t.stored_len, "file_offset": t.file_offset,
                "chunks": t.chunks.as_ref().map(Vec::len), "metadata": t.metadata,
                "alias_of": t.alias_of, "layout": t.layout, "part_of": t.part_of,
            })
        })
        .collect();
    json!({
        "path": r.path().to_string_lossy(),
        "file_size": r.file_len(),
        "format_version": deathtensors::format::VERSION,
        "codec": r.codec().map(|c| c.id()),
        "checksum": r.checksum().map(|c| c.id()),
        "metadata": r.metadata(),
        "tensors": tensors,
    })
}

/// The text of `deathtensors info` for a file of `file_len` bytes whose
/// validated header is `layout`, shown as `label` (a path, or a Hub
/// location: `hub-info REPO FILE` prints the same text).
pub fn info_text(label: &str, layout: &Layout, file_len: u64) -> String {
    let mut s = String::new();
    // A second name (alias) holds no bytes of its own. Saturating: a hostile
    // header's entries may claim more than 2^64 bytes between them.
    let total = layout
        .tensors
        .iter()
        .filter(|t| t.alias_of.is_none())
        .map(|t| t.nbytes)
        .fold(0, u64::saturating_add);
    let _ = writeln!(s, "file:      {label}");
    let _ = writeln!(s, "size:      {} ({} of tensor data)", human(file_len), human(total));
    let _ = writeln!(s, "format:    deathtensors v{}", deathtensors::format::VERSION);
    let _ = writeln!(s, "codec:     {}", layout.codec.map_or("none", |c| c.id()));
    let _ = writeln!(s, "checksum:  {}", layout.checksum.map_or("none", |c| c.id()));
    if !layout.header.metadata.is_empty() {
        let _ = writeln!(s, "metadata:  {}", Value::Object(layout.header.metadata.clone()));
    }
    let parts = layout.tensors.iter().filter(|t| t.part_of.is_some()).count();
    let listed = layout.tensors.len() - parts;
    let _ = match parts {
        0 => writeln!(s, "tensors:   {listed}"),
        1 => writeln!(s, "tensors:   {listed} (plus 1 stored part of one)"),
        _ => writeln!(s, "tensors:   {listed} (plus {parts} stored parts of them)"),
    };
    let rows: Vec<Vec<String>> = layout.tensors.iter().map(tensor_row).collect();
    write_table(&mut s, "  ", &["name", "dtype", "shape", "size", "stored"], &rows);
    s
}

/// One row of `info`'s tensor table: name, dtype, shape, size, stored.
fn tensor_row(t: &deathtensors::format::TensorInfo) -> Vec<String> {
    let name = match (&t.part_of, &t.layout) {
        (Some(owner), _) => format!("  {} (part of {})", shown(&t.name), shown(owner)),
        (None, Some(l)) => format!("{} ({} {:?})", shown(&t.name), l.id, l.shape),
        _ => shown(&t.name).into_owned(),
    };
    let stored = match (&t.alias_of, &t.chunks) {
        (Some(target), _) => format!("alias of {}", shown(target)),
        (None, Some(_)) => format!("{} ({:.1}%)", human(t.stored_len), percent(t.stored_len, t.nbytes)),
        (None, None) => human(t.stored_len),
    };
    vec![
        name,
        t.dtype.id().to_owned(),
        format!("{:?}", t.shape),
        human(t.nbytes),
        stored,
    ]
}

/// The widest a table column is padded to, in terminal columns. A wider cell
/// is printed whole and pushes the rest of its row right.
const MAX_COLUMN_WIDTH: usize = 96;

/// A table after `indent`, columns padded to their widest cell (at most
/// [`MAX_COLUMN_WIDTH`]) as a terminal shows it (a CJK character or an emoji
/// takes two columns). The cap keeps the output in proportion to the cells:
/// padding every row to one name of 500,000 characters printed a gigabyte for
/// a file of 600 KB.
fn write_table(s: &mut String, indent: &str, heads: &[&str], rows: &[Vec<String>]) {
    use unicode_width::UnicodeWidthStr;
    let mut widths: Vec<usize> = heads.iter().map(|h| h.width()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.width().min(MAX_COLUMN_WIDTH));
        }
    }
    // Padded by hand: `{:w$}` panics for widths over u16::MAX, which a
    // file's names (or a shape of 20,000 dimensions) can reach.
    let mut line = |cells: &[&str]| {
        let mut text = String::from(indent);
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', width.saturating_sub(cell.width())));
        }
        let _ = writeln!(s, "{}", text.trim_end());
    };
    line(heads);
    for row in rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

fn write_stats(s: &mut String, rows: &[deathtensors::stats::TensorStats]) {
    fn g(x: f64) -> String {
        if x == 0.0 || (1e-4..1e6).contains(&x.abs()) {
            format!("{x:.6}")
        } else {
            format!("{x:.4e}")
        }
    }
    let num = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), g);
    let val = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::Number(n) if n.is_f64() => g(n.as_f64().unwrap_or_default()),
        other => other.to_string(),
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                shown(&r.name).into_owned(),
                r.dtype.clone(),
                r.count.to_string(),
                val(&r.min),
                val(&r.max),
                num(r.mean),
                num(r.stddev),
                r.nnz.to_string(),
                r.nan_count.to_string(),
                r.inf_count.to_string(),
            ]
        })
        .collect();
    let heads = [
        "name", "dtype", "count", "min", "max", "mean", "stddev", "nnz", "nan", "inf",
    ];
    write_table(s, "", &heads, &table);
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Bytes in binary units, e.g. `"1.5 MiB"`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_of_a_file_claiming_more_than_2_pow_64_bytes_does_not_overflow() {
        // Regression (debug builds panicked, release ones printed "0 B of tensor
        // data"): a remote file claiming 2^62 bytes, one tensor of them and three
        // aliases of it. Aliases hold no bytes of their own.
        let n = 1u64 << 62;
        let mut entries = vec![format!(
            r#"{{"name":"t","dtype":"U8","shape":[{n}],"offsets":[0,{n}]}}"#
        )];
        for i in 0..3 {
            entries.push(format!(
                r#"{{"name":"a{i}","dtype":"U8","shape":[{n}],"offsets":[0,{n}],"alias_of":"t"}}"#
            ));
        }
        let header = format!(r#"{{"tensors":[{}]}}"#, entries.join(","));
        let mut head = b"DTLEGION".to_vec();
        head.extend_from_slice(&1u32.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&(header.len() as u64).to_le_bytes());
        head.extend_from_slice(header.as_bytes());
        head.resize(
            head.len() + deathtensors::format::nul_padding(header.len() as u64) as usize,
            0,
        );
        let file_len = head.len() as u64 + n;
        let layout = deathtensors::reader::read_layout(file_len, &Default::default(), |offset, buf| {
            let start = (offset as usize).min(head.len());
            let end = (start + buf.len()).min(head.len());
            buf[..end - start].copy_from_slice(&head[start..end]);
            Ok(())
        })
        .unwrap();
        let text = info_text("hub://x", &layout, file_len);
        assert!(text.contains("(4194304.0 TiB of tensor data)"), "{text}");
    }

    #[test]
    fn table_columns_line_up_on_a_terminal_with_wide_characters() {
        // Regression: cells were padded by char count, so a name of CJK
        // characters or emoji (two columns each) pushed its row's columns right.
        let rows = vec![
            vec!["权重".to_owned(), "F32".to_owned()],
            vec!["w🔥".to_owned(), "BF16".to_owned()],
            vec!["bias".to_owned(), "F16".to_owned()],
        ];
        let mut s = String::new();
        write_table(&mut s, "", &["name", "dtype"], &rows);
        let columns: Vec<usize> = s
            .lines()
            .map(|l| {
                let at = l.find(['d', 'F', 'B']).unwrap();
                unicode_width::UnicodeWidthStr::width(&l[..at])
            })
            .collect();
        assert_eq!(columns, [6, 6, 6, 6], "{s}");
    }

    #[test]
    fn one_wide_cell_does_not_pad_every_row_to_its_width() {
        // Regression: `info` of a 615 KB file (one name of 500,000 characters
        // and 2,000 others) printed 1 GB, every row padded to that name.
        let long = "n".repeat(100_000);
        let mut rows = vec![vec![long.clone(), "F32".to_owned()]];
        rows.extend((0..1000).map(|i| vec![format!("t{i}"), "F32".to_owned()]));
        let mut s = String::new();
        write_table(&mut s, "", &["name", "dtype"], &rows);
        let cells: usize = rows.iter().flatten().map(String::len).sum();
        assert!(
            s.len() < cells + rows.len() * (MAX_COLUMN_WIDTH + 8),
            "{} bytes",
            s.len()
        );
        assert!(s.contains(&format!("{long}  F32\n")));
        // Short rows still line up with each other.
        let at: Vec<usize> = s.lines().skip(2).map(|l| l.find("F32").unwrap()).collect();
        assert!(at.iter().all(|&a| a == MAX_COLUMN_WIDTH + 2), "{:?}", &at[..3]);
    }

    #[test]
    fn expands_home_and_vars() {
        std::env::set_var("DT_CLI_TEST_VAR", "abc");
        let home = std::env::var("HOME").unwrap_or_default();
        assert_eq!(expand_path("~/x"), PathBuf::from(format!("{home}/x")));
        assert_eq!(expand_path("$DT_CLI_TEST_VAR/y"), PathBuf::from("abc/y"));
        assert_eq!(expand_path("${DT_CLI_TEST_VAR}z"), PathBuf::from("abcz"));
        assert_eq!(expand_path("$DT_UNSET_VAR_XYZ/q"), PathBuf::from("$DT_UNSET_VAR_XYZ/q"));
        assert_eq!(expand_path("a~b"), PathBuf::from("a~b"));
        // `~name`, as Python's expanduser: the user's home, or unchanged for no such user.
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        if let Some(home) = passwd
            .lines()
            .find_map(|l| l.strip_prefix("root:"))
            .and_then(|l| l.split(':').nth(4))
        {
            assert_eq!(expand_path("~root/x"), PathBuf::from(format!("{home}/x")));
            assert_eq!(expand_path("~root"), PathBuf::from(home));
        }
        assert_eq!(expand_path("~no_such_user_dt/x"), PathBuf::from("~no_such_user_dt/x"));
        assert_eq!(
            expand_path("${DT_UNSET_VAR_XYZ}/${DT_CLI_TEST_VAR"),
            PathBuf::from("${DT_UNSET_VAR_XYZ}/${DT_CLI_TEST_VAR")
        );
        assert_eq!(expand_path("$/${}/$"), PathBuf::from("$/${}/$"));
    }

    #[cfg(unix)]
    #[test]
    fn expands_paths_that_are_not_utf8() {
        use std::os::unix::ffi::OsStrExt;
        std::env::set_var("DT_CLI_TEST_BYTES", OsStr::from_bytes(b"d\xfe"));
        let raw = OsStr::from_bytes(b"caf\xe9/$DT_CLI_TEST_BYTES/m\xff.deathtensors");
        assert_eq!(
            expand_path(raw).as_os_str().as_bytes(),
            b"caf\xe9/d\xfe/m\xff.deathtensors"
        );
    }

    #[test]
    fn usage_errors_exit_2() {
        assert_eq!(run(["deathtensors", "no-such-command"]), EXIT_USAGE);
        assert_eq!(run(["deathtensors", "info"]), EXIT_USAGE);
        assert_eq!(run(["deathtensors", "--version"]), EXIT_OK);
    }

    #[test]
    fn a_codec_after_a_bare_compress_is_refused_not_read_as_a_file() {
        let args = |words: &[&str]| words.iter().map(OsString::from).collect::<Vec<_>>();
        let missing = "/nonexistent/a.safetensors";
        // Before the check, `lz4` became DST: this ran (and failed on the missing SRC, exit 1).
        let trap = [
            "deathtensors",
            "convert",
            "from-safetensors",
            missing,
            "--compress",
            "lz4",
        ];
        assert_eq!(codec_after_bare_compress(&args(&trap)), Some("lz4".into()));
        assert_eq!(run(trap), EXIT_USAGE);
        let joined = [
            "deathtensors",
            "convert",
            "from-safetensors",
            missing,
            "/nonexistent/b.dt",
            "--compress=lz4",
        ];
        assert_eq!(codec_after_bare_compress(&args(&joined)), None);
        assert_eq!(run(joined), EXIT_BAD_FILE);
        // A bare --compress before a word that is no codec, or after `--`, is left to clap.
        let plain = ["deathtensors", "convert", "--compress", missing, "b.dt"];
        assert_eq!(codec_after_bare_compress(&args(&plain)), None);
        let after_dashes = ["deathtensors", "convert", "--", "--compress", "zstd"];
        assert_eq!(codec_after_bare_compress(&args(&after_dashes)), None);
        let hub = [
            "deathtensors",
            "hub-convert",
            "ns/repo",
            "m.safetensors",
            "--compress",
            "zstd",
        ];
        assert_eq!(codec_after_bare_compress(&args(&hub)), Some("zstd".into()));
    }

    #[test]
    fn missing_file_exits_1() {
        assert_eq!(
            run(["deathtensors", "info", "/nonexistent/x.deathtensors"]),
            EXIT_BAD_FILE
        );
    }

    #[test]
    fn a_sharded_conversion_is_handed_over_and_a_single_file_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let index = dir.join("m.safetensors.index.json");
        std::fs::write(&index, b"{}").unwrap();
        let out = dir.join("m.deathtensors");
        let argv = |extra: &[&str]| {
            let mut v = vec!["deathtensors".to_owned(), "convert".to_owned()];
            v.extend(extra.iter().map(|s| (*s).to_owned()));
            v
        };
        let (index_s, out_s) = (index.to_str().unwrap(), out.to_str().unwrap());
        let mut seen = String::new();
        let code = run_with_python(argv(&[index_s, out_s, "--compress=lz4", "--level", "2"]), |request| {
            seen = request.to_owned();
            5
        });
        assert_eq!(code, 5);
        let v: Value = serde_json::from_str(&seen).expect("JSON request");
        assert_eq!(v["command"], "convert");
        assert_eq!(v["direction"], "import");
        assert_eq!(v["converter"], "safetensors");
        assert_eq!((v["src"].as_str(), v["dst"].as_str()), (Some(index_s), Some(out_s)));
        assert_eq!(
            (&v["codec"], &v["level"], &v["checksum"]),
            (&json!("lz4"), &json!(2), &json!("sha256"))
        );
        // The base path finds the index too; the standalone binary says where to run it.
        let base = dir.join("m");
        let base = argv(&["from-safetensors", base.to_str().unwrap(), out_s]);
        assert_eq!(run_with_python(base.clone(), |_| 6), 6);
        assert_eq!(run(base), EXIT_USAGE);
        // A single file never reaches the host (this one is not valid, so it fails here).
        let single = dir.join("s.safetensors");
        std::fs::write(&single, b"junk").unwrap();
        let called = std::cell::Cell::new(false);
        let code = run_with_python(argv(&[single.to_str().unwrap(), out_s]), |_| {
            called.set(true);
            0
        });
        assert!(!called.get());
        assert_eq!(code, EXIT_BAD_FILE);
    }

    #[test]
    fn hub_commands_are_parsed_here_and_handed_over_as_json() {
        let mut seen = String::new();
        let code = run_with_python(
            [
                "deathtensors",
                "hub-convert",
                "ns/repo",
                "model.safetensors",
                "--compress=lz4",
                "--delete-original",
                "--revision",
                "dev",
            ],
            |request| {
                seen = request.to_owned();
                7
            },
        );
        assert_eq!(code, 7);
        let v: Value = serde_json::from_str(&seen).expect("JSON request");
        assert_eq!(v["command"], "hub-convert");
        assert_eq!(v["repo_id"], "ns/repo");
        assert_eq!(v["filename"], "model.safetensors");
        assert_eq!(v["compress"], "lz4");
        assert_eq!(v["delete_original"], true);
        assert_eq!(v["revision"], "dev");
        assert_eq!(v["repo_type"], "model");
        // Usage errors never reach the host.
        let called = std::cell::Cell::new(false);
        let bad = run_with_python(["deathtensors", "hub-push", "ns/repo"], |_| {
            called.set(true);
            0
        });
        assert_eq!(bad, EXIT_USAGE);
        assert!(!called.get());
        // Without a host (the standalone binary), a Hub command is a usage error.
        assert_eq!(run(["deathtensors", "hub-list", "ns/repo"]), EXIT_USAGE);
    }

    #[test]
    fn human_units() {
        assert_eq!(human(10), "10 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
