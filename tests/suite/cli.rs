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
    let args: Vec<String> = [
        "train", "--data", "digits", "--model", "mlp", "--epochs", "300", "--checkpoint", ckpt.to_str().unwrap(),
        "--out", out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    // An MLP epoch on digits takes milliseconds and writes a checkpoint each time: wait until
    // the run has passed a given epoch, then kill it a few milliseconds later, so the kills
    // land during checkpoint writes as well as between them.
    for (round, wait_epoch) in [1usize, 20, 40, 60, 80].into_iter().enumerate() {
        let mut child = tlab().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while checkpoint_epoch(&ckpt) < wait_epoch && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(3 * round as u64));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_checkpoint_complete(&ckpt);
        assert!(!out.exists(), "final weights written by a killed run");
    }
    assert!(checkpoint_epoch(&ckpt) >= 80);
    let stdout = run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(stdout.contains("weights written"), "{stdout}");
    assert!(out.exists());
    let debris: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(debris.is_empty(), "temporary files left behind: {debris:?}");
}

fn checkpoint_epoch(path: &Path) -> usize {
    transferlab::train::checkpoint::load(path).map_or(0, |(_, _, meta)| meta.epoch)
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

/// `tlab eval` on a foreign PyTorch checkpoint trained on normalised inputs: `--model` builds
/// the architecture, `--normalize` puts the statistics inside, and the CA/ASR/RA it prints are
/// PyTorch's (tests/fixtures/normalized, made by make_normalized_fixture.py). Blended and
/// trigger-placement flags are accepted by `train`.
#[test]
fn eval_of_a_foreign_normalised_checkpoint_prints_pytorchs_numbers() {
    use base64::Engine;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/normalized");
    let e: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures.join("expected.json")).unwrap()).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD.decode(e["images_u8_base64"].as_str().unwrap()).unwrap();
    let labels: Vec<u32> = e["labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let ds = transferlab::data::Dataset::new(bytes.iter().map(|&b| b as f32 / 255.0).collect(), (3, 32, 32), labels, transferlab::data::Dataset::numbered_classes(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("fixture.parquet");
    transferlab::data::write_hf_parquet(&pq, &ds, "image", "label").unwrap();
    let data = format!("parquet:{}", pq.display());
    let weights = fixtures.join("resnet8_normalized.th");
    let w = weights.to_str().unwrap();
    let args = ["eval", "--data", &data, "--test-fraction", "0", "--weights", w, "--model", "resnet8", "--normalize", "cifar10", "--triggered"];
    let out = run_ok(&args);
    let pct = |k: &str| format!("{:.3}", e[k].as_f64().unwrap());
    assert!(out.contains(&pct("ca")) && out.contains(&pct("asr")), "expected CA {} and ASR {} in:\n{out}", pct("ca"), pct("asr"));
    // Our own weights carry their spec; a foreign file without --model says what to add.
    let err = run_err(&["eval", "--data", &data, "--test-fraction", "0", "--weights", w, "--normalize", "cifar10"]);
    assert!(err.contains("--model"), "{err}");
    let err = run_err(&["train", "--data", "digits", "--model", "mlp", "--epochs", "1", "--attack", "no-such-attack", "--out", "x.safetensors"]);
    assert!(err.contains("use badnets, blended, sig, ftrojan, wanet or bpp"), "{err}");
}
