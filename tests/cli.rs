//! The `tlab` command line end to end, including a training run killed mid-checkpoint.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn tlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tlab"))
}

fn run_ok(args: &[&str]) -> String {
    let out = tlab().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tlab {args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_err(args: &[&str]) -> String {
    let out = tlab().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "tlab {args:?} should have failed");
    assert!(!stderr.contains("panicked"), "tlab {args:?} panicked: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

#[test]
fn models_and_info() {
    assert!(run_ok(&["models"]).contains("resnet20"));
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    let w = w.to_str().unwrap();
    let out = run_ok(&["train", "--data", "digits", "--model", "mlp", "--epochs", "1", "--out", w]);
    assert!(out.contains("ca"), "{out}");
    let info = run_ok(&["info", w]);
    assert!(info.contains("head.weight") && info.contains("[10, 256]"), "{info}");
    let eval = run_ok(&["eval", "--data", "digits", "--weights", w, "--triggered"]);
    assert!(eval.contains("asr"), "{eval}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = run_err(&["train", "--data", "idx:/nonexistent/a,/nonexistent/b", "--out", "x.safetensors"]);
    assert!(e.contains("/nonexistent/a"), "{e}");
    let e = run_err(&["train", "--data", "mnist", "--out", "x.safetensors"]);
    assert!(e.contains("not a known source"), "{e}");
    let e = run_err(&["train", "--model", "resnet21", "--out", "x.safetensors"]);
    assert!(e.contains("unknown model"), "{e}");
    let e = run_err(&["train", "--poison-rate", "1.5", "--out", "x.safetensors"]);
    assert!(e.contains("poison rate"), "{e}");
    let e = run_err(&["train", "--trigger-size", "9", "--poison-rate", "0.1", "--out", "x.safetensors"]);
    assert!(e.contains("larger than"), "{e}");
    let e = run_err(&["train", "--target", "12", "--poison-rate", "0.1", "--out", "x.safetensors"]);
    assert!(e.contains("target class"), "{e}");
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"definitely not weights at all").unwrap();
    let e = run_err(&["info", junk.to_str().unwrap()]);
    assert!(e.contains("junk.safetensors"), "{e}");
}

/// Kill a checkpointing run at many moments; every time, the checkpoint on disk is either
/// absent or complete, and a re-run resumes from it and finishes.
#[test]
fn killed_run_leaves_a_complete_checkpoint_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("run.ckpt");
    let out = dir.path().join("w.safetensors");
    let args = |epochs: &str| {
        vec![
            "train".to_string(), "--data".into(), "digits".into(), "--model".into(), "mlp".into(),
            "--epochs".into(), epochs.into(), "--checkpoint".into(), ckpt.to_str().unwrap().into(),
            "--out".into(), out.to_str().unwrap().into(),
        ]
    };
    // An MLP epoch on digits takes milliseconds, so checkpoints are written many times a second
    // and the kills land during writes as well as between them.
    for delay_ms in [500u64, 800, 1100, 1400, 1700] {
        let mut child = tlab().args(args("80")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_checkpoint_complete(&ckpt);
        assert!(!out.exists(), "final weights written by a killed run");
    }
    assert!(ckpt.exists(), "no checkpoint after several seconds of training");
    let stdout = run_ok(&args("80").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(stdout.contains("weights written"), "{stdout}");
    assert!(out.exists());
    let debris: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(debris.is_empty(), "temporary files left behind: {debris:?}");
}

fn assert_checkpoint_complete(path: &Path) {
    if !path.exists() {
        return;
    }
    let (model, _optim, meta) = transferlab::train::checkpoint::load(path)
        .unwrap_or_else(|e| panic!("checkpoint left unreadable by a kill: {e}"));
    assert!(meta.epoch >= 1);
    assert!(model.contains_key("head.weight"));
}
