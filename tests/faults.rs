//! The fault matrix (TESTING.md): every lifecycle command against a twin whose services fail in
//! one way each, and killed with SIGKILL at seeded moments. Transient faults are retried and the
//! run completes; an operation that ends Failed stops with the service's message and `resume`
//! finishes; a kill is resumed. After every case: every Secret readable and under the key the
//! run ended with, the ledger holds every version in use, no version that still encrypts
//! anything is disabled.

mod common;

use common::{World, small, text, world};
use futures::StreamExt;
use kmsctl::sim::SimOptions;
use kmsctl::sim::faults::FaultRule;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
enum Cmd {
    Enable,
    Disable,
    RotateTwice,
    VaultMode,
    MigrateV2,
}

const COMMANDS: [Cmd; 5] = [
    Cmd::Enable,
    Cmd::Disable,
    Cmd::RotateTwice,
    Cmd::VaultMode,
    Cmd::MigrateV2,
];

impl Cmd {
    fn opts(self) -> SimOptions {
        let base = SimOptions {
            lro_seconds: 1,
            latency_ms: 1,
            ..small(40)
        };
        match self {
            Cmd::Enable => SimOptions { kms: false, ..base },
            Cmd::VaultMode => SimOptions {
                vnet_integration: true,
                konnectivity: false,
                ..base
            },
            Cmd::MigrateV2 => SimOptions {
                kubernetes_version: "1.25.11".into(),
                ..base
            },
            _ => base,
        }
    }

    fn args(self, w: &World) -> Vec<String> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match self {
            Cmd::Enable => {
                let kid = w.key_versions()[0]["kid"].as_str().unwrap().to_string();
                let mut a = s(&["enable", "--yes", "--key-id"]);
                a.push(kid);
                a
            }
            Cmd::Disable => s(&["disable", "--yes"]),
            Cmd::RotateTwice => s(&["rotate", "--twice", "--yes"]),
            Cmd::VaultMode => s(&["vault-mode", "--to", "private", "--yes"]),
            Cmd::MigrateV2 => s(&["migrate-v2", "--yes"]),
        }
    }

    /// What the cluster must say once the run has finished.
    fn finished(self, w: &World) {
        let kms = w.kms();
        let p = w.inspect()["cluster"]["properties"].clone();
        assert_eq!(p["provisioningState"], "Succeeded", "{self:?}");
        match self {
            Cmd::Enable => assert_eq!(kms["enabled"], true),
            Cmd::Disable => assert_eq!(kms["enabled"], false),
            Cmd::RotateTwice => {
                let v = w.key_versions();
                assert_eq!(v.len(), 3, "{self:?}: exactly two rotations");
                assert_eq!(kms["keyId"], v[2]["kid"]);
            }
            Cmd::VaultMode => assert_eq!(kms["keyVaultNetworkAccess"], "Private"),
            Cmd::MigrateV2 => {
                assert_eq!(p["currentKubernetesVersion"], "1.27.16");
                assert_eq!(kms["enabled"], true);
            }
        }
    }
}

/// Every Secret readable (no label of a disabled or missing version) and every version that
/// still encrypts a Secret, or is in use, is in the key ledger.
fn sound(w: &World, case: &str) {
    let d = w.inspect();
    let live: Vec<String> = d["keys"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|vs| vs.as_array().cloned().unwrap_or_default())
        .filter(|v| v["enabled"] == true)
        .filter_map(|v| v["kid"].as_str().map(str::to_string))
        .collect();
    let ledger: Value = {
        let wld = w.twin.shared.world();
        let cm = wld
            .objects
            .list("configmaps", Some("kube-system"), None)
            .into_iter()
            .find(|c| c["metadata"]["name"] == "kmsctl-key-ledger")
            .cloned();
        cm.and_then(|c| serde_json::from_str(c["data"]["ledger.json"].as_str()?).ok())
            .unwrap_or(json!({ "entries": [] }))
    };
    // An entry, or the target of the switch recorded before the cluster changed (a run killed
    // between its update and its verification).
    let in_ledger = |kid: &str| {
        let same = |v: &Value| v.as_str().is_some_and(|k| k.eq_ignore_ascii_case(kid));
        ledger["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| same(&e["keyId"]))
            || same(&ledger["switch"]["to"])
    };
    for (label, n) in d["storage"]["byKey"].as_object().unwrap() {
        if n.as_u64() == Some(0) || label == "identity" {
            continue;
        }
        let kid = label.splitn(3, ':').nth(2).unwrap();
        assert!(
            live.iter().any(|l| l == kid),
            "{case}: {n} Secrets under {kid}, which is disabled or gone"
        );
        assert!(
            in_ledger(kid),
            "{case}: {kid} encrypts Secrets but is not in the ledger {ledger}"
        );
    }
    let kms = w.kms();
    if kms["enabled"] == true {
        let kid = kms["keyId"].as_str().unwrap();
        assert!(
            live.iter().any(|l| l == kid),
            "{case}: the key in use is disabled"
        );
        assert!(
            in_ledger(kid),
            "{case}: the key in use {kid} is not in the ledger {ledger}; journal: {}",
            w.journal_lines()
        );
    }
}

fn rule(mut v: Value) -> FaultRule {
    if v.get("path").is_none() {
        v["path"] = json!("/**");
    }
    serde_json::from_value(v).expect("a fault rule")
}

/// (case, fault rules, whether the first run completes by itself)
fn faults() -> Vec<(&'static str, Vec<Value>, bool)> {
    let arm = "management.azure.com";
    let kv = "vault.azure.net";
    vec![
        (
            "5xx from Resource Manager",
            vec![json!({ "host": arm, "status": 503, "count": 3 })],
            true,
        ),
        (
            "5xx from Key Vault",
            vec![json!({ "host": kv, "status": 500, "count": 3 })],
            true,
        ),
        (
            "5xx from the Kubernetes API",
            vec![
                json!({ "path": "/api/v1/namespaces/*/secrets/*", "method": "PUT", "status": 500, "count": 3 }),
            ],
            true,
        ),
        (
            "429 with Retry-After from Resource Manager",
            vec![json!({ "host": arm, "status": 429, "count": 3 })],
            true,
        ),
        (
            "429 with Retry-After from Key Vault",
            vec![json!({ "host": kv, "status": 429, "count": 3 })],
            true,
        ),
        (
            "429 with Retry-After from the Kubernetes API",
            vec![
                json!({ "path": "/api/v1/namespaces/*/secrets/*", "method": "PUT", "status": 429, "count": 5 }),
            ],
            true,
        ),
        (
            "dropped connections to Resource Manager",
            vec![json!({ "host": arm, "drop": true, "count": 2 })],
            true,
        ),
        (
            "dropped connections to Key Vault",
            vec![json!({ "host": kv, "drop": true, "count": 2 })],
            true,
        ),
        (
            "dropped Secret writes",
            vec![
                json!({ "path": "/api/v1/namespaces/*/secrets/*", "method": "PUT", "drop": true, "probability": 0.05 }),
            ],
            true,
        ),
        (
            "the token endpoint failing",
            vec![json!({ "host": "login.microsoftonline.com", "status": 500, "count": 2 })],
            true,
        ),
        (
            "a cluster operation that ends Failed",
            vec![
                json!({ "host": arm, "method": "PUT", "path": "/subscriptions/**/managedClusters/*", "failOperation": true, "count": 1 }),
            ],
            false,
        ),
    ]
}

async fn one_fault_case(cmd: Cmd, case: &'static str, rules: Vec<Value>, completes: bool) {
    let w = world(cmd.opts()).await;
    let args = cmd.args(&w);
    w.twin
        .shared
        .world()
        .faults
        .extend(rules.into_iter().map(rule));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = w.run(&refs).await;
    let label = format!("{cmd:?} / {case}");
    if completes {
        assert!(out.status.success(), "{label}: {}", text(&out));
    } else {
        assert!(!out.status.success(), "{label}: should stop");
        assert!(
            text(&out).contains("KMSPluginUnhealthy"),
            "{label}: the service's message: {}",
            text(&out)
        );
        sound(&w, &label);
        let out = w.run(&["resume", "--yes"]).await;
        assert!(out.status.success(), "{label}: resume: {}", text(&out));
    }
    cmd.finished(&w);
    w.assert_all_current();
    sound(&w, &label);
}

#[tokio::test]
async fn every_command_completes_or_resumes_under_each_kind_of_fault() {
    let mut cases = Vec::new();
    for cmd in COMMANDS {
        for (case, rules, completes) in faults() {
            cases.push((cmd, case, rules, completes));
        }
    }
    four_at_a_time(
        cases
            .into_iter()
            .map(|(cmd, case, rules, completes)| one_fault_case(cmd, case, rules, completes)),
    )
    .await;
}

/// Most of a run is waiting for operations and barriers: four twins at a time keep the two
/// cores busy.
async fn four_at_a_time(cases: impl IntoIterator<Item = impl std::future::Future<Output = ()>>) {
    futures::stream::iter(cases)
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
}

/// A run killed with SIGKILL at a seeded moment after preflight, then `resume --yes` once.
async fn killed_and_resumed(cmd: Cmd, seed: u64) {
    let w = world(cmd.opts()).await;
    let args = cmd.args(&w);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // The kill lands between 0 and 4 s after the run's first journaled step (preflight), spread
    // by the seed over the whole run: operations, barriers and re-encryption.
    let delay = Duration::from_millis((seed * 7919) % 4000);
    let started = std::sync::Mutex::new(None::<Instant>);
    let killed = w
        .kill_when(&refs, move |journal, _| {
            if !journal.contains("\"type\":\"step-finished\"") {
                return false;
            }
            let mut s = started.lock().unwrap();
            let at = *s.get_or_insert_with(Instant::now);
            at.elapsed() >= delay
        })
        .await;
    let label = format!("{cmd:?} / seed {seed} ({delay:?})");
    // A kill that lands after the run journaled its success (and before it exited) leaves
    // nothing to resume.
    let ended = w.journal_lines().contains("\"status\":\"succeeded\"");
    if killed && !ended {
        sound(&w, &format!("{label}, killed"));
        let out = w.run(&["resume", "--yes"]).await;
        assert!(out.status.success(), "{label}: resume: {}", text(&out));
    }
    cmd.finished(&w);
    w.assert_all_current();
    sound(&w, &label);
}

async fn sigkill_seeds(cmd: Cmd) {
    four_at_a_time((1..=20u64).map(|seed| killed_and_resumed(cmd, seed))).await;
}

#[tokio::test]
async fn enable_killed_at_20_seeded_moments_resumes() {
    sigkill_seeds(Cmd::Enable).await;
}

#[tokio::test]
async fn disable_killed_at_20_seeded_moments_resumes() {
    sigkill_seeds(Cmd::Disable).await;
}

#[tokio::test]
async fn rotate_twice_killed_at_20_seeded_moments_resumes() {
    sigkill_seeds(Cmd::RotateTwice).await;
}

#[tokio::test]
async fn vault_mode_killed_at_20_seeded_moments_resumes() {
    sigkill_seeds(Cmd::VaultMode).await;
}

#[tokio::test]
async fn migrate_v2_killed_at_20_seeded_moments_resumes() {
    sigkill_seeds(Cmd::MigrateV2).await;
}

/// A run killed while Azure is still being asked about the cluster (nothing read, nothing
/// changed) is journaled already, so `resume` finds it and runs it from its first step.
async fn killed_before_it_reads_anything(cmd: Cmd) {
    let w = world(cmd.opts()).await;
    // Resource Manager answers its first request slowly: the run is stuck before its lease.
    w.twin.shared.world().faults.push(rule(
        json!({ "host": "management.azure.com", "latencyMs": 4000, "count": 1 }),
    ));
    let args = cmd.args(&w);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let killed = w
        .kill_when(&refs, |journal, _| {
            journal.contains("\"type\":\"run\"") && !journal.contains("\"type\":\"identity\"")
        })
        .await;
    assert!(killed, "{cmd:?}: killed before it read its cluster");
    let label = format!("{cmd:?}, killed before it read anything");
    let runs = w.run(&["runs", "-o", "json"]).await;
    assert!(
        text(&runs).contains("interrupted"),
        "{label}: listed as interrupted: {}",
        text(&runs)
    );
    let out = w.run(&["resume", "--yes"]).await;
    assert!(out.status.success(), "{label}: resume: {}", text(&out));
    assert!(
        text(&out).contains("stopped before it began"),
        "{label}: resume says it starts over: {}",
        text(&out)
    );
    cmd.finished(&w);
    w.assert_all_current();
    sound(&w, &label);
    // The cluster it read on resume is journaled, so a later resume checks against it.
    assert!(
        w.journal_lines().contains("\"type\":\"identity\""),
        "{label}"
    );
}

#[tokio::test]
async fn every_command_killed_before_it_reads_anything_resumes_from_its_start() {
    four_at_a_time(COMMANDS.map(killed_before_it_reads_anything)).await;
}

/// A run that ends before any change (not confirmed, refused, a dry run) leaves no journal:
/// there is nothing for `resume` to continue.
#[tokio::test]
async fn a_run_that_changes_nothing_leaves_no_journal() {
    let w = world(Cmd::RotateTwice.opts()).await;
    // No --yes and stdin is not a terminal: refused before any change.
    let out = w.run(&["rotate", "--twice"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = w.run(&["rotate", "--twice", "--dry-run"]).await;
    assert!(out.status.success(), "{}", text(&out));
    // A preflight refusal: listing Secrets is forbidden.
    w.twin.shared.world().faults.push(rule(
        json!({ "path": "/api/v1/secrets", "method": "GET", "status": 403 }),
    ));
    let out = w.run(&["rotate", "--twice", "--yes"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    w.twin.shared.world().faults.clear();
    assert_eq!(w.journal_lines(), "", "no journal left behind");
    let out = w.run(&["resume", "--yes"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no unfinished run"), "{}", text(&out));
}
