//! `deathtensors hub-*`: the Hugging Face Hub commands.
//!
//! ```text
//! deathtensors hub-push REPO PATH [--path-in-repo P] [--private] [--message M]
//! deathtensors hub-pull REPO FILE [--local-dir DIR] [--verify] [--force-download]
//! deathtensors hub-list REPO
//! deathtensors hub-info REPO [FILE]
//! deathtensors hub-convert REPO FILE [--output NAME] [--compress[=CODEC]] [--level N] [--checksum ALGO] [--delete-original]
//! ```
//! (every command also takes `--revision`, `--repo-type`, `--token`, `--json`).
//!
//! They live in the same clap tree as the local commands, so `--help`, usage
//! errors and exit codes are the same; the Hub client itself is Python's
//! `huggingface_hub`, so a parsed command is handed, as JSON, to the host
//! (see [`crate::run_with_python`]): `python -m deathtensors` runs it in
//! `deathtensors.huggingface`; the standalone binary says how to get that.

use serde::Serialize;
use serde_json::Value;

/// Where a repo lives on the Hub.
#[derive(clap::Args, Serialize)]
pub(crate) struct RepoArgs {
    /// The repo id, `namespace/name`.
    repo_id: String,
    /// Branch, tag or commit (default: main).
    #[arg(long)]
    revision: Option<String>,
    /// The kind of repo.
    #[arg(long, default_value = "model", value_parser = ["model", "dataset", "space"])]
    repo_type: String,
    /// Access token (default: HF_TOKEN, HUGGING_FACE_HUB_TOKEN, then the `hf auth login` cache).
    #[arg(long)]
    token: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `deathtensors hub-push`.
#[derive(clap::Args, Serialize)]
pub(crate) struct PushArgs {
    #[command(flatten)]
    #[serde(flatten)]
    repo: RepoArgs,
    /// The local .deathtensors file, or a sharded checkpoint (its base path or index).
    path: String,
    /// Where the file goes in the repo (default: its file name; for a sharded checkpoint, a folder).
    #[arg(long)]
    path_in_repo: Option<String>,
    /// Create the repo private when it does not exist yet.
    #[arg(long)]
    private: bool,
    /// The commit message.
    #[arg(long)]
    message: Option<String>,
}

/// Arguments of `deathtensors hub-pull`.
#[derive(clap::Args, Serialize)]
pub(crate) struct PullArgs {
    #[command(flatten)]
    #[serde(flatten)]
    repo: RepoArgs,
    /// The file in the repo (a .deathtensors file, or the base name or index of a sharded checkpoint).
    filename: String,
    /// Also place the files in this folder (default: only the Hugging Face cache).
    #[arg(long)]
    local_dir: Option<String>,
    /// Verify the checksum footer of every downloaded file (exit 1 if one does not match).
    #[arg(long)]
    verify: bool,
    /// Download again even what is in the cache (to replace a damaged cached copy).
    #[arg(long)]
    force_download: bool,
}

/// Arguments of `deathtensors hub-list`.
#[derive(clap::Args, Serialize)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    #[serde(flatten)]
    repo: RepoArgs,
}

/// Arguments of `deathtensors hub-info`.
#[derive(clap::Args, Serialize)]
pub(crate) struct InfoArgs {
    #[command(flatten)]
    #[serde(flatten)]
    repo: RepoArgs,
    /// A .deathtensors file in the repo: show its tensor table, read with HTTP range requests (no download).
    filename: Option<String>,
}

/// Arguments of `deathtensors hub-convert`.
#[derive(clap::Args, Serialize)]
pub(crate) struct ConvertArgs {
    #[command(flatten)]
    #[serde(flatten)]
    repo: RepoArgs,
    /// The .safetensors file in the repo.
    filename: String,
    /// The name of the .deathtensors file to upload (default: FILE with the extension replaced).
    #[arg(long)]
    output: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    write: crate::convert::WriteArgs,
    /// Delete the .safetensors file in the same commit.
    #[arg(long)]
    delete_original: bool,
    /// The commit message.
    #[arg(long)]
    message: Option<String>,
}

/// The JSON request handed to the host: `{"command": "hub-push", ...arguments}`.
pub(crate) fn request(command: &str, args: &impl Serialize) -> String {
    let mut value = serde_json::to_value(args).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("command".into(), Value::String(command.into()));
    }
    value.to_string()
}
