//! Proofs that check their own inputs: no replica count, /metrics sample, status period, balancer
//! or restart may make kmsctl call a key switch proven, or a re-encryption done, when it is not.
//! Each test's scenario made a false proof before the proof was built from attributed writes.

mod common;

use common::*;
use kmsctl::sim::SimOptions;
use kmsctl::sim::replicas::Balancer;
use serde_json::Value;
use std::time::Duration;

fn steps<'a>(report: &'a Value, step: &str) -> Vec<&'a Value> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == step)
        .map(|s| &s["output"])
        .collect()
}

async fn json_run(w: &World, args: &[&str]) -> Value {
    let out = w.run(args).await;
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Starts `rotate --yes -o json`, waits until the cluster reports a new key (the switch is under
/// way), then does `meanwhile` to the twin; returns the run's output.
async fn rotate_and_meanwhile(w: &World, meanwhile: impl FnOnce(&World)) -> std::process::Output {
    let first = w.key_versions()[0]["kid"].clone();
    let mut c = w.command(&["rotate", "--yes", "-o", "json"]);
    let run = tokio::task::spawn_blocking(move || c.output().unwrap());
    let mut changed = false;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if w.kms()["keyId"] != first {
            changed = true;
            break;
        }
    }
    assert!(changed, "the cluster never changed its key");
    meanwhile(w);
    run.await.unwrap()
}

/// Real kubectl against the twin (off the runtime, which keeps serving meanwhile).
async fn kubectl(w: &World, args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new("kubectl");
    c.arg("--kubeconfig")
        .arg(w.dir.path().join("kubeconfig"))
        .args(args);
    tokio::task::spawn_blocking(move || c.output().expect("kubectl runs"))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_missing_identity_lease_is_found_on_metrics_and_retire_waits_for_every_replica() {
    let w = world(SimOptions {
        apiserver_replicas: 3,
        kms_status_period_seconds: 4,
        lro_seconds: 1,
        ..small(150)
    })
    .await;
    // Two of the three replicas' Leases are gone when kmsctl counts (they come back ~10 s later).
    let leases = kubectl(
        &w,
        &[
            "-n",
            "kube-system",
            "get",
            "lease",
            "-l",
            "apiserver.kubernetes.io/identity=kube-apiserver",
            "-o",
            "name",
        ],
    )
    .await;
    let names: Vec<String> = String::from_utf8_lossy(&leases.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for n in &names[1..] {
        let out = kubectl(&w, &["-n", "kube-system", "delete", n]).await;
        assert!(out.status.success(), "{}", text(&out));
    }
    let report = json_run(
        &w,
        &["rotate", "--twice", "--retire-old", "--yes", "-o", "json"],
    )
    .await;
    for p in steps(&report, "prove-key-switch") {
        assert_eq!(p["evidence"], "attributed", "{p}");
        assert_eq!(
            p["replicas"], 3,
            "every replica, though two Leases were missing: {p}"
        );
    }
    w.assert_all_current();
    w.assert_readable();
}

#[tokio::test]
async fn a_failed_metrics_baseline_is_no_evidence() {
    let w = world(SimOptions {
        apiserver_replicas: 2,
        kms_status_period_seconds: 4,
        lro_seconds: 1,
        ..small(150)
    })
    .await;
    let rules = serde_json::from_value(serde_json::json!([
        { "method": "GET", "path": "/metrics", "status": 503, "count": 8 }
    ]))
    .unwrap();
    w.twin.add_faults(rules);
    let report = json_run(&w, &["rotate", "--yes", "-o", "json"]).await;
    let p = steps(&report, "prove-key-switch")[0];
    assert_eq!(p["evidence"], "attributed", "{p}");
    let r = steps(&report, "reencrypt")[0];
    assert_eq!(r["verification"]["rewritten"], 0, "{r}");
    w.assert_all_current();
    w.assert_readable();
}

#[tokio::test]
async fn a_status_period_shorter_than_the_replicas_shortens_no_proof() {
    let w = world(SimOptions {
        apiserver_replicas: 4,
        kms_status_period_seconds: 12,
        lro_seconds: 1,
        ..small(40)
    })
    .await;
    let report = json_run(
        &w,
        &[
            "rotate",
            "--yes",
            "-o",
            "json",
            "--kms-status-period-seconds",
            "1",
            "--concurrency",
            "1",
        ],
    )
    .await;
    let p = steps(&report, "prove-key-switch")[0];
    assert_eq!(
        (p["evidence"].as_str(), p["replicas"].as_u64()),
        (Some("attributed"), Some(4)),
        "{p}"
    );
    let r = steps(&report, "reencrypt")[0];
    assert_eq!(r["verification"]["rewritten"], 0, "{r}");
    w.assert_all_current();
}

#[tokio::test]
async fn a_key_id_reported_to_status_before_it_is_written_with_is_no_switch() {
    // Identity-first, as AKS is with KMS off: Status reports the new key 8 s before writes use it.
    let w = world(SimOptions {
        kms: false,
        apiserver_replicas: 2,
        kms_status_period_seconds: 2,
        write_lag_seconds: 8,
        lro_seconds: 1,
        ..small(120)
    })
    .await;
    let key = w.key_versions()[0]["kid"].as_str().unwrap().to_string();
    let report = json_run(&w, &["enable", "--key-id", &key, "--yes", "-o", "json"]).await;
    let p = steps(&report, "prove-key-switch")[0];
    assert_eq!(p["evidence"], "attributed", "{p}");
    assert!(p["writesWithKey"]["kms"].is_string(), "a KMS v2 write: {p}");
    w.assert_all_current();
    let (under, total) = w.storage();
    assert_eq!(under, total, "nothing left plaintext");
}

async fn without_metrics(balancer: Balancer) {
    let w = world(SimOptions {
        apiserver_replicas: 3,
        balancer,
        kms_status_period_seconds: 3,
        metrics_readable: false,
        lro_seconds: 1,
        seed: 7,
        ..small(60)
    })
    .await;
    let report = json_run(&w, &["rotate", "--yes", "-o", "json"]).await;
    let p = steps(&report, "prove-key-switch")[0];
    assert_eq!(p["evidence"], "time", "{p}");
    // Never shorter than upstream's 60 s period (1.5 x 60 + 2 s), whatever the twin's 3 s.
    assert!(p["waitedSeconds"].as_f64().unwrap() >= 92.0, "{p}");
    // Enough fresh-connection PUTs to meet a fourth replica nobody announced: (1 - 0.5/4)^k < 1e-6.
    assert!(p["probes"].as_u64().unwrap() >= 104, "{p}");
    w.assert_all_current();
    w.assert_readable();
}

#[tokio::test]
async fn without_metrics_a_random_balancer_waits_the_upstream_period_over_enough_puts() {
    without_metrics(Balancer::Random).await;
}

#[tokio::test]
async fn without_metrics_a_sticky_balancer_waits_the_upstream_period_over_enough_puts() {
    without_metrics(Balancer::Sticky).await;
}

#[tokio::test]
async fn a_replica_that_restarts_mid_proof_is_proven_too() {
    let w = world(SimOptions {
        apiserver_replicas: 3,
        kms_status_period_seconds: 6,
        kms_propagation_seconds: 2,
        lro_seconds: 1,
        ..small(80)
    })
    .await;
    let out = rotate_and_meanwhile(&w, |w| {
        w.twin
            .shared
            .restart_replica(1, Duration::from_secs(5))
            .unwrap()
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = steps(&report, "prove-key-switch")[0];
    assert!(
        p["evidence"] == "attributed" || p["evidence"] == "time",
        "{p}"
    );
    w.assert_all_current();
    w.assert_readable();
}

#[tokio::test]
async fn standalone_reencrypt_refuses_while_a_switch_is_unproven() {
    let w = world(SimOptions {
        kms_propagation_seconds: 30,
        lro_seconds: 1,
        ..small(100)
    })
    .await;
    let out = w
        .run(&["rotate", "--yes", "--switch-timeout-seconds", "2"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let before = w.fingerprint();
    let out = w.run(&["reencrypt"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("kmsctl resume --run"), "{}", text(&out));
    assert_eq!(
        w.fingerprint()["storage"],
        before["storage"],
        "nothing rewritten"
    );
    let out = w
        .run(&["resume", "--yes", "--switch-timeout-seconds", "120"])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    w.assert_all_current();
}

/// Someone changes the key behind kmsctl's back (az aks update): the replicas switch at their
/// own status calls.
fn change_key_behind_kmsctls_back(w: &World) {
    let mut world = w.twin.shared.world();
    let v = kmsctl::sim::world::new_key_version("RSA", None);
    let host = world.ids.vault_host();
    let kid = format!("https://{host}/keys/kms-key/{}", v.version);
    world.keys.get_mut("kms-key").unwrap().versions.push(v);
    world.cluster["properties"]["securityProfile"]["azureKeyVaultKms"]["keyId"] = kid.into();
    let label = world.label_for_cluster();
    world.plugin_changed(label);
}

fn replicas_on_the_clusters_key(w: &World) -> bool {
    let world = w.twin.shared.world();
    let now = std::time::Instant::now();
    let want = world.label_for_cluster();
    (0..2).all(|r| world.replica_label(r, now) == want)
}

fn replicas_disagree(w: &World) -> bool {
    let world = w.twin.shared.world();
    let now = std::time::Instant::now();
    world.replica_label(0, now) != world.replica_label(1, now)
}

#[tokio::test]
async fn standalone_reencrypt_waits_while_replicas_disagree_and_says_what_it_saw() {
    let w = world(SimOptions {
        apiserver_replicas: 2,
        kms_status_period_seconds: 10,
        ..small(200)
    })
    .await;
    change_key_behind_kmsctls_back(&w);
    // Started while one replica writes with the new key and the other with the old one.
    let mut split = false;
    for _ in 0..200 {
        if replicas_disagree(&w) {
            split = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(split, "the twin's replicas never disagreed");
    let out = w.run(&["reencrypt", "-o", "json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = steps(&report, "reencrypt")[0];
    assert_eq!(r["writeKey"]["checked"], true, "{r}");
    assert_eq!(
        r["writeKey"]["before"]["key"], r["writeKey"]["after"]["key"],
        "{r}"
    );
    w.assert_all_current();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unchanged by the replica that served them"),
        "{err}"
    );
}

#[tokio::test]
async fn standalone_reencrypt_that_sees_the_key_change_under_it_says_so() {
    let w = world(SimOptions {
        apiserver_replicas: 2,
        kms_status_period_seconds: 6,
        latency_ms: 5,
        ..small(300)
    })
    .await;
    change_key_behind_kmsctls_back(&w);
    // Right after the change, both replicas still write with the old key: they agree with each
    // other, but not with what the cluster reports. Whatever kmsctl sees, it may not call the run
    // a success while Secrets are under the key being left.
    let out = w.run(&["reencrypt", "-o", "json"]).await;
    if out.status.success() {
        // Every replica was shown writing with the cluster's key, before and after.
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let r = steps(&report, "reencrypt")[0];
        assert_eq!(r["writeKey"]["checked"], true, "{r}");
        assert_eq!(
            r["writeKey"]["before"]["key"], r["writeKey"]["after"]["key"],
            "{r}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("unchanged by the replica that served them"),
            "{err}"
        );
        assert!(!err.contains("already current"), "{err}");
        w.assert_all_current();
    } else {
        // Refused before rewriting anything (the replicas do not write with the key the cluster
        // reports yet), or failed after it (the key changed under it).
        let why = text(&out);
        match out.status.code() {
            Some(2) => assert!(
                why.contains("has not reached the API servers yet")
                    || why.contains("could not tell which"),
                "{why}"
            ),
            Some(1) => assert!(
                why.contains("write key changed during the re-encryption"),
                "{why}"
            ),
            other => panic!("exit {other:?}: {why}"),
        }
        // Once every replica writes with the cluster's key, running it again finishes the job.
        while !replicas_on_the_clusters_key(&w) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let out = w.run(&["reencrypt"]).await;
        assert!(out.status.success(), "{}", text(&out));
        w.assert_all_current();
    }
}

#[tokio::test]
async fn a_canary_deleted_mid_proof_is_planted_again() {
    let w = world(SimOptions {
        kms_propagation_seconds: 6,
        lro_seconds: 1,
        ..small(100)
    })
    .await;
    let mut deleted = false;
    let out = rotate_and_meanwhile(&w, |w| {
        deleted = w
            .twin
            .shared
            .secrets_write()
            .delete("kube-system", "kmsctl-canary")
            .is_ok();
    })
    .await;
    assert!(deleted, "the canary was there to delete");
    assert!(out.status.success(), "{}", text(&out));
    w.assert_all_current();
    w.assert_readable();
    // The run recovered by itself: a resume finds nothing to do, and says so without failing.
    let out = w.run(&["resume", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing to resume"), "{}", text(&out));
}

#[tokio::test]
async fn zero_periods_and_timeouts_are_refused() {
    let w = world(small(20)).await;
    for args in [
        &["rotate", "--yes", "--kms-status-period-seconds", "0"][..],
        &["rotate", "--yes", "--switch-timeout-seconds", "0"],
        &["resume", "--yes", "--switch-timeout-seconds", "0"],
        &["rotate", "--yes", "--kms-status-period-seconds", "-5"],
    ] {
        let out = w.run(args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    assert_eq!(w.key_versions().len(), 1, "nothing rotated");
}

#[tokio::test]
async fn a_change_that_has_not_reached_the_api_servers_is_refused_before_anything_changes() {
    let w = world(SimOptions {
        apiserver_replicas: 2,
        kms_status_period_seconds: 5,
        kms_propagation_seconds: 60,
        lro_seconds: 1,
        ..small(60)
    })
    .await;
    let key = w.key_versions()[0]["kid"].as_str().unwrap().to_string();
    // KMS turned off behind kmsctl's back (az aks update): the replicas still write with the key.
    {
        let mut world = w.twin.shared.world();
        world.cluster["properties"]["securityProfile"]["azureKeyVaultKms"]["enabled"] =
            false.into();
        let label = world.label_for_cluster();
        world.plugin_changed(label);
    }
    let before = w.fingerprint();
    let out = w.run(&["enable", "--key-id", &key, "--yes"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("has not reached the API servers yet"),
        "{}",
        text(&out)
    );
    // Only the canary is new; every Secret stays under the key it was under.
    let keys = |f: &Value| -> Vec<String> {
        f["storage"]["byKey"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(keys(&w.fingerprint()), keys(&before), "nothing rewritten");
    assert_eq!(w.kms()["enabled"], false, "the cluster was not changed");
}

#[tokio::test]
async fn a_canary_changed_and_changed_back_by_someone_else_is_not_a_flip() {
    // No /metrics: only kmsctl's own rewrite of the canary may count, never someone else's.
    let w = world(SimOptions {
        metrics_readable: false,
        // Longer than the quiet time: a faked flip would be "proven" before the real one.
        kms_propagation_seconds: 110,
        lro_seconds: 4,
        ..small(40)
    })
    .await;
    let out = rotate_and_meanwhile(&w, |w| {
        let mut store = w.twin.shared.secrets_write();
        for touch in [Some("x"), None] {
            let c = store.get("kube-system", "kmsctl-canary").unwrap();
            let (key, mut obj) = (c.key.clone(), c.obj.clone());
            match touch {
                Some(v) => obj["metadata"]["annotations"]["someone"] = v.into(),
                None => {
                    obj["metadata"]["annotations"]
                        .as_object_mut()
                        .unwrap()
                        .remove("someone");
                }
            }
            store
                .replace("kube-system", "kmsctl-canary", obj, key, None)
                .unwrap();
        }
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = steps(&report, "prove-key-switch")[0];
    // The real flip comes only when the plugin reports the new key (110 s), then the quiet time.
    assert_eq!(p["evidence"], "time", "{p}");
    assert!(p["waitedSeconds"].as_f64().unwrap() >= 150.0, "{p}");
    w.assert_all_current();
    w.assert_readable();
}

/// Without /metrics, the replicas' agreement does not say on which key: with the cluster named,
/// a standalone reencrypt may rewrite only where kmsctl proved the switch to the reported key.
#[tokio::test]
async fn standalone_reencrypt_without_metrics_needs_a_proven_switch_to_the_reported_key() {
    let w = world(SimOptions {
        apiserver_replicas: 2,
        kms_status_period_seconds: 2,
        metrics_readable: false,
        lro_seconds: 1,
        ..small(60)
    })
    .await;
    change_key_behind_kmsctls_back(&w);
    let before = w.inspect()["storage"]["byKey"].clone();
    let out = w.run(&["reencrypt"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("could not tell which"),
        "{}",
        text(&out)
    );
    // Only the canary was planted (under whatever key its replica wrote with).
    for (label, n) in before.as_object().unwrap() {
        assert_eq!(
            &w.inspect()["storage"]["byKey"][label],
            n,
            "nothing rewritten"
        );
    }
    // A rotation proves its switch (time-based evidence); then the agreement stands for its key.
    let out = w.run(&["rotate", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = w.run(&["reencrypt"]).await;
    assert!(out.status.success(), "{}", text(&out));
    w.assert_all_current();
}

/// Resuming a refused standalone reencrypt compares with the cluster it named, as the run did.
#[tokio::test]
async fn a_resumed_standalone_reencrypt_still_compares_with_the_named_cluster() {
    let w = world(SimOptions {
        apiserver_replicas: 2,
        metrics_readable: false,
        ..small(40)
    })
    .await;
    change_key_behind_kmsctls_back(&w);
    let out = w.run(&["reencrypt"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let runs: Value = serde_json::from_slice(&w.run(&["runs", "-o", "json"]).await.stdout).unwrap();
    let id = runs["runs"][0]["runId"].as_str().unwrap().to_string();
    let before = w.inspect()["storage"]["byKey"].clone();
    let out = w.run(&["resume", "--run", &id, "--yes"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("could not tell which"),
        "{}",
        text(&out)
    );
    for (label, n) in before.as_object().unwrap() {
        assert_eq!(
            &w.inspect()["storage"]["byKey"][label],
            n,
            "nothing rewritten"
        );
    }
}
