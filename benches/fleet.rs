//! Fleet benchmark (`cargo bench --bench fleet -- [--clusters N] [--secrets S] [--parallel P]
//! [--lro-seconds L] [--period S]`).
//!
//! A twin serving N clusters (default 50) of S Secrets each (default 1,000): one cluster rotated
//! alone first (the single-cluster run), then `kmsctl fleet rotate --waves 100% --max-parallel P`
//! (default 10) over all of them. Prints the fleet's wall time against the sum of the
//! single-cluster runs (N x the one measured alone, and the sum of each cluster's own time in the
//! fleet), and the fleet process's peak RSS. Goals: wall <= 0.15 x the sum, peak RSS <= 512 MiB.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KMSCTL: &str = env!("CARGO_BIN_EXE_kmsctl");

struct Args {
    clusters: usize,
    secrets: usize,
    parallel: usize,
    lro_seconds: u64,
    period: u64,
}

fn args() -> Args {
    let mut a = Args {
        clusters: 50,
        secrets: 1000,
        parallel: 10,
        lro_seconds: 5,
        period: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_default();
        match arg.as_str() {
            "--clusters" => a.clusters = val().parse().expect("--clusters N"),
            "--secrets" => a.secrets = val().parse().expect("--secrets S"),
            "--parallel" => a.parallel = val().parse().expect("--parallel P"),
            "--lro-seconds" => a.lro_seconds = val().parse().expect("--lro-seconds L"),
            "--period" => a.period = val().parse().expect("--period S"),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

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

fn kmsctl(dir: &Path, a: &Args, args: &[&str]) -> Command {
    let mut c = Command::new(KMSCTL);
    c.args(args)
        .envs(twin_env(dir))
        .env_remove("KUBECONFIG")
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("KMSCTL_KMS_STATUS_PERIOD_SECONDS", a.period.to_string())
        .env("KMSCTL_BARRIER_POLL_MILLIS", "500")
        .stderr(Stdio::null());
    c
}

/// The largest resident set of the children waited for so far, in MiB.
fn children_peak_rss_mib() -> f64 {
    // SAFETY: getrusage fills the struct it is given; nothing else is shared.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    u.ru_maxrss as f64 / 1024.0
}

fn main() {
    let a = args();
    let dir = std::env::temp_dir().join(format!("kmsctl-fleet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let out = std::fs::File::create(dir.join("serve.out")).expect("serve.out");
    let mut twin = Command::new(KMSCTL)
        .args(["sim", "serve", "--dir"])
        .arg(&dir)
        .args(["--fleet-clusters", &a.clusters.to_string()])
        .args(["--secrets", &a.secrets.to_string(), "--namespaces", "10"])
        .args(["--lro-seconds", &a.lro_seconds.to_string()])
        .args(["--kms-status-period", &a.period.to_string()])
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
        assert!(Instant::now() < deadline, "the twin was not ready in 300 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    // One cluster alone, as `kmsctl rotate` runs it.
    let plan = kmsctl(&dir, &a, &["fleet", "plan", "-o", "json"])
        .output()
        .expect("fleet plan");
    let p: Value = serde_json::from_slice(&plan.stdout).expect("the plan as JSON");
    let c = &p["selection"][0];
    let one = Instant::now();
    let single = kmsctl(
        &dir,
        &a,
        &["rotate", "--yes", "--kube-credentials", "azure"],
    )
    .args(["--subscription", c["subscription"].as_str().unwrap()])
    .args(["-g", c["resourceGroup"].as_str().unwrap()])
    .args(["-n", c["name"].as_str().unwrap()])
    .output()
    .expect("kmsctl rotate");
    let single_s = one.elapsed().as_secs_f64();
    assert!(
        single.status.success(),
        "the single-cluster rotation failed"
    );
    let single_rss = children_peak_rss_mib();
    // The fleet.
    let start = Instant::now();
    let fleet = kmsctl(
        &dir,
        &a,
        &["fleet", "rotate", "--waves", "100%", "--yes", "-o", "json"],
    )
    .args(["--max-parallel", &a.parallel.to_string()])
    .output()
    .expect("kmsctl fleet rotate");
    let wall = start.elapsed().as_secs_f64();
    let peak = children_peak_rss_mib();
    let _ = twin.kill();
    let _ = twin.wait();
    let lines: Vec<Value> = String::from_utf8_lossy(&fleet.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let clusters: Vec<&Value> = lines.iter().filter(|l| l["name"].is_string()).collect();
    let ok = clusters
        .iter()
        .filter(|l| l["outcome"] == "succeeded")
        .count();
    let in_fleet: f64 = clusters.iter().filter_map(|l| l["seconds"].as_f64()).sum();
    let sum = single_s * a.clusters as f64;
    println!(
        "fleet: {} clusters x {} Secrets at --max-parallel {} (cluster operations {} s, status period {} s)",
        a.clusters, a.secrets, a.parallel, a.lro_seconds, a.period
    );
    println!("  one cluster alone: {single_s:.1} s (peak RSS {single_rss:.0} MiB)");
    println!(
        "  fleet: {wall:.1} s wall, {ok}/{} succeeded (exit {:?}); sum of single runs {sum:.0} s (N x alone), {in_fleet:.0} s (each cluster's own time in the fleet)",
        a.clusters,
        fleet.status.code()
    );
    println!(
        "  wall / sum: {:.3} (goal <= 0.15); peak RSS {peak:.0} MiB (goal <= 512)",
        wall / sum
    );
    println!(
        "  {}",
        if wall <= 0.15 * sum && peak <= 512.0 && ok == a.clusters {
            "within the goals"
        } else {
            "OUTSIDE the goals"
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
}
