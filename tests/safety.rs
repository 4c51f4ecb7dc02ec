//! The safety model, end to end: command sequences a careful operator types, each of which once
//! left Secrets unreadable or reported success while Secrets stayed under the old key.

mod common;

use common::{World, small, text, world};
use kmsctl::sim::SimOptions;
use serde_json::Value;
use std::time::Duration;

/// `status` lists `key` among the versions that must stay alive.
async fn assert_must_stay_alive(w: &World, key: &str, what: &str) {
    let out = w.run(&["status", "-o", "json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    let alive = s["ledger"]["mustStayAlive"].as_array().unwrap();
    assert!(
        alive.iter().any(|k| k == key),
        "{what} must stay alive: {}",
        s["ledger"]
    );
}

fn step_output<'a>(report: &'a Value, step: &str, nth: usize) -> &'a Value {
    &report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == step)
        .nth(nth)
        .unwrap_or_else(|| panic!("no {step} #{nth} in {report}"))["output"]
}

#[tokio::test]
async fn lifecycle_commands_refuse_a_namespace_scope() {
    let w = world(small(60)).await;
    let before = w.fingerprint();
    let kid = w.key_versions()[0]["kid"].as_str().unwrap().to_string();
    for args in [
        vec![
            "rotate",
            "--twice",
            "--retire-old",
            "--yes",
            "--namespace",
            "team-000",
        ],
        vec!["disable", "--yes", "--namespace", "team-000"],
        vec![
            "enable",
            "--key-id",
            kid.as_str(),
            "--yes",
            "--namespace",
            "team-000",
        ],
    ] {
        let out = w.run(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("kmsctl reencrypt --namespace"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(w.fingerprint(), before, "a refusal changes nothing");
}

#[tokio::test]
async fn a_switch_that_timed_out_blocks_every_new_change_until_resumed() {
    let w = world(SimOptions {
        kms_propagation_seconds: 6,
        ..small(80)
    })
    .await;
    let key = w.kms()["keyId"].as_str().unwrap().to_string();
    let out = w
        .run(&["disable", "--yes", "--switch-timeout-seconds", "1"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // Azure already says "off": a new disable must not conclude that nothing is left to do.
    for args in [vec!["disable", "--yes"], vec!["rotate", "--yes"]] {
        let out = w.run(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("kmsctl resume --run"), "{}", text(&out));
    }
    assert_must_stay_alive(&w, &key, "the key that still encrypts every Secret").await;
    let out = w
        .run(&["resume", "--yes", "--switch-timeout-seconds", "60"])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    w.assert_all_current();
    assert_must_stay_alive(&w, &key, "after disable, the last key").await;
}

#[tokio::test]
async fn a_rotation_after_a_timed_out_rotation_is_refused_and_resume_finishes_it() {
    let w = world(SimOptions {
        kms_propagation_seconds: 6,
        ..small(80)
    })
    .await;
    let out = w
        .run(&["rotate", "--yes", "--switch-timeout-seconds", "1"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = w.run(&["rotate", "--yes"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(
        w.key_versions().len(),
        2,
        "the refused rotation created no version"
    );
    let out = w
        .run(&["resume", "--yes", "--switch-timeout-seconds", "60"])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    w.assert_all_current();
    w.assert_readable();
}

#[tokio::test]
async fn another_writer_on_the_canary_voids_what_was_seen() {
    // No readable /metrics: the canary alone proves the switch.
    let w = world(SimOptions {
        kms_propagation_seconds: 4,
        metrics_readable: false,
        ..small(80)
    })
    .await;
    let mut c = w.command(&["rotate", "--yes", "-o", "json"]);
    let run = tokio::task::spawn_blocking(move || c.output().unwrap());
    // While kmsctl waits for the switch, someone annotates the canary (as kubectl annotate would).
    let mut touched = false;
    let first = w.key_versions()[0]["kid"].clone();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if w.kms()["keyId"] == first {
            continue;
        }
        let mut store = w.twin.shared.secrets_write();
        let Some(c) = store.get("kube-system", "kmsctl-canary") else {
            continue;
        };
        if c.obj["metadata"]["resourceVersion"].as_str().is_none() {
            continue;
        }
        let key = c.key.clone();
        let mut obj = c.obj.clone();
        obj["metadata"]["annotations"]["touched"] = "by-someone-else".into();
        store
            .replace("kube-system", "kmsctl-canary", obj, key, None)
            .unwrap();
        touched = true;
        break;
    }
    assert!(touched, "the canary was never planted");
    let out = run.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let proof = step_output(&report, "prove-key-switch", 0);
    assert_eq!(proof["evidence"], "time", "{proof}");
    assert!(proof["flips"].as_u64().unwrap() >= 1, "{proof}");
    w.assert_all_current();
}

#[tokio::test]
async fn a_concurrent_resume_of_a_live_run_is_refused() {
    let w = world(SimOptions {
        lro_seconds: 3,
        ..small(300)
    })
    .await;
    let mut c = w.command(&["rotate", "--twice", "--yes"]);
    let run = tokio::task::spawn_blocking(move || c.output().unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = w.run(&["runs"]).await;
    assert!(
        String::from_utf8_lossy(&runs.stdout).contains("running"),
        "{}",
        text(&runs)
    );
    let out = w.run(&["resume", "--yes"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let first = run.await.unwrap();
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(w.key_versions().len(), 3);
    w.assert_all_current();
}

#[tokio::test]
async fn resume_never_continues_a_run_on_another_cluster() {
    let a = world(small(100)).await;
    let b = world(small(100)).await;
    a.twin.add_faults(
        kmsctl::sim::faults::load(
            "- { method: PUT, path: \"/api/v1/namespaces/*/secrets/*\", status: 403, probability: 0.3 }",
        )
        .unwrap(),
    );
    let out = a.run(&["rotate", "--yes"]).await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    a.twin.shared.world().faults.clear();
    let before = b.fingerprint();
    let run_id = {
        let runs = a.run(&["runs", "-o", "json"]).await;
        let v: Value = serde_json::from_slice(&runs.stdout).unwrap();
        v["runs"][0]["runId"].as_str().unwrap().to_string()
    };
    // B's environment, A's journals.
    for extra in [vec![], vec!["--run", run_id.as_str()]] {
        let mut args = vec!["resume", "--yes"];
        args.extend(extra);
        let mut c = b.command(&args);
        c.env("XDG_STATE_HOME", a.state_dir());
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    assert_eq!(b.fingerprint(), before, "cluster B is untouched");
    a.resume_to_the_end().await;
}

/// Two replicas that learn a new key at their own status calls, with and without /metrics.
async fn two_replicas(metrics_readable: bool) -> (World, Value) {
    let w = world(SimOptions {
        apiserver_replicas: 2,
        kms_status_period_seconds: 3,
        metrics_readable,
        lro_seconds: 1,
        ..small(200)
    })
    .await;
    let out = w.run(&["rotate", "--twice", "--yes", "-o", "json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    w.assert_all_current();
    w.assert_readable();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for n in 0..2 {
        let r = step_output(&report, "reencrypt", n);
        assert_eq!(r["verification"]["rewritten"], 0, "{r}");
    }
    (w, report)
}

#[tokio::test]
async fn every_replica_is_proven_switched_by_its_own_writes() {
    let (_, report) = two_replicas(true).await;
    for n in 0..2 {
        let p = step_output(&report, "prove-key-switch", n);
        assert_eq!(
            (p["evidence"].as_str(), p["replicas"].as_u64()),
            (Some("attributed"), Some(2)),
            "{p}"
        );
    }
}

#[tokio::test]
async fn without_metrics_every_replica_is_proven_switched_by_time() {
    let (_, report) = two_replicas(false).await;
    for n in 0..2 {
        let p = step_output(&report, "prove-key-switch", n);
        assert_eq!(p["evidence"], "time", "{p}");
        assert!(
            p["waitedSeconds"].as_f64().unwrap() >= 92.0,
            "quiet for 1.5 upstream periods plus margin, whatever the twin's: {p}"
        );
    }
}

#[tokio::test]
async fn sigint_stops_cleanly_and_resume_finishes() {
    let w = world(SimOptions {
        lro_seconds: 3,
        ..small(200)
    })
    .await;
    let child = w
        .command(&["rotate", "--yes"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // SAFETY: sending SIGINT to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(text(&out).contains("kmsctl resume --run"), "{}", text(&out));
    let runs = w.run(&["runs"]).await;
    assert!(
        String::from_utf8_lossy(&runs.stdout).contains("interrupted"),
        "{}",
        text(&runs)
    );
    // The lease was released: resume needs no wait.
    w.resume_to_the_end().await;
}

#[tokio::test]
async fn a_closed_stdout_and_no_terminal_still_end_well_with_progress_lines() {
    let w = world(SimOptions {
        write_qps: Some(150.0),
        ..small(1500)
    })
    .await;
    let mut child = w
        .command(&["rotate", "--yes"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines = err
        .lines()
        // The re-encryption's lines and its verification pass's: both are passes over every Secret.
        .filter(|l| {
            (l.contains("re-encrypting:") || l.contains("verifying:")) && l.contains("Secrets")
        })
        .count();
    assert!(lines >= 2, "progress lines without a terminal: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "no colour codes without a terminal"
    );
    w.assert_all_current();
}

#[tokio::test]
async fn losing_the_lease_stops_a_reencryption_at_the_next_page() {
    let w = world(SimOptions {
        write_qps: Some(100.0),
        ..small(3000)
    })
    .await;
    let mut c = w.command(&["rotate", "--yes"]);
    let run = tokio::task::spawn_blocking(move || c.output().unwrap());
    let journal = w.state_dir().join("kmsctl/runs");
    let mut under_way = false;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text: String = std::fs::read_dir(&journal)
            .map(|d| {
                d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        if text.contains("\"type\":\"reencrypt\"") {
            under_way = true;
            break;
        }
    }
    assert!(under_way, "the re-encryption never started");
    // Someone takes the cluster away from this run in the middle of its re-encryption.
    w.twin
        .shared
        .world()
        .objects
        .delete("leases", "kube-system", "kmsctl-run")
        .expect("the run holds a lease");
    let out = run.await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("lost the cluster's lease"),
        "{}",
        text(&out)
    );
    let (current, total) = w.storage();
    assert!(
        current < total,
        "stopped before the end: {current} of {total}"
    );
    w.resume_to_the_end().await;
}

#[tokio::test]
async fn refusals_before_any_change_exit_2_and_say_what_is_wrong() {
    let w = world(small(30)).await;
    let before = w.fingerprint();
    let out = w
        .run(&["rotate", "--yes", "--context", "no-such-context"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no-such-context"), "{}", text(&out));
    let mut c = w.command(&["rotate", "--yes", "--auth", "env"]);
    c.env_remove("AZURE_CLIENT_SECRET");
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("missing: AZURE_CLIENT_SECRET"),
        "{}",
        text(&out)
    );
    let mut c = w.command(&["rotate", "--yes"]);
    c.env("AZURE_CLIENT_SECRET", "not-the-secret");
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("AADSTS7000215"),
        "the service's own message: {}",
        text(&out)
    );
    assert_eq!(w.fingerprint(), before, "nothing changed");
}

#[tokio::test]
async fn a_token_endpoint_that_fails_twice_is_retried() {
    let w = world(small(40)).await;
    w.twin.add_faults(
        kmsctl::sim::faults::load(
            "- { host: login.microsoftonline.com, path: \"/**\", status: 503, count: 2 }",
        )
        .unwrap(),
    );
    let out = w.run(&["rotate", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    w.assert_all_current();
}
