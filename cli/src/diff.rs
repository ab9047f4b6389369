//! `deathtensors diff`: comparing two files.
//!
//! Exit codes follow diff(1): 0 when the files hold the same tensors,
//! metadata and values, 1 when they differ (or a file is bad), 2 for usage
//! errors (a negative tolerance, say). A progress bar shows on stderr for
//! large files when stderr is a terminal.

use std::ffi::OsString;
use std::fmt::Write as _;

use deathtensors::diff::{diff_sides, Change, DiffOptions, DiffReport, DiffSide};
use deathtensors::sharded::Source;
use deathtensors::Error;
use serde_json::{Map, Value};

use crate::{expand_path, pretty, progress, shown, EXIT_OK};

/// Exit code when the files differ.
const EXIT_DIFFERENT: i32 = 1;

/// Arguments of `deathtensors diff`.
#[derive(clap::Args)]
pub(crate) struct DiffArgs {
    /// The first file or sharded checkpoint (the reference); ~ and $VARS are expanded.
    a: OsString,
    /// The second file or sharded checkpoint.
    b: OsString,
    /// Relative tolerance for float values: |a - b| <= atol + rtol * |b| (both 0: bytes compare exactly)
    #[arg(long, default_value_t = 0.0, value_name = "X")]
    rtol: f64,
    /// Absolute tolerance for float values.
    #[arg(long, default_value_t = 0.0, value_name = "Y")]
    atol: f64,
    /// Print a JSON object instead of a report.
    #[arg(long)]
    json: bool,
}

/// Run the command: its output and exit code (0 identical, 1 different).
pub(crate) fn run(args: DiffArgs) -> Result<(String, i32), Error> {
    let options = DiffOptions {
        rtol: args.rtol,
        atol: args.atol,
        ..DiffOptions::default()
    };
    let (a, b) = (expand_path(&args.a), expand_path(&args.b));
    let (a, b) = (Source::open(a)?, Source::open(b)?);
    let (a, b) = (DiffSide::source(&a), DiffSide::source(&b));
    let pb = progress::bar(a.shared_bytes(&b), "diff");
    let report = diff_sides(&a, &b, &options, &|n| {
        if let Some(pb) = &pb {
            pb.inc(n);
        }
    });
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let report = report?;
    let code = if report.identical { EXIT_OK } else { EXIT_DIFFERENT };
    let text = if args.json {
        let mut v = Map::new();
        v.insert("a".into(), Value::String(args.a.to_string_lossy().into_owned()));
        v.insert("b".into(), Value::String(args.b.to_string_lossy().into_owned()));
        if let Ok(Value::Object(fields)) = serde_json::to_value(&report) {
            v.extend(fields);
        }
        pretty(&Value::Object(v))
    } else {
        write_report(&args.a.to_string_lossy(), &args.b.to_string_lossy(), &report)
    };
    Ok((text, code))
}

/// The readable report: one line per difference, then a summary.
fn write_report(path_a: &str, path_b: &str, r: &DiffReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "--- {path_a}");
    let _ = writeln!(s, "+++ {path_b}");
    for name in &r.removed {
        let _ = writeln!(s, "- {}: only in {path_a}", shown(name));
    }
    for name in &r.added {
        let _ = writeln!(s, "+ {}: only in {path_b}", shown(name));
    }
    let arrow = |s: &mut String, what: &str, c: &Change<String>| {
        let _ = writeln!(s, "~ {}: {what} {} -> {}", shown(&c.name), c.a, c.b);
    };
    for c in &r.dtype_changed {
        arrow(&mut s, "dtype", c);
    }
    for c in &r.shape_changed {
        let _ = writeln!(s, "~ {}: shape {:?} -> {:?}", shown(&c.name), c.a, c.b);
    }
    let layout = |v: &Value| match v {
        Value::Null => "dense".to_owned(),
        Value::Object(o) => match (o.get("id"), o.get("params")) {
            (Some(Value::String(id)), Some(Value::Object(p))) if p.is_empty() => id.clone(),
            (Some(Value::String(id)), Some(p)) => format!("{id} {p}"),
            _ => v.to_string(),
        },
        other => other.to_string(),
    };
    for c in &r.layout_changed {
        let _ = writeln!(s, "~ {}: layout {} -> {}", shown(&c.name), layout(&c.a), layout(&c.b));
    }
    for v in &r.value_changed {
        let part = v.part.as_ref().map(|p| format!(" (part {p})")).unwrap_or_default();
        let _ = match v.differing {
            None => writeln!(
                s,
                "~ {}: values differ: the stored parts differ in dtype or shape{part}",
                shown(&v.name)
            ),
            Some(n) => {
                let mut line = format!("~ {}: values differ: {n} of {} elements", shown(&v.name), v.numel);
                if let Some(m) = v.max_abs_diff {
                    let _ = write!(line, ", max |a-b| {}", number(m));
                }
                if let Some(i) = &v.first_index {
                    let _ = write!(line, ", first at {i:?}{part}");
                }
                writeln!(s, "{line}")
            }
        };
    }
    for c in &r.metadata_changed {
        let _ = writeln!(
            s,
            "~ {}: metadata {} -> {}",
            shown(&c.name),
            Value::Object(c.a.clone()),
            Value::Object(c.b.clone())
        );
    }
    if let Some(d) = &r.global_metadata {
        let _ = writeln!(
            s,
            "~ global metadata: {} -> {}",
            Value::Object(d.a.clone()),
            Value::Object(d.b.clone())
        );
    }
    if r.identical {
        let _ = writeln!(s, "identical");
    } else {
        let counts = [
            (r.added.len(), "added"),
            (r.removed.len(), "removed"),
            (r.dtype_changed.len(), "dtype changed"),
            (r.shape_changed.len(), "shape changed"),
            (r.layout_changed.len(), "layout changed"),
            (r.value_changed.len(), "values changed"),
            (r.metadata_changed.len(), "metadata changed"),
        ];
        let mut parts: Vec<String> = counts
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
        if r.global_metadata_changed {
            parts.push("global metadata changed".into());
        }
        let _ = writeln!(s, "files differ: {}", parts.join(", "));
    }
    s
}

/// A float for people: short, exact enough, `inf` for infinities.
fn number(x: f64) -> String {
    if x == 0.0 || (1e-4..1e6).contains(&x.abs()) || !x.is_finite() {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(f64::INFINITY), "inf");
        assert_eq!(number(1e-9), "1e-9");
    }
}
