//! Fleet benchmark (`cargo bench --bench fleet -- [--clusters N] [--secrets S] [--max-parallel P]
//! [--sample K]`).
//!
//! Starts a fleet twin (`kmsctl sim serve --fleet-clusters N`, S Secrets each) and measures
//! `kmsctl fleet rotate --twice --max-parallel P` over all of it: wall time and the fleet
//! process's peak RSS. Then, on a second fleet twin of the same shape, K single-cluster
//! `kmsctl rotate --twice` runs one after the other (each reaching its cluster through Resource
//! Manager, as the fleet does): their mean times N is "the sum of the single-cluster runs".
//! After each arm it checks with `sim inspect --all` that every cluster it rotated has every
//! Secret under its new key. Goal (issue 18): fleet wall <= 0.15 x the sum, peak RSS <= 512 MiB.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KMSCTL: &str = env!("CARGO_BIN_EXE_kmsctl");

struct Args {
    clusters: usize,
    secrets: usize,
    max_parallel: usize,
    sample: usize,
}

fn args() -> Args {
    let mut a = Args {
        clusters: 50,
        secrets: 1000,
        max_parallel: 10,
        sample: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_default().parse().expect("a number");
        match arg.as_str() {
            "--clusters" => a.clusters = val(),
            "--secrets" => a.secrets = val(),
            "--max-parallel" => a.max_parallel = val(),
            "--sample" => a.sample = val(),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// A fleet twin process, stopped when dropped.
struct Twin {
    child: std::process::Child,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Drop for Twin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_twin(a: &Args) -> Twin {
    let dir = std::env::temp_dir().join(format!(
        "kmsctl-fleet-bench-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let out = std::fs::File::create(dir.join("serve.out")).expect("serve.out");
    let child = Command::new(KMSCTL)
        .args(["sim", "serve", "--dir"])
        .arg(&dir)
        .args(["--fleet-clusters", &a.clusters.to_string()])
        .args(["--secrets", &a.secrets.to_string(), "--namespaces", "10"])
        .args(["--lro-seconds", "1", "--kms-status-period", "2"])
        .args(["--latency-ms", "2"])
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .expect("kmsctl sim serve");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !std::fs::read_to_string(dir.join("serve.out"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("ready"))
    {
        assert!(Instant::now() < deadline, "the fleet twin was not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let env = std::fs::read_to_string(dir.join("env"))
        .expect("the twin's env")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.strip_prefix("export ")?.split_once('=')?;
            Some((k.to_string(), v.trim_matches('\'').to_string()))
        })
        .collect();
    Twin { child, dir, env }
}

impl Twin {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KMSCTL);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("XDG_STATE_HOME", self.dir.join("state"))
            .envs(self.env.iter().cloned())
            .env_remove("KUBECONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// Every member: (name, resource group, subscription, keyId, all Secrets under it).
    fn members(&self) -> Vec<(String, String, String, String, bool)> {
        let out = Command::new(KMSCTL)
            .args(["sim", "inspect", "--all", "--dir"])
            .arg(&self.dir)
            .output()
            .expect("sim inspect --all");
        let v: Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
        v["clusters"]
            .as_array()
            .expect("clusters")
            .iter()
            .map(|c| {
                let id = c["cluster"]["id"].as_str().unwrap_or_default();
                let part = |after: &str| {
                    id.split('/')
                        .skip_while(|s| !s.eq_ignore_ascii_case(after))
                        .nth(1)
                        .unwrap_or_default()
                        .to_string()
                };
                let kid =
                    c["cluster"]["properties"]["securityProfile"]["azureKeyVaultKms"]["keyId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                let by = c["storage"]["byKey"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let under: u64 = by
                    .iter()
                    .filter(|(k, _)| !kid.is_empty() && k.ends_with(&kid))
                    .filter_map(|(_, n)| n.as_u64())
                    .sum();
                let all = under > 0 && Some(under) == c["storage"]["total"].as_u64();
                (
                    c["cluster"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    part("resourceGroups"),
                    part("subscriptions"),
                    kid,
                    all,
                )
            })
            .collect()
    }
}

fn hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs to the end, sampling peak RSS: (success, seconds, peak KiB).
fn timed(mut c: Command) -> (bool, f64, u64) {
    let start = Instant::now();
    let mut child = c.spawn().expect("kmsctl starts");
    let mut peak = 0;
    loop {
        if let Some(h) = hwm_kib(child.id()) {
            peak = peak.max(h);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            return (status.success(), start.elapsed().as_secs_f64(), peak);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Members whose key changed and whose Secrets are all under the new one.
fn rotated(before: &[(String, String, String, String, bool)], twin: &Twin) -> usize {
    let after = twin.members();
    after
        .iter()
        .filter(|m| m.4 && before.iter().any(|b| b.0 == m.0 && b.3 != m.3))
        .count()
}

fn main() {
    let a = args();
    println!(
        "fleet benchmark: {} clusters x {} Secrets, --max-parallel {}, single-run sample {}",
        a.clusters, a.secrets, a.max_parallel, a.sample
    );

    // (a) the fleet, in one process.
    let twin = start_twin(&a);
    let before = twin.members();
    let mut c = twin.command(&[
        "fleet",
        "rotate",
        "--twice",
        "--waves",
        "100%",
        "--max-parallel",
        &a.max_parallel.to_string(),
        "--yes",
        "--progress",
        "plain",
    ]);
    c.stderr(Stdio::from(
        std::fs::File::create(twin.dir.join("fleet.err")).expect("fleet.err"),
    ));
    let (ok, fleet_s, fleet_kib) = timed(c);
    let done = rotated(&before, &twin);
    if !ok {
        let err = std::fs::read_to_string(twin.dir.join("fleet.err")).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        println!("fleet rotate failed: {tail:?}");
    }
    println!(
        "fleet rotate --twice: {fleet_s:.1} s wall, peak RSS {:.0} MiB, {done}/{} clusters rotated and proven",
        fleet_kib as f64 / 1024.0,
        a.clusters
    );
    drop(twin);

    // (b) single-cluster runs, one after the other, on a fresh fleet of the same shape.
    let twin = start_twin(&a);
    let members = twin.members();
    let mut times = Vec::new();
    let mut peak_single = 0;
    for m in members.iter().take(a.sample.max(1)) {
        let c = twin.command(&[
            "rotate",
            "--twice",
            "--yes",
            "--subscription",
            &m.2,
            "-g",
            &m.1,
            "-n",
            &m.0,
            "--kube-credentials",
            "azure",
        ]);
        let (ok, s, kib) = timed(c);
        assert!(ok, "rotate --twice of {} failed", m.0);
        peak_single = peak_single.max(kib);
        times.push(s);
    }
    let sample_done = rotated(&members, &twin);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let sum = mean * a.clusters as f64;
    println!(
        "single rotate --twice: mean {mean:.1} s over {} runs ({sample_done} rotated and proven), peak RSS {:.0} MiB; sum for {} clusters ~ {sum:.0} s",
        times.len(),
        peak_single as f64 / 1024.0,
        a.clusters
    );
    let ratio = fleet_s / sum;
    println!(
        "fleet / sum of single runs: {ratio:.3} (goal <= 0.15); fleet peak RSS {:.0} MiB (goal <= 512)",
        fleet_kib as f64 / 1024.0
    );
}
