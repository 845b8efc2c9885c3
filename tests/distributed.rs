//! Data-parallel training on MPI (`--features mpi`, Open MPI's `mpirun` on PATH): two ranks on
//! this machine train the model one process trains on the same two videos per step, hold the
//! same parameters, resume exactly, and stop together when one of them fails.
#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use e2e_tal::train::{Checkpoint, load_model};

mod common;
use common::mpirun;

const BIN: &str = env!("CARGO_BIN_EXE_e2e-tal");

/// A training configuration a debug build trains in about a second.
const TINY: &str = r#"{"backbone": {"Vit": {"embed_dim": 32, "depth": 2, "num_heads": 2,
 "mlp_dim": 64, "patch_size": 8, "num_frames": 8, "image_size": 32}},
 "head": {"embed_dim": 32, "num_heads": 2, "window_size": 9}, "epochs": 2}"#;

fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["synth", "--out", "ds", "--videos", "6", "--size", "32"])
        .args(["--classes", "2", "--seed", "3"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.path().join("tiny.json"), TINY).unwrap();
    dir
}

fn train_args(mode: &str, out: &str) -> Vec<String> {
    let args = format!(
        "train --data ds --out {out} --config tiny.json --from-scratch --quiet --mode {mode} \
         --videos-per-step 2"
    );
    args.split(' ').map(String::from).collect()
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn single(root: &Path, args: &[String]) -> Output {
    ok(
        Command::new(BIN)
            .args(args)
            .current_dir(root)
            .output()
            .unwrap(),
        "one process",
    )
}

fn ranks(root: &Path, n: usize, args: &[String]) -> Output {
    ok(
        mpirun(n)
            .arg(BIN)
            .args(args)
            .current_dir(root)
            .output()
            .unwrap(),
        "mpirun",
    )
}

/// Every float parameter of the run's checkpoint, in visiting order.
fn params(run: &Path) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let d = p.val().into_data().convert::<f32>();
            self.0.extend_from_slice(d.as_slice::<f32>().unwrap());
        }
    }
    let ck = Checkpoint::load(run).unwrap();
    let device = Device::default();
    let mut model = load_model(&ck, &device).unwrap();
    ck.load_model(&mut model).unwrap();
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

/// max |a - b| / max |b|.
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) as f64;
    diff / scale
}

/// SHA-256 (hex) of parameter values as the run records it: f32 little-endian, visiting order.
fn digest(values: &[f32]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    values.iter().for_each(|x| h.update(x.to_le_bytes()));
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The parameters' SHA-256 every rank held at the end of each epoch, as the run recorded it.
fn agreed(run: &Path) -> Vec<String> {
    epochs(run)
        .iter()
        .map(|e| {
            assert_eq!(e["ranks"]["size"], 2, "{e}");
            e["ranks"]["parameters_sha256"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// The run's per-epoch records (`metrics.json`).
fn epochs(run: &Path) -> Vec<serde_json::Value> {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    m.as_array().unwrap().clone()
}

fn losses(run: &Path) -> Vec<f64> {
    epochs(run)
        .iter()
        .map(|e| e["mean_loss"].as_f64().unwrap())
        .collect()
}

/// 5 training videos, 2 per step: 3 steps an epoch, the last with one video (rank 1 idle), 6
/// steps in all. The ranks' parameters are checked equal at every checkpoint by the run itself
/// (it stops with an error naming the rank otherwise).
#[test]
fn two_ranks_train_what_one_process_trains() {
    let _one = one_job();
    let ws = workspace();
    let root = ws.path();
    for mode in ["full", "reversible"] {
        let one = format!("one-{mode}");
        let two = format!("two-{mode}");
        single(root, &train_args(mode, &one));
        let out = ranks(root, 2, &train_args(mode, &two));
        let said = String::from_utf8_lossy(&out.stdout);
        // Rank 0 alone reports.
        assert_eq!(said.matches("training: mode").count(), 1, "{said}");
        let (a, b) = (params(&root.join(&two)), params(&root.join(&one)));
        // Both ranks held the parameters the checkpoint holds: the run compared the ranks'
        // hashes at every epoch's end (and stops naming a rank that differs) and recorded them.
        let hashes = agreed(&root.join(&two));
        assert_eq!(hashes.len(), 2);
        assert_eq!(
            hashes.last().unwrap(),
            &digest(&a),
            "{mode}: the recorded hash"
        );
        let d = rel_diff(&a, &b);
        eprintln!(
            "{mode}: 2 ranks vs 1 process, {} parameters: max rel diff {d:.2e}",
            a.len()
        );
        assert!(d <= 1e-6, "{mode}: parameters differ by {d:.2e} (relative)");
        let (la, lb) = (losses(&root.join(&two)), losses(&root.join(&one)));
        for (x, y) in la.iter().zip(&lb) {
            assert!(
                (x - y).abs() <= 1e-6 * y.abs(),
                "{mode}: losses {la:?} vs {lb:?}"
            );
        }
        // Rank 0 alone writes: every output once, no stray files from rank 1.
        for f in [
            "checkpoint",
            "predictions.json",
            "metrics.json",
            "backbone.safetensors",
        ] {
            assert!(root.join(&two).join(f).exists(), "{mode}: {f} missing");
        }
    }
}

#[test]
fn a_resumed_two_rank_run_continues_exactly() {
    let _one = one_job();
    let ws = workspace();
    let root = ws.path();
    let args = train_args("reversible", "whole");
    ranks(root, 2, &args);
    let mut part = train_args("reversible", "parts");
    part.extend(["--stop-after-steps".into(), "4".into()]);
    let out = ranks(root, 2, &part);
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped after 4 steps"));
    let resume = [
        "train", "--data", "ds", "--out", "parts", "--resume", "--quiet",
    ]
    .map(String::from);
    ranks(root, 2, &resume);
    let (a, b) = (params(&root.join("parts")), params(&root.join("whole")));
    let d = rel_diff(&a, &b);
    eprintln!("resumed vs uninterrupted 2-rank run: max rel diff {d:.2e}");
    assert!(d <= 1e-6, "resumed run differs by {d:.2e}");
    assert_eq!(losses(&root.join("parts")), losses(&root.join("whole")));
}

/// The process of `rank` among the descendants of `mpirun` (process `launcher`): its
/// environment names its rank.
fn rank_pid(launcher: u32, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let exe = std::fs::read_link(e.path().join("exe")).ok()?;
        let ours = exe == Path::new(BIN) && descends(pid, launcher);
        let has = env.split(|&b| b == 0).any(|v| v == want.as_bytes());
        (ours && has).then_some(pid)
    })
}

/// Whether process `pid` descends from `ancestor` (parents read from `/proc/<pid>/stat`).
fn descends(mut pid: u32, ancestor: u32) -> bool {
    while pid > 1 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, so read after its last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        match ppid {
            Some(p) if p == ancestor => return true,
            Some(p) => pid = p,
            None => return false,
        }
    }
    false
}

/// One MPI job at a time: the machine may have fewer cores than the tests' ranks.
static ONE_JOB: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_job() -> std::sync::MutexGuard<'static, ()> {
    ONE_JOB.lock().unwrap_or_else(|e| e.into_inner())
}

/// A rank killed mid-run stops the others (no hang) with the rank named, and the checkpoint
/// left behind is whole: the run resumes from it.
#[test]
fn a_rank_that_dies_stops_the_others() {
    let ws = workspace();
    let root = ws.path();
    let mut args = train_args("full", "killed");
    args.extend(["--epochs".into(), "200".into()]);
    let _one = one_job();
    let child = mpirun(2)
        .arg(BIN)
        .args(&args)
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let ck = root.join("killed/checkpoint");
    while !ck.exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = rank_pid(child.id(), 1).expect("rank 1 runs");
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let t1 = Instant::now();
    let out = child.wait_with_output().unwrap();
    let waited = t1.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        waited < Duration::from_secs(60),
        "the others ran on {waited:?}"
    );
    assert!(err.contains("rank 1"), "the dead rank is not named: {err}");
    Checkpoint::load(&root.join("killed")).expect("a whole checkpoint stays");
}
