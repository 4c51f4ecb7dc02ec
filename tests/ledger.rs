//! The key ledger and the run's honesty, end to end: someone else's change between a read and a
//! PUT is re-checked, a refusal after a change says what changed (exit 1), and a run whose key
//! switch is unproven cannot be abandoned into a dead end.

mod common;

use common::{World, small, text, world};
use kmsctl::sim::SimOptions;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A fault rule that holds matching requests for `latency_ms`, once, and the counter that shows
/// when one has arrived (the request is then in flight).
fn hold_once(w: &World, method: &str, host: &str, path: &str, latency_ms: u64) -> Arc<AtomicU64> {
    let rules = kmsctl::sim::faults::load(
        &json!([{ "method": method, "host": host, "path": path, "latencyMs": latency_ms, "count": 1 }])
            .to_string(),
    )
    .unwrap();
    let hits = rules[0].hits.clone();
    w.twin.add_faults(rules);
    hits
}

/// Someone else turns KMS off, as an `az aks update --disable-azure-keyvault-kms` would (the
/// resource and its eTag change), once a held request has arrived.
async fn someone_disables_kms_when(w: &World, hits: &AtomicU64) {
    for _ in 0..600 {
        if hits.load(Ordering::SeqCst) > 0 {
            let mut world = w.twin.shared.world();
            world.cluster["properties"]["securityProfile"]["azureKeyVaultKms"]["enabled"] =
                json!(false);
            world.cluster["eTag"] = json!(kmsctl::sim::world::new_etag());
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the held request never came");
}

async fn status(w: &World) -> Value {
    let out = w.run(&["status", "-o", "json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn newest_run_id(w: &World) -> String {
    let out = w.run(&["runs", "-o", "json"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["runs"][0]["runId"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn after_a_412_someone_elses_key_change_is_refused_not_overwritten() {
    let w = world(small(40)).await;
    let hits = hold_once(
        &w,
        "PUT",
        "management.azure.com",
        "/subscriptions/**/managedClusters/*",
        1500,
    );
    let mut c = w.command(&["rotate", "--yes"]);
    let run = tokio::task::spawn_blocking(move || c.output().unwrap());
    // The PUT was planned on a read that showed the run's key; while it is in flight someone
    // turns KMS off, so the PUT meets a 412 and the re-read shows their change.
    someone_disables_kms_when(&w, &hits).await;
    let out = run.await.unwrap();
    let t = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a new key version was made: {t}"
    );
    assert!(t.contains("changed since this run started"), "{t}");
    assert!(t.contains("now off"), "{t}");
    assert_eq!(
        w.kms()["enabled"],
        false,
        "their change stands: kmsctl did not PUT its key over it"
    );
    let s = status(&w).await;
    assert!(
        s["ledger"]["unprovenSwitch"].is_null(),
        "a switch that never happened must not block later runs: {}",
        s["ledger"]
    );
}

#[tokio::test]
async fn a_refusal_after_the_run_changed_something_exits_1_and_says_what() {
    let w = world(small(40)).await;
    let hits = hold_once(&w, "POST", "vault.azure.net", "/keys/*/rotate", 1500);
    let mut c = w.command(&["rotate", "--yes"]);
    let run = tokio::task::spawn_blocking(move || c.output().unwrap());
    // KMS turned off by someone else while rotate-key makes the new version: update-kms refuses.
    someone_disables_kms_when(&w, &hits).await;
    let out = run.await.unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "resumable, not exit 2: {t}");
    let newest = w.key_versions().last().unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        t.contains(&format!("already changed: new key version {newest}")),
        "{t}"
    );
    assert!(t.contains("kmsctl resume"), "{t}");
    assert!(!t.contains("nothing was changed"), "{t}");
    let runs = w.run(&["runs", "-o", "json"]).await;
    let v: Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert!(
        v["runs"][0]["message"]
            .as_str()
            .unwrap()
            .contains("already changed"),
        "the journal's last word says so too: {v}"
    );
}

#[tokio::test]
async fn a_run_with_an_unproven_switch_cannot_be_abandoned_and_resume_finishes_it() {
    let w = world(SimOptions {
        kms_propagation_seconds: 6,
        ..small(80)
    })
    .await;
    let out = w
        .run(&["rotate", "--yes", "--switch-timeout-seconds", "1"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let id = newest_run_id(&w).await;
    let key = w.kms()["keyId"].as_str().unwrap().to_string();
    let out = w.run(&["runs", "--abandon", &id]).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains(&format!("kmsctl resume --run {id}")), "{t}");
    assert!(t.contains(&key), "it names the switch: {t}");
    let out = w.run(&["runs", "-o", "json"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["runs"][0]["state"], "failed", "not abandoned: {v}");
    // The way forward: resume, without a flag, waits for the switch instead of timing out
    // again after the run's 1 s.
    let out = w.run(&["resume", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    w.assert_all_current();
    assert!(status(&w).await["ledger"]["unprovenSwitch"].is_null());
}

#[tokio::test]
async fn a_run_whose_switch_was_proven_can_be_abandoned_and_the_next_run_goes_on() {
    let w = world(small(80)).await;
    w.twin.add_faults(
        kmsctl::sim::faults::load(
            "- { method: PUT, path: \"/api/v1/namespaces/*/secrets/*\", status: 403, probability: 0.3 }",
        )
        .unwrap(),
    );
    let out = w.run(&["rotate", "--yes"]).await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    w.twin.shared.world().faults.clear();
    let id = newest_run_id(&w).await;
    let out = w.run(&["runs", "--abandon", &id]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = w.run(&["rotate", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    w.assert_all_current();
}
