//! The standalone `deathtensors` binary, run as a process.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_deathtensors");

/// Regression: Rust's runtime opens `/dev/null` on a closed stdout before
/// `main`, so the binary's own check saw an open descriptor and `list FILE
/// >&-` exited 0 having printed nothing.
#[test]
fn a_closed_stdout_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.deathtensors");
    let data = [0u8; 8];
    let tensors = [deathtensors::writer::TensorData {
        name: "a".into(),
        dtype: "F32".into(),
        shape: vec![2],
        data: &data,
        metadata: Default::default(),
    }];
    deathtensors_plugins::link();
    deathtensors::writer::write_file(&path, &tensors, &Default::default(), &Default::default()).unwrap();

    let open = Command::new(BIN).arg("list").arg(&path).output().unwrap();
    assert_eq!(open.status.code(), Some(0));
    assert_eq!(open.stdout, b"a\n");
    let to_null = Command::new("sh")
        .args(["-c", "exec \"$0\" list \"$1\" >/dev/null"])
        .arg(BIN)
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(to_null.status.code(), Some(0), "/dev/null is a fine stdout");
    let closed = Command::new("sh")
        .args(["-c", "exec \"$0\" list \"$1\" >&-"])
        .arg(BIN)
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(closed.status.code(), Some(2));
    let err = String::from_utf8_lossy(&closed.stderr);
    assert!(err.contains("standard output is closed"), "{err}");
}

/// Regression: the standalone binary, which hands sharded checkpoints to the
/// Python package, told a sharded `repack` to run `convert` there.
#[test]
fn a_sharded_command_says_which_command_to_run_through_python() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("m.deathtensors.index.json"); // names a checkpoint
    for (args, hint) in [
        (vec!["repack", "--compress"], "repacking a sharded checkpoint"),
        (vec!["convert"], "converting a sharded checkpoint"),
    ] {
        let mut command = Command::new(BIN);
        command.args(&args).arg(&index);
        if args[0] == "convert" {
            command.arg(dir.path().join("out.safetensors"));
        }
        let out = command.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(hint), "{args:?}: {err}");
        assert!(
            err.contains(&format!("python -m deathtensors {} ...", args[0])),
            "{args:?}: {err}"
        );
    }
}
