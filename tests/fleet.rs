//! `kmsctl fleet` end to end against a twin serving a fleet: each cluster reached through
//! Resource Manager (no kubeconfig), rotated in waves with the same proofs as a single run.

mod common;

use common::{World, text};
use kmsctl::sim::SimOptions;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Output;

async fn fleet(opts: SimOptions, clusters: usize) -> World {
    common::init();
    let mut opts = SimOptions {
        secrets: 30,
        namespaces: 3,
        lro_seconds: 0,
        kms_status_period_seconds: 1,
        ..opts
    };
    opts.fleet_clusters.clusters = clusters;
    common::world(opts).await
}

/// kmsctl as a fleet's operator runs it: no kubeconfig; the environment's single-cluster
/// variables (which must not narrow the fleet) set anyway.
fn command(w: &World, args: &[&str]) -> std::process::Command {
    let mut c = w.command(args);
    c.env_remove("KUBECONFIG")
        .env("KMSCTL_CLUSTER", "aks-fleet-01")
        .env("KMSCTL_RESOURCE_GROUP", "rg-nowhere");
    c
}

async fn run(w: &World, args: &[&str]) -> Output {
    let mut c = command(w, args);
    tokio::task::spawn_blocking(move || c.output().expect("kmsctl runs"))
        .await
        .expect("join")
}

/// name -> the key id each member's KMS uses now.
fn keys(w: &World) -> BTreeMap<String, String> {
    w.twin.inspect_all()["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let kms = &c["cluster"]["properties"]["securityProfile"]["azureKeyVaultKms"];
            (
                c["cluster"]["name"].as_str().unwrap().to_string(),
                kms["keyId"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Every Secret of `name` is under the key its KMS uses now.
fn all_current(w: &World, name: &str) -> bool {
    let all = w.twin.inspect_all();
    let c = all["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"]["name"] == name)
        .unwrap();
    let kid = c["cluster"]["properties"]["securityProfile"]["azureKeyVaultKms"]["keyId"]
        .as_str()
        .unwrap()
        .to_string();
    let total = c["storage"]["total"].as_u64().unwrap();
    let under: u64 = c["storage"]["byKey"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.ends_with(&kid))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum();
    total > 0 && under == total
}

fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    before
        .iter()
        .filter(|(n, k)| after.get(*n) != Some(k))
        .map(|(n, _)| n.clone())
        .collect()
}

/// The JSON lines of `-o json`: per cluster, then the fleet's.
fn lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn outcomes(o: &Output) -> BTreeMap<String, String> {
    lines(o)
        .iter()
        .filter(|l| l["name"].is_string())
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_string(),
                l["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn fleet_journal(w: &World) -> String {
    let dir = w.state_dir().join("kmsctl/fleet");
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

async fn fault(w: &World, args: &[&str]) {
    let dir = w.dir.path().display().to_string();
    let mut a = vec!["sim", "fault", "--dir", &dir];
    a.extend_from_slice(args);
    let out = run(w, &a).await;
    assert!(out.status.success(), "sim fault: {}", text(&out));
}

#[tokio::test]
async fn waves_go_in_order_a_failure_stops_before_the_next_wave_and_resume_finishes() {
    let w = fleet(SimOptions::default(), 5).await;
    let before = keys(&w);
    // The plan: by name, 1 then 2 then the rest; the environment's cluster does not narrow it.
    let plan = run(&w, &["fleet", "plan", "--waves", "1,2,100%", "-o", "json"]).await;
    assert!(plan.status.success(), "{}", text(&plan));
    let p: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let names = |ids: &Value| -> Vec<String> {
        ids.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().rsplit('/').next().unwrap().to_string())
            .collect()
    };
    let waves: Vec<Vec<String>> = p["waves"].as_array().unwrap().iter().map(names).collect();
    assert_eq!(
        waves,
        vec![
            vec!["aks-fleet-01"],
            vec!["aks-fleet-02", "aks-fleet-03"],
            vec!["aks-fleet-04", "aks-fleet-05"]
        ]
    );
    assert_eq!(keys(&w), before, "plan changes nothing");

    fault(&w, &["--cluster", "aks-fleet-03", "--fail-operation"]).await;
    let out = run(
        &w,
        &[
            "fleet", "rotate", "--waves", "1,2,100%", "--order", "name", "--yes", "-o", "json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let o = outcomes(&out);
    assert_eq!(o.get("aks-fleet-01").map(String::as_str), Some("succeeded"));
    assert_eq!(o.get("aks-fleet-02").map(String::as_str), Some("succeeded"));
    assert_eq!(o.get("aks-fleet-03").map(String::as_str), Some("failed"));
    assert!(
        !o.contains_key("aks-fleet-04"),
        "wave 3 was not started: {o:?}"
    );
    let mid = keys(&w);
    assert_eq!(changed(&before, &mid), ["aks-fleet-01", "aks-fleet-02"]);
    // The canary finished before wave 2 started.
    let j = fleet_journal(&w);
    let first_wave_end = j.find("\"type\":\"wave-finished\",\"wave\":0").unwrap();
    let second_start = j.find("aks-fleet-02\",\"runId\"").unwrap();
    assert!(first_wave_end < second_start, "{j}");
    let status = run(&w, &["fleet", "status"]).await;
    assert!(
        text(&status).contains("state: stopped"),
        "{}",
        text(&status)
    );

    fault(&w, &["--clear"]).await;
    let out = run(&w, &["fleet", "resume", "--yes", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let o = outcomes(&out);
    assert_eq!(o.len(), 3, "the failed one retried, then wave 3: {o:?}");
    assert!(o.values().all(|v| v == "succeeded"), "{o:?}");
    let after = keys(&w);
    assert_eq!(changed(&before, &after).len(), 5);
    for n in after.keys() {
        assert!(all_current(&w, n), "{n}");
    }
    // Each cluster's run is an ordinary run: `kmsctl runs` lists them.
    let runs = run(&w, &["runs", "-o", "json"]).await;
    let r: Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert_eq!(r["runs"].as_array().unwrap().len(), 5, "{r}");
}

#[tokio::test]
async fn max_failures_lets_the_rollout_go_on_and_still_exits_1() {
    let w = fleet(SimOptions::default(), 3).await;
    let before = keys(&w);
    fault(&w, &["--cluster", "aks-fleet-01", "--fail-operation"]).await;
    let out = run(
        &w,
        &[
            "fleet",
            "rotate",
            "--waves",
            "1,100%",
            "--max-failures",
            "1",
            "--yes",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let o = outcomes(&out);
    assert_eq!(o["aks-fleet-01"], "failed");
    assert_eq!(o["aks-fleet-02"], "succeeded");
    assert_eq!(o["aks-fleet-03"], "succeeded");
    assert_eq!(
        changed(&before, &keys(&w)),
        ["aks-fleet-02", "aks-fleet-03"]
    );
    let last = lines(&out).pop().unwrap();
    assert_eq!(last["status"], "stopped", "{last}");
}

#[tokio::test]
async fn a_fleet_killed_mid_wave_is_finished_by_resume() {
    let w = fleet(SimOptions::default(), 3).await;
    let before = keys(&w);
    let mut child = command(&w, &["fleet", "rotate", "--waves", "1,100%", "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // SIGKILL once a cluster of wave 2 is in its update-kms step.
    let runs = w.state_dir().join("kmsctl/runs");
    let killed = tokio::task::spawn_blocking(move || {
        for _ in 0..12_000 {
            let mid = std::fs::read_dir(&runs).into_iter().flatten().any(|e| {
                let t = std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
                !t.contains("aks-fleet-01") && t.contains("\"type\":\"step-started\",\"index\":3")
            });
            if mid {
                child.kill().unwrap();
                child.wait().unwrap();
                return true;
            }
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        false
    })
    .await
    .unwrap();
    assert!(killed, "the fleet ended before wave 2's update-kms");
    let status = run(&w, &["fleet", "status", "-o", "json"]).await;
    let s: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["status"], "interrupted", "{s}");
    let out = run(&w, &["fleet", "resume", "--yes", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after = keys(&w);
    assert_eq!(changed(&before, &after).len(), 3);
    for n in after.keys() {
        assert!(all_current(&w, n), "{n}");
    }
    // The interrupted runs were resumed (same run ids), not started again.
    let runs = run(&w, &["runs", "-o", "json"]).await;
    let r: Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert_eq!(r["runs"].as_array().unwrap().len(), 3, "{r}");
}

/// `--subscription S -g RG -n NAME` of a member, from the fleet's plan.
async fn names(w: &World, name: &str) -> Vec<String> {
    let plan = run(w, &["fleet", "plan", "-o", "json"]).await;
    let p: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let c = p["selection"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone();
    ["--subscription", c["subscription"].as_str().unwrap(), "-g"]
        .iter()
        .map(|s| s.to_string())
        .chain([
            c["resourceGroup"].as_str().unwrap().to_string(),
            "-n".into(),
            name.into(),
        ])
        .collect()
}

#[tokio::test]
async fn clusters_done_meanwhile_are_skipped_and_a_clusters_run_resumes_alone() {
    let w = fleet(SimOptions::default(), 2).await;
    // The canary fails: the fleet stops before aks-fleet-02.
    fault(&w, &["--cluster", "aks-fleet-01", "--fail-operation"]).await;
    let out = run(&w, &["fleet", "rotate", "--waves", "1,100%", "--yes"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    fault(&w, &["--clear"]).await;
    // The canary's own run, continued alone with `kmsctl resume` (reached as the fleet did).
    let mut args = vec!["resume".to_string(), "--yes".into()];
    args.extend(names(&w, "aks-fleet-01").await);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let one = run(&w, &a).await;
    assert!(one.status.success(), "{}", text(&one));
    // aks-fleet-02 rotated by hand meanwhile, after the fleet began.
    let mut args = vec![
        "rotate".to_string(),
        "--yes".into(),
        "--kube-credentials".into(),
        "azure".into(),
    ];
    args.extend(names(&w, "aks-fleet-02").await);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let two = run(&w, &a).await;
    assert!(two.status.success(), "{}", text(&two));
    let mid = keys(&w);
    let out = run(&w, &["fleet", "resume", "--yes", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let o = outcomes(&out);
    assert_eq!(
        o["aks-fleet-01"], "succeeded",
        "its run had succeeded: {o:?}"
    );
    assert_eq!(
        o["aks-fleet-02"], "done",
        "its ledger shows it rotated: {o:?}"
    );
    assert_eq!(keys(&w), mid, "nothing rotated again");
}

#[tokio::test]
async fn a_private_api_server_out_of_reach_is_reported_unreachable() {
    let mut opts = SimOptions::default();
    opts.fleet_clusters.private_api = 1;
    let w = fleet(opts, 1).await;
    let out = run(
        &w,
        &[
            "fleet",
            "rotate",
            "--waves",
            "100%",
            "--max-failures",
            "1",
            "--yes",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let o = outcomes(&out);
    assert_eq!(o["aks-fleet-01"], "succeeded", "{o:?}");
    assert_eq!(o["aks-fleet-02"], "unreachable", "{o:?}");
    let l = lines(&out);
    let u = l.iter().find(|l| l["outcome"] == "unreachable").unwrap();
    assert!(
        u["message"].as_str().unwrap().contains("not reachable"),
        "{u}"
    );
}

#[tokio::test]
async fn shards_split_the_fleet_between_processes() {
    let w = fleet(SimOptions::default(), 5).await;
    let before = keys(&w);
    let mut a = command(
        &w,
        &[
            "fleet", "rotate", "--shard", "0/2", "--waves", "100%", "--yes", "-o", "json",
        ],
    );
    let mut b = command(
        &w,
        &[
            "fleet", "rotate", "--shard", "1/2", "--waves", "100%", "--yes", "-o", "json",
        ],
    );
    let (a, b) = tokio::join!(
        tokio::task::spawn_blocking(move || a.output().unwrap()),
        tokio::task::spawn_blocking(move || b.output().unwrap())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    let (oa, ob) = (outcomes(&a), outcomes(&b));
    assert!(oa.keys().all(|k| !ob.contains_key(k)), "{oa:?} {ob:?}");
    assert_eq!(oa.len() + ob.len(), 5, "{oa:?} {ob:?}");
    assert_eq!(changed(&before, &keys(&w)).len(), 5);
    // Each shard has its own fleet journal; resume picks its shard's.
    let r = run(&w, &["fleet", "resume", "--shard", "1/2", "--yes"]).await;
    assert!(
        r.status.success() && text(&r).contains("nothing to resume"),
        "{}",
        text(&r)
    );
}

fn chromium(args: &[&str]) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("chromium runs (Debian's package; bash .ci/run installs it)");
    assert!(out.status.success(), "chromium: {}", text(&out));
    out
}

#[tokio::test]
async fn the_html_page_renders_in_headless_chromium() {
    let w = fleet(SimOptions::default(), 2).await;
    let metrics = w.dir.path().join("fleet.prom");
    let m = metrics.display().to_string();
    let out = run(
        &w,
        &[
            "fleet",
            "rotate",
            "--waves",
            "1,100%",
            "--yes",
            "-o",
            "html",
            "--textfile",
            &m,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let html = String::from_utf8(out.stdout).unwrap();
    assert!(
        !html.contains("<script") && !html.contains("<link") && !html.contains("src="),
        "self-contained"
    );
    let page = w.dir.path().join("fleet.html");
    std::fs::write(&page, &html).unwrap();
    let url = format!("file://{}", page.display());
    let dom = String::from_utf8(chromium(&["--dump-dom", &url]).stdout).unwrap();
    assert_eq!(dom.matches("<section class=\"wave\"").count(), 2, "{dom}");
    assert_eq!(
        dom.matches("<tr class=\"cluster\" data-outcome=\"succeeded\"")
            .count(),
        2,
        "{dom}"
    );
    assert!(dom.contains("aks-fleet-02") && dom.contains("Fleet rotate: succeeded"));
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("kmsctl_fleet_clusters{") && prom.contains("outcome=\"succeeded\"} 2"),
        "{prom}"
    );
    // The status page of the same run, and its metrics.
    let m = run(&w, &["fleet", "status", "-o", "prometheus"]).await;
    let metrics = String::from_utf8_lossy(&m.stdout);
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("kmsctl_fleet_cluster_outcome{")
                && l.contains("outcome=\"succeeded\""))
            .count(),
        2,
        "{metrics}"
    );
}

/// Rotates `name` once by hand, as an operator would between two fleet runs.
async fn rotate_by_hand(w: &World, name: &str) {
    let mut args = vec![
        "rotate".to_string(),
        "--yes".into(),
        "--kube-credentials".into(),
        "azure".into(),
    ];
    args.extend(names(w, name).await);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(w, &a).await;
    assert!(out.status.success(), "{}", text(&out));
}

fn versions(w: &World, name: &str) -> usize {
    w.inspect_member(name)["keys"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_array().map_or(0, Vec::len))
        .sum()
}

/// The key a run first finds is entered in the ledger as in service from then on: a rotation
/// by hand after the fleet began leaves two dated entries, but only one rotation, which is not
/// `--twice`.
#[tokio::test]
async fn one_rotation_by_hand_is_not_a_clusters_rotate_twice_done() {
    let w = fleet(SimOptions::default(), 2).await;
    fault(&w, &["--cluster", "aks-fleet-01", "--fail-operation"]).await;
    let out = run(
        &w,
        &["fleet", "rotate", "--twice", "--waves", "1,100%", "--yes"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    fault(&w, &["--clear"]).await;
    let before = versions(&w, "aks-fleet-02");
    rotate_by_hand(&w, "aks-fleet-02").await;
    let out = run(&w, &["fleet", "resume", "--yes", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let o = outcomes(&out);
    assert_eq!(
        o["aks-fleet-02"], "succeeded",
        "rotated twice by the fleet: {o:?}"
    );
    assert_eq!(
        versions(&w, "aks-fleet-02"),
        before + 3,
        "one by hand, two by the fleet"
    );
    assert!(all_current(&w, "aks-fleet-02"));
}

/// A ledger that shows the rotation done does not outweigh Azure: a key put back by hand (as
/// Terraform or `az aks update` would) is rotated again.
#[tokio::test]
async fn a_key_put_back_behind_the_fleets_back_is_not_done() {
    let w = fleet(SimOptions::default(), 2).await;
    fault(&w, &["--cluster", "aks-fleet-01", "--fail-operation"]).await;
    let out = run(&w, &["fleet", "rotate", "--waves", "1,100%", "--yes"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    fault(&w, &["--clear"]).await;
    let old = keys(&w)["aks-fleet-02"].clone();
    rotate_by_hand(&w, "aks-fleet-02").await;
    {
        let shared = w.member_shared("aks-fleet-02");
        let mut world = shared.world();
        world.cluster["properties"]["securityProfile"]["azureKeyVaultKms"]["keyId"] =
            old.clone().into();
        let label = world.label_for_cluster();
        world.plugin_changed(label);
    }
    let out = run(&w, &["fleet", "resume", "--yes", "-o", "json"]).await;
    let o = outcomes(&out);
    assert_ne!(
        o["aks-fleet-02"], "done",
        "Azure reports the old key: {o:?}"
    );
    assert_ne!(keys(&w)["aks-fleet-02"], old, "rotated again");
}
