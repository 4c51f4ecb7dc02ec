//! kmsctl's lifecycle commands, end to end against the twin, run as a user runs them.

mod common;

use common::{World, small, text, world};
use kmsctl::sim::faults::FaultRule;
use kmsctl::sim::{NetworkAccess, SimOptions};
use serde_json::{Value, json};
use std::time::Duration;

fn current_kid(w: &World) -> String {
    w.key_versions().last().unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn enable_then_disable() {
    let w = world(SimOptions {
        kms: false,
        ..small(120)
    })
    .await;
    assert_eq!(w.inspect()["storage"]["byKey"]["identity"], 120);
    let kid = current_kid(&w);
    let out = w.run(&["enable", "--key-id", &kid, "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        w.kms(),
        json!({ "enabled": true, "keyId": kid, "keyVaultNetworkAccess": "Public" })
    );
    w.assert_all_current();
    let out = w.run(&["disable", "--yes", "-o", "json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "succeeded");
    assert_eq!(w.kms()["enabled"], false);
    w.assert_all_current();
    assert_eq!(
        w.inspect()["storage"]["byKey"]["identity"],
        121,
        "every Secret and the canary are stored in plain again"
    );
}

#[tokio::test]
async fn rotate_once_then_twice_retiring_the_oldest() {
    let w = world(small(150)).await;
    let first = current_kid(&w);
    let out = w.run(&["rotate", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let second = current_kid(&w);
    assert_ne!(first, second);
    assert_eq!(w.kms()["keyId"], second);
    w.assert_all_current();
    let out = w.run(&["rotate", "--twice", "--retire-old", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let versions = w.key_versions();
    assert_eq!(versions.len(), 4);
    assert_eq!(w.kms()["keyId"], versions[3]["kid"]);
    assert_eq!(
        versions[1]["enabled"], false,
        "the version in use before the double rotation is disabled, not deleted"
    );
    assert_eq!(
        versions[2]["enabled"], true,
        "the previous version stays alive"
    );
    w.assert_all_current();
    let status = w.run(&["status", "-o", "json"]).await;
    let s: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["kms"]["enabled"], true);
    assert_eq!(s["kms"]["keyId"], versions[3]["kid"]);
    assert_eq!(s["kms"]["keyVaultNetworkAccess"], "Public");
    assert!(s["kms"]["keyVaultResourceId"].is_null());
    assert_eq!(s["kmsVersion"], "v2");
    assert_eq!(s["kubernetesVersion"], "1.33.5");
    assert_eq!(s["key"]["enabled"], true);
    assert!(s["key"].get("expiresOn").is_some());
    assert_eq!(s["provisioningState"], "Succeeded");
    let alive: Vec<&str> = s["ledger"]["mustStayAlive"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        alive,
        [
            versions[2]["kid"].as_str().unwrap(),
            versions[3]["kid"].as_str().unwrap()
        ]
    );
}

/// Starts `rotate --twice`, kills it with SIGKILL once `ready(journal)` holds, then resumes.
async fn kill_and_resume(opts: SimOptions, ready: impl Fn(&str) -> bool + Send + 'static) -> World {
    let w = world(opts).await;
    let killed = w
        .kill_when(&["rotate", "--twice", "--yes"], move |j, _| ready(j))
        .await;
    assert!(killed, "the run ended before the kill point");
    let out = w.run(&["resume", "--yes"]).await;
    assert!(out.status.success(), "resume: {}", text(&out));
    w
}

fn assert_double_rotation(w: &World) {
    let versions = w.key_versions();
    assert_eq!(
        versions.len(),
        3,
        "exactly two rotations, none repeated: {versions:?}"
    );
    assert_eq!(w.kms()["keyId"], versions[2]["kid"]);
    assert_eq!(
        w.inspect()["cluster"]["properties"]["provisioningState"],
        "Succeeded"
    );
    w.assert_all_current();
    assert!(w.journal_lines().contains("\"status\":\"succeeded\""));
}

#[tokio::test]
async fn sigkill_at_every_step_boundary_then_resume() {
    for boundary in 1..14 {
        let opts = SimOptions {
            lro_seconds: 1,
            latency_ms: 1,
            ..small(300)
        };
        let w = kill_and_resume(opts, move |j| {
            j.matches("\"type\":\"step-finished\"").count() >= boundary
        })
        .await;
        assert_double_rotation(&w);
    }
}

#[tokio::test]
async fn sigkill_during_the_operation_wait_and_during_reencryption() {
    let opts = || SimOptions {
        lro_seconds: 2,
        latency_ms: 2,
        ..small(2000)
    };
    let w = kill_and_resume(opts(), |j| {
        j.contains("\"type\":\"step-started\",\"index\":3")
    })
    .await;
    assert_double_rotation(&w);
    let w = kill_and_resume(opts(), |j| j.matches("\"type\":\"reencrypt\"").count() >= 3).await;
    assert_double_rotation(&w);
    let w = kill_and_resume(opts(), |j| {
        j.contains("\"type\":\"step-started\",\"index\":9")
    })
    .await;
    assert_double_rotation(&w);
}

/// `kmsctl enable --network-access private` with the twin's current key and vault.
async fn enable_private(w: &World) -> std::process::Output {
    let (k, vault_id) = (current_kid(w), w.twin.ids().vault_id());
    w.run(&[
        "enable",
        "--key-id",
        &k,
        "--network-access",
        "private",
        "--vault-resource-id",
        &vault_id,
        "--yes",
    ])
    .await
}

async fn refused(opts: SimOptions, args: &[&str], change: impl FnOnce(&World), expect: &str) {
    let w = world(opts).await;
    change(&w);
    let before = w.fingerprint();
    let out = w.run(args).await;
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    assert!(
        text(&out).contains(expect),
        "{args:?}: expected '{expect}' in\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains("fix:") || text(&out).contains("refused"),
        "{}",
        text(&out)
    );
    assert_eq!(w.fingerprint(), before, "{args:?} changed something");
}

#[tokio::test]
async fn preflight_refusals_change_nothing() {
    let rotate = ["rotate", "--yes"];
    refused(
        SimOptions {
            system_assigned_identity: true,
            ..small(20)
        },
        &rotate,
        |_| {},
        "system-assigned",
    )
    .await;
    refused(
        small(20),
        &rotate,
        |w| {
            w.twin.shared.world().vault["properties"]["networkAcls"]["defaultAction"] =
                json!("Deny")
        },
        "firewall default Deny",
    )
    .await;
    refused(
        small(20),
        &rotate,
        |w| w.twin.shared.world().vault["properties"]["accessPolicies"] = json!([]),
        "no access policy",
    )
    .await;
    refused(
        small(20),
        &rotate,
        |w| {
            w.twin.shared.world().vault["properties"]["tenantId"] =
                json!("11111111-2222-3333-4444-555555555555")
        },
        "another tenant",
    )
    .await;
    refused(
        small(20),
        &rotate,
        |w| w.first_key_version(|v| v.exp = Some(1)),
        "KeyExpired",
    )
    .await;
    refused(
        small(20),
        &rotate,
        |w| w.first_key_version(|v| v.nbf = Some(kmsctl::sim::world::now_unix() + 3600)),
        "is not valid before",
    )
    .await;
    refused(
        small(20),
        &rotate,
        |w| {
            w.twin.shared.world().vault["properties"]["vaultUri"] =
                json!("https://another-vault.vault.azure.net/")
        },
        "the vault's vaultUri is another-vault.vault.azure.net",
    )
    .await;
    refused(
        small(20),
        &["disable", "--yes"],
        |w| w.first_key_version(|v| v.enabled = false),
        "KeyDisabled",
    )
    .await;
    refused(
        small(20),
        &rotate,
        |w| w.twin.shared.world().cluster["properties"]["provisioningState"] = json!("Updating"),
        "provisioningState is Updating",
    )
    .await;
    refused(
        small(20),
        &rotate,
        |w| {
            w.twin.shared.world().cluster["properties"]["fqdn"] =
                json!("other-cluster.hcp.westeurope.azmk8s.io")
        },
        "is not this cluster's API server",
    )
    .await;
    refused(
        SimOptions {
            kms: false,
            ..small(20)
        },
        &rotate,
        |_| {},
        "KMS is not enabled",
    )
    .await;
    refused(small(20), &rotate, |w| {
        w.twin.shared.world().cluster["properties"]["securityProfile"]["kubernetesResourceObjectEncryptionProfile"] = json!({ "infrastructureEncryption": "Enabled" });
    }, "platform-managed rotation").await;
    let kid = |w: &World| current_kid(w);
    let w = world(SimOptions {
        kubernetes_version: "1.26.15".into(),
        kms: false,
        ..small(2100)
    })
    .await;
    let k = kid(&w);
    let before = w.fingerprint();
    let out = w.run(&["enable", "--key-id", &k, "--yes"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("at most 2000 Secrets"),
        "{}",
        text(&out)
    );
    assert_eq!(w.fingerprint(), before);
    // Private mode: VNet integration, the vault's resource id, Key Vault Contributor.
    let w = world(SimOptions {
        kms: false,
        ..small(20)
    })
    .await;
    let out = enable_private(&w).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("API Server VNet Integration"),
        "{}",
        text(&out)
    );
    let w = world(SimOptions {
        kms: false,
        network_access: NetworkAccess::Public,
        vnet_integration: true,
        konnectivity: false,
        ..small(20)
    })
    .await;
    w.twin.shared.world().role_assignments.retain(|r| {
        !r["properties"]["roleDefinitionId"]
            .as_str()
            .unwrap()
            .ends_with("f25e0fa2-a7c8-4377-a976-54943a77a395")
    });
    let out = enable_private(&w).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("Key Vault Contributor"),
        "{}",
        text(&out)
    );
    // An EC key, and the mode of an enabled vault.
    let w = world(small(20)).await;
    let ec = {
        let mut world = w.twin.shared.world();
        let v = kmsctl::sim::world::new_key_version("EC", None);
        let kid = format!(
            "https://{}/keys/ec-key/{}",
            world.ids.vault_host(),
            v.version
        );
        world.keys.insert(
            "ec-key".into(),
            kmsctl::sim::world::KeyRecord {
                versions: vec![v],
                rotation_policy: None,
            },
        );
        kid
    };
    let out = w.run(&["enable", "--key-id", &ec, "--yes"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("needs an RSA key"), "{}", text(&out));
    let w = world(SimOptions {
        vnet_integration: true,
        konnectivity: false,
        ..small(20)
    })
    .await;
    let out = enable_private(&w).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("cannot change while KMS is enabled"),
        "{}",
        text(&out)
    );
    // Without --yes and without a terminal, nothing happens either.
    let w = world(small(20)).await;
    let before = w.fingerprint();
    let out = w.run(&["rotate"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("pass --yes"), "{}", text(&out));
    assert_eq!(w.fingerprint(), before);
}

#[tokio::test]
async fn warnings_do_not_stop_a_run() {
    let w = world(SimOptions {
        apiserver_guard: true,
        ..small(50)
    })
    .await;
    w.twin.shared.world().vault["properties"]["enablePurgeProtection"] = json!(false);
    let out = w.run(&["rotate", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("aks-managed-apiserver-guard")
            && text(&out).contains("purge protection"),
        "{}",
        text(&out)
    );
    w.assert_all_current();
}

#[tokio::test]
async fn dry_run_changes_nothing_and_a_second_run_is_refused() {
    let w = world(SimOptions {
        lro_seconds: 3,
        ..small(50)
    })
    .await;
    let before = w.fingerprint();
    let out = w.run(&["rotate", "--twice", "--dry-run"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("prove-key-switch"));
    assert_eq!(w.fingerprint(), before);
    assert!(w.journal_lines().is_empty(), "a dry run journals nothing");
    let mut first = w
        .command(&["rotate", "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = w.run(&["rotate", "--yes"]).await;
    assert_eq!(second.status.code(), Some(2), "{}", text(&second));
    assert!(
        text(&second).contains("holds this cluster's lease"),
        "{}",
        text(&second)
    );
    let status = tokio::task::spawn_blocking(move || first.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    assert_eq!(w.key_versions().len(), 2, "only the first run rotated");
}

#[tokio::test]
async fn reencryption_survives_throttling_conflicts_expiry_errors_and_drops() {
    let w = world(SimOptions {
        latency_ms: 1,
        ..small(600)
    })
    .await;
    let put = "/api/v1/namespaces/*/secrets/*";
    let rule = |method: &str,
                path: &str,
                status: Option<u16>,
                probability: f64,
                count: u64,
                drop: bool| FaultRule {
        method: Some(method.into()),
        path: path.into(),
        status,
        probability: Some(probability),
        count: Some(count),
        drop,
        ..Default::default()
    };
    w.twin.add_faults(vec![
        rule("PUT", put, Some(429), 0.1, 60, false),
        rule("PUT", put, Some(409), 0.05, 25, false),
        rule("PUT", put, Some(503), 0.05, 25, false),
        rule("PUT", put, None, 0.03, 15, true),
        rule(
            "GET",
            "/api/v1/namespaces/*/secrets",
            Some(410),
            0.3,
            3,
            false,
        ),
        rule(
            "GET",
            "/api/v1/namespaces/*/secrets",
            Some(500),
            0.2,
            3,
            false,
        ),
    ]);
    let out = w.run(&["rotate", "--yes", "-o", "json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    w.assert_all_current();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let totals = &report["reencrypt"][0]["totals"];
    assert_eq!(totals["failed"], 0);
    assert!(
        totals["throttled"].as_u64().unwrap() > 0 && totals["conflicts"].as_u64().unwrap() > 0,
        "{totals}"
    );
}

#[tokio::test]
async fn a_secret_that_keeps_failing_is_named_and_the_run_ends_non_zero() {
    let w = world(small(40)).await;
    let victim = w
        .twin
        .shared
        .secrets_read()
        .list(Some("team-001"), Some(1), None)
        .items[0]
        .obj["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    w.twin.add_faults(vec![FaultRule {
        method: Some("PUT".into()),
        path: format!("/api/v1/namespaces/team-001/secrets/{victim}"),
        status: Some(422),
        ..Default::default()
    }]);
    let out = w.run(&["rotate", "--yes"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("team-001/{victim}")),
        "{}",
        text(&out)
    );
    w.twin.shared.world().faults.clear();
    w.resume_to_the_end().await;
}

#[tokio::test]
async fn the_key_switch_is_proven_before_reencrypting() {
    let w = world(SimOptions {
        kms_propagation_seconds: 3,
        ..small(200)
    })
    .await;
    let out = w.run(&["rotate", "--yes", "-o", "json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let proof = &report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "prove-key-switch")
        .unwrap()["output"];
    let waited = proof["waitedSeconds"].as_f64().unwrap();
    assert!(
        waited >= 2.0,
        "the barrier waited {waited}s for a 3 s propagation"
    );
    assert_eq!(proof["evidence"], "attributed", "{proof}");
    w.assert_all_current();
    // The 200 Secrets, and the canary unless the barrier's own PUT already moved it.
    let rewritten = report["reencrypt"][0]["totals"]["rewritten"]
        .as_u64()
        .unwrap();
    assert!((200..=201).contains(&rewritten), "{rewritten}");
}

#[tokio::test]
async fn no_secret_data_or_credential_in_any_output() {
    let w = world(small(30)).await;
    let marker = format!("LEAKMARKER{}", uuid::Uuid::new_v4().simple());
    {
        use base64::Engine;
        let value = base64::engine::general_purpose::STANDARD.encode(&marker);
        let label = w.twin.shared.world().kms_view(0).write;
        let secret = json!({ "metadata": { "name": "leak-probe" }, "data": { "v": value } });
        w.twin
            .shared
            .secrets_write()
            .create("default", secret, label, None)
            .unwrap();
    }
    let mut c = w.command(&["rotate", "--twice", "--yes", "-o", "json"]);
    c.env("RUST_LOG", "trace");
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&marker);
    let secret = w.twin.ids().client_secret;
    let everything = format!("{}{}", text(&out), w.journal_lines());
    for needle in [&marker, &b64, &secret] {
        assert!(
            !everything.contains(needle.as_str()),
            "output or journal holds Secret data or the client secret"
        );
    }
    w.assert_all_current();
}

#[tokio::test]
async fn a_run_that_loses_its_lease_stops_and_can_be_resumed() {
    let w = world(SimOptions {
        lro_seconds: 20,
        ..small(50)
    })
    .await;
    let mut command = w.command(&["rotate", "--yes"]);
    let run = tokio::task::spawn_blocking(move || command.output());
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Someone deletes the lease while the cluster update runs.
    w.twin
        .shared
        .world()
        .objects
        .delete("leases", "kube-system", "kmsctl-run")
        .expect("the run holds a lease");
    let out = run.await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("lost the cluster's lease"),
        "{}",
        text(&out)
    );
    w.resume_to_the_end().await;
}

/// `--progress json`: every stderr line is one JSON event; every wait (Azure's operation, the
/// replicas' agreement, the key-switch proof) starts, reports where it stands with its deadline,
/// and ends; the passes are labelled per rotation; the closing summary is the report's and
/// names the key versions that must stay alive as `status` does.
#[tokio::test]
async fn progress_json_parses_line_by_line_and_covers_every_wait() {
    let w = world(SimOptions {
        lro_seconds: 2,
        apiserver_replicas: 2,
        kms_status_period_seconds: 2,
        ..small(200)
    })
    .await;
    let out = w
        .run(&[
            "rotate",
            "--twice",
            "--yes",
            "--progress",
            "json",
            "-o",
            "json",
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let events: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["event"] == kind).collect() };
    for e in &events {
        assert!(e["at"].is_string(), "{e}");
    }
    let started = of("waitStarted");
    let kinds: Vec<&str> = started
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for (kind, at_least) in [
        ("clusterOperation", 2),
        ("keySwitchProof", 2),
        ("replicaAgreement", 2),
    ] {
        assert!(
            kinds.iter().filter(|k| **k == kind).count() >= at_least,
            "{kind}: {kinds:?}"
        );
    }
    for s in &started {
        let id = &s["wait"];
        assert!(s["what"].as_str().is_some_and(|t| !t.is_empty()), "{s}");
        assert!(s["why"].as_str().is_some_and(|t| !t.is_empty()), "{s}");
        assert!(s["deadlineSeconds"].as_u64().is_some_and(|d| d > 0), "{s}");
        let progress: Vec<&Value> = of("waitProgress")
            .into_iter()
            .filter(|p| p["wait"] == *id)
            .collect();
        if s["kind"] != "otherOperation" {
            assert!(!progress.is_empty(), "no progress for {s}");
        }
        for p in &progress {
            assert!(
                p["elapsedSeconds"].as_u64().unwrap() <= p["deadlineSeconds"].as_u64().unwrap(),
                "{p}"
            );
        }
        let ended: Vec<&Value> = of("waitFinished")
            .into_iter()
            .filter(|f| f["wait"] == *id)
            .collect();
        assert_eq!(ended.len(), 1, "{s}: {ended:?}");
        assert_eq!(ended[0]["ok"], true, "{s}: {ended:?}");
    }
    for p in of("waitProgress") {
        if p["status"].is_string() {
            // Azure's word on its operation.
            assert!(
                started
                    .iter()
                    .any(|s| s["wait"] == p["wait"] && s["kind"] != "keySwitchProof"),
                "{p}"
            );
        }
    }
    let proofs: Vec<&Value> = of("waitProgress")
        .into_iter()
        .filter(|p| {
            started
                .iter()
                .any(|s| s["wait"] == p["wait"] && s["kind"] == "keySwitchProof")
        })
        .collect();
    assert!(
        proofs
            .iter()
            .all(|p| p["replicas"]["of"] == 2 && p["evidence"].is_string()),
        "{proofs:?}"
    );
    let passes: Vec<(String, String)> = of("passStarted")
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["label"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for label in ["rotation 1 of 2", "rotation 2 of 2"] {
        for kind in ["reencryption", "verification"] {
            assert!(
                passes.contains(&(kind.to_string(), label.to_string())),
                "{kind} {label}: {passes:?}"
            );
        }
    }
    assert_eq!(of("passStarted").len(), of("passFinished").len());
    assert_eq!(of("stepStarted").len(), of("stepFinished").len());
    let last = events.last().unwrap();
    assert_eq!(last["event"], "runFinished", "{last}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["summary"], last["summary"]);
    let s = &report["summary"];
    assert_eq!(s["status"], "succeeded");
    assert_eq!(s["switches"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(s["passes"].as_array().unwrap().len(), 4, "{s}");
    assert_eq!(s["keys"]["inUse"], w.kms()["keyId"], "{s}");
    let alive = |v: &Value| -> Vec<String> {
        let mut v: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                k.as_str().map_or_else(
                    || k["keyId"].as_str().unwrap().to_lowercase(),
                    str::to_lowercase,
                )
            })
            .collect();
        v.sort();
        v
    };
    let status = w.run(&["status", "-o", "json"]).await;
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        alive(&s["keys"]["mustStayAlive"]),
        alive(&status["ledger"]["mustStayAlive"]),
        "{s}\n{status}"
    );
    // The oldest version may go: the summary says so, and what to run.
    assert_eq!(
        s["keys"]["retirableNow"].as_array().unwrap().len(),
        1,
        "{s}"
    );
    assert!(
        s["next"].as_str().unwrap().contains("--enabled false"),
        "{s}"
    );
}
