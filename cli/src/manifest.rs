//! `deathtensors manifest`: write (or print) the JSON manifest sidecar of a file.

use std::ffi::OsString;

use deathtensors::manifest;
use deathtensors::Error;

use crate::{expand_path, EXIT_OK};

/// Arguments of `deathtensors manifest`.
#[derive(clap::Args)]
pub(crate) struct ManifestArgs {
    /// The .deathtensors file; ~ and $VARS are expanded.
    #[arg(value_name = "FILE")]
    path: OsString,
    /// Where to write the manifest (default: FILE.manifest.json beside the file).
    #[arg(short, long, value_name = "OUT", conflicts_with = "json")]
    output: Option<OsString>,
    /// Print the manifest as JSON instead of writing the sidecar.
    #[arg(long)]
    json: bool,
}

/// Run the command: its output and exit code.
///
/// Without `--json`, writes the sidecar atomically and prints its path.
pub(crate) fn run(args: ManifestArgs) -> Result<(String, i32), Error> {
    let reader = manifest::open_described(expand_path(&args.path))?;
    if args.json {
        return Ok((manifest::manifest_text(&reader)?, EXIT_OK));
    }
    let mut out = args.output.as_deref().map(expand_path);
    if let Some(dir) = out.as_ref().filter(|p| p.is_dir()) {
        let name = manifest::sidecar_path(reader.path().file_name().unwrap_or_default());
        out = Some(dir.join(name));
    }
    let written = manifest::write_manifest(&reader, out.as_deref())?;
    Ok((format!("{}\n", written.display()), EXIT_OK))
}

#[cfg(test)]
mod tests {
    use crate::{run, EXIT_BAD_FILE, EXIT_USAGE};

    #[test]
    fn json_and_output_conflict() {
        assert_eq!(
            run(["deathtensors", "manifest", "x.deathtensors", "--json", "-o", "y.json"]),
            EXIT_USAGE
        );
    }

    #[test]
    fn missing_file_exits_1() {
        assert_eq!(
            run(["deathtensors", "manifest", "/nonexistent/x.deathtensors"]),
            EXIT_BAD_FILE
        );
    }
}
