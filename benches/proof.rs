//! Key-switch proof benchmark (`cargo bench --bench proof -- [--secrets N] [--period S]
//! [--replicas R] [--lro-seconds L]`).
//!
//! `rotate --twice` on a twin whose R API server replicas (default 2) learn a new key at their
//! own status calls every S seconds (default 60, as upstream), with cluster operations of L
//! seconds. The proof may cost at most what the API servers make anyone wait: the budget is
//! 1.1 x (the two cluster operations + two status periods + the two re-encryption passes), all
//! measured from the run's own journal. Prints the figures and whether the run kept to it.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KMSCTL: &str = env!("CARGO_BIN_EXE_kmsctl");

struct Args {
    secrets: usize,
    period: u64,
    replicas: usize,
    lro_seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        secrets: 5000,
        period: 60,
        replicas: 2,
        lro_seconds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_default();
        match arg.as_str() {
            "--secrets" => a.secrets = val().parse().expect("--secrets N"),
            "--period" => a.period = val().parse().expect("--period S"),
            "--replicas" => a.replicas = val().parse().expect("--replicas R"),
            "--lro-seconds" => a.lro_seconds = val().parse().expect("--lro-seconds L"),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// The twin's `env` file as variables.
fn twin_env(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("env"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            Some((
                k.to_string(),
                v.trim_matches('\'').trim_matches('"').to_string(),
            ))
        })
        .collect()
}

fn start_twin(dir: &Path, a: &Args) -> std::process::Child {
    let out = std::fs::File::create(dir.join("serve.out")).expect("serve.out");
    let child = Command::new(KMSCTL)
        .args(["sim", "serve", "--dir"])
        .arg(dir)
        .args(["--secrets", &a.secrets.to_string(), "--namespaces", "20"])
        .args(["--apiserver-replicas", &a.replicas.to_string()])
        .args(["--kms-status-period", &a.period.to_string()])
        .args([
            "--lro-seconds",
            &a.lro_seconds.to_string(),
            "--latency-ms",
            "2",
        ])
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .expect("kmsctl sim serve");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(dir.join("serve.out"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("ready"))
    {
        assert!(Instant::now() < deadline, "the twin was not ready in 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// Seconds each step took, by step name, in the order the journal shows them.
fn step_seconds(journal: &Path) -> Vec<(String, f64)> {
    let text = std::fs::read_to_string(journal).expect("the run's journal");
    let entries: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let names: Vec<String> = entries
        .iter()
        .find(|e| e["type"] == "run")
        .and_then(|e| e["procedure"]["steps"].as_array())
        .map(|s| {
            s.iter()
                .map(|st| st["step"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default();
    let at =
        |e: &Value| chrono::DateTime::parse_from_rfc3339(e["at"].as_str().unwrap_or_default()).ok();
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| e["type"] == "step-finished") {
        let index = e["index"].as_u64().unwrap_or(0);
        let started = entries
            .iter()
            .rfind(|s| s["type"] == "step-started" && s["index"].as_u64() == Some(index));
        if let (Some(s), Some(f)) = (started.and_then(at), at(e)) {
            let name = names.get(index as usize).cloned().unwrap_or_default();
            out.push((name, (f - s).num_milliseconds() as f64 / 1000.0));
        }
    }
    out
}

fn main() {
    let a = args();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("kmsctl-proof-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let mut twin = start_twin(&dir, &a);
    let start = Instant::now();
    let out = Command::new(KMSCTL)
        .args(["rotate", "--twice", "--yes", "-o", "json"])
        .envs(twin_env(&dir))
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("KMSCTL_KMS_STATUS_PERIOD_SECONDS", a.period.to_string())
        .stderr(Stdio::null())
        .output()
        .expect("kmsctl rotate");
    let wall = start.elapsed().as_secs_f64();
    let _ = twin.kill();
    let _ = twin.wait();
    if !out.status.success() {
        eprintln!(
            "rotate --twice failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::process::exit(1);
    }
    let report: Value = serde_json::from_slice(&out.stdout).expect("the run's report");
    let steps = step_seconds(Path::new(report["journal"].as_str().unwrap_or_default()));
    let sum = |name: &str| -> f64 {
        steps
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, s)| s)
            .sum()
    };
    let operations = sum("update-kms");
    let passes: f64 = report["reencrypt"]
        .as_array()
        .map(|r| r.iter().filter_map(|s| s["seconds"].as_f64()).sum())
        .unwrap_or(0.0);
    let proofs: Vec<String> = report["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["step"] == "prove-key-switch")
        .map(|s| {
            format!(
                "{} {:.1}s",
                s["output"]["evidence"].as_str().unwrap_or("?"),
                s["output"]["waitedSeconds"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    let budget = 1.1 * (operations + 2.0 * a.period as f64 + passes);
    println!(
        "proof: rotate --twice, {} Secrets, {} replicas, status period {} s: {wall:.1}s | operations {operations:.1}s, re-encryption passes {passes:.1}s, proofs [{}], prove-key-switch steps {:.1}s | budget 1.1 x ({operations:.1} + 2 x {} + {passes:.1}) = {budget:.1}s | {}",
        a.secrets,
        a.replicas,
        a.period,
        proofs.join(", "),
        sum("prove-key-switch"),
        a.period,
        if wall <= budget {
            "within budget"
        } else {
            "OVER BUDGET"
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
    if wall > budget {
        std::process::exit(1);
    }
}
