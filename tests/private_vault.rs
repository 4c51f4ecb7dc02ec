//! A private vault seen from an operator's machine (the twin's `--operator-network outside`):
//! every read of key state goes through Resource Manager and tells the truth; a change that
//! needs the vault's data plane is refused before anything changes; from inside the vault's
//! network it goes through; a firewall vault; a run that loses reach mid-way stops, resumable;
//! and the reads work with exactly the Resource Manager actions `kmsctl rbac` lists.

mod common;

use common::{World, small, text, world};
use kmsctl::sim::operator_network::OperatorNetwork;
use kmsctl::sim::{NetworkAccess, SimOptions};
use serde_json::{Value, json};
use std::time::Duration;

const DAY: u64 = 86_400;

fn private(secrets: usize) -> SimOptions {
    SimOptions {
        network_access: NetworkAccess::Private,
        vnet_integration: true,
        konnectivity: false,
        key_expires_in: Some(Duration::from_secs(20 * DAY)),
        kms_status_period_seconds: 1,
        ..small(secrets)
    }
}

fn set_network(w: &World, n: OperatorNetwork) {
    w.twin.shared.world().opts.operator_network = n;
}

/// What the vault's data plane answers this machine (a read of the key, with the real client).
async fn data_plane_read(w: &World) -> Result<(), kmsctl::azure::RemoteError> {
    let ids = w.twin.ids();
    let route = kmsctl::azure::transport::Route {
        address: Some(w.twin.addr),
        ca_pem: Some(w.twin.ca_pem.clone().into_bytes()),
    };
    let options = route.client_options().unwrap();
    let cred: std::sync::Arc<dyn azure_core::credentials::TokenCredential> =
        azure_identity::ClientSecretCredential::new(
            &ids.tenant,
            ids.client_id.clone(),
            ids.client_secret.clone().into(),
            Some(azure_identity::ClientSecretCredentialOptions {
                client_options: options.clone(),
            }),
        )
        .unwrap();
    let kv = kmsctl::azure::keys::KeyVault::new(
        &format!("https://{}", ids.vault_host()),
        cred,
        options,
        Default::default(),
    )
    .unwrap();
    kv.reach("kms-key").await
}

#[tokio::test]
async fn from_outside_a_private_vault_every_read_sees_the_key_versions() {
    let w = world(SimOptions {
        fleet: vec![
            kmsctl::sim::fleet::parse_member("90d").unwrap(),
            kmsctl::sim::fleet::parse_member("5d").unwrap(),
        ],
        ..private(20)
    })
    .await;
    // The twin refuses this machine on the data plane, as Key Vault does.
    let e = data_plane_read(&w).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(403), "Forbidden"), "{e}");
    assert_eq!(e.network_block(), Some("ForbiddenByConnection"), "{e}");
    assert!(
        e.to_string().contains("Public network access is disabled"),
        "{e}"
    );
    // status
    let out = w.run(&["status", "-o", "json"]).await;
    let s: Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(s["key"]["enabled"], true, "{}", text(&out));
    assert!(s["key"]["expiresOn"].is_string(), "{}", text(&out));
    // check-expiry: WARNING at 20 days, with the newest version and no unread one.
    let out = w
        .run(&[
            "check-expiry",
            "--warn",
            "30d",
            "--critical",
            "7d",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!text(&out).contains("could not be read"), "{}", text(&out));
    assert_eq!(r["clusters"][0]["versions"][0]["status"], "WARNING", "{r}");
    // --all: the fleet's keys are in the same private vault; the 5-day one is CRITICAL.
    let out = w
        .run(&[
            "check-expiry",
            "--all",
            "--warn",
            "30d",
            "--critical",
            "7d",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", text(&out));
    // One document a line, in the single check's shape, none of them UNKNOWN.
    for l in &lines {
        assert!(l["clusters"][0]["status"].is_string(), "{l}");
        assert_ne!(l["clusters"][0]["status"], "UNKNOWN", "{l}");
    }
    // preflight of a rotation, dry run: the key read through Resource Manager passes, the
    // data plane's reach is refused with the vault's settings and the way forward.
    let out = w.run(&["rotate", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("ok     key-expiry"), "{t}");
    assert!(t.contains("REFUSE vault-reach"), "{t}");
    assert!(t.contains("public network access Disabled"), "{t}");
    assert!(t.contains("private endpoint to the vault"), "{t}");
    assert!(!t.contains("firewall allows"), "{t}");
    // doctor kms
    let out = w.run(&["doctor", "kms", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("could not be read"), "{}", text(&out));
    assert!(text(&out).contains("expires"), "{}", text(&out));
}

#[tokio::test]
async fn rotate_from_outside_is_refused_unchanged_and_from_inside_it_goes_through() {
    let w = world(private(20)).await;
    w.refused(&["rotate", "--yes"], "ForbiddenByConnection")
        .await;
    w.refused(
        &["check-expiry", "--fix", "extend=90d", "--yes"],
        "cannot be reached from this network",
    )
    .await;
    set_network(&w, OperatorNetwork::Inside);
    data_plane_read(&w)
        .await
        .expect("through the private endpoint");
    // From inside, the expiry fix goes through and the check reads the new expiry back.
    let out = w
        .run(&["check-expiry", "--fix", "extend=90d", "--yes"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let exp = w.key_versions()[0]["exp"].as_i64().unwrap();
    let want = chrono::Utc::now().timestamp() + 90 * DAY as i64;
    assert!((exp - want).abs() < 120, "{exp} vs {want}");
    let out = w.run(&["rotate", "--twice", "--retire-old", "--yes"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    w.assert_all_current();
    w.assert_readable();
    assert_eq!(w.key_versions().len(), 3);
    assert_eq!(w.key_versions()[0]["enabled"], false, "the oldest retired");
}

#[tokio::test]
async fn a_firewall_vault_refuses_an_address_it_does_not_allow() {
    let w = world(private(10)).await;
    {
        let mut world = w.twin.shared.world();
        let p = &mut world.vault["properties"];
        p["publicNetworkAccess"] = json!("Enabled");
        p["networkAcls"]["defaultAction"] = json!("Deny");
        p["networkAcls"]["ipRules"] = json!([{ "value": "203.0.113.0/24" }]);
    }
    let e = data_plane_read(&w).await.unwrap_err();
    assert_eq!(e.network_block(), Some("ForbiddenByFirewall"), "{e}");
    assert!(e.to_string().contains("Client address: 127.0.0.1"), "{e}");
    w.refused(&["rotate", "--yes"], "ForbiddenByFirewall").await;
    let out = w.run(&["rotate", "--dry-run"]).await;
    assert!(
        text(&out).contains("an address the vault's firewall allows"),
        "{}",
        text(&out)
    );
    // Reads still work; an address rule for this machine lets the rotation through.
    let out = w.run(&["status", "-o", "json"]).await;
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["key"]["enabled"], true);
    w.twin.shared.world().vault["properties"]["networkAcls"]["ipRules"] =
        json!([{ "value": "127.0.0.1" }]);
    let out = w.run(&["rotate", "--yes"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    w.assert_all_current();
}

#[tokio::test]
async fn a_run_that_loses_reach_mid_way_stops_at_that_step_and_resumes() {
    let w = world(SimOptions {
        lro_seconds: 1,
        ..private(20)
    })
    .await;
    set_network(&w, OperatorNetwork::Inside);
    let args = ["rotate", "--twice", "--yes"];
    let child = w
        .command(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let dir = w.state_dir().join("kmsctl/runs");
    let shared = w.twin.shared.clone();
    // After the first rotation is done, the machine leaves the vault's network.
    let out = tokio::task::spawn_blocking(move || {
        for _ in 0..60_000 {
            let j: String = std::fs::read_dir(&dir)
                .map(|d| {
                    d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                        .collect()
                })
                .unwrap_or_default();
            if j.contains("\"type\":\"step-finished\",\"index\":2,") {
                shared.world().opts.operator_network = OperatorNetwork::Outside;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("rotating the key"), "{t}");
    assert!(t.contains("this step changed nothing"), "{t}");
    assert!(t.contains("kmsctl resume"), "{t}");
    assert_eq!(
        w.key_versions().len(),
        2,
        "only the first rotation happened"
    );
    set_network(&w, OperatorNetwork::Inside);
    w.resume_to_the_end().await;
    assert_eq!(w.key_versions().len(), 3);
    w.assert_readable();
}

#[tokio::test]
async fn reads_need_only_the_resource_manager_key_actions_kmsctl_rbac_lists() {
    let w = world(SimOptions {
        least_privilege: true,
        ..private(10)
    })
    .await;
    let out = w.run(&["rbac", "-o", "json"]).await;
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let actions = doc["azureRole"]["Actions"].to_string();
    for a in [
        "Microsoft.KeyVault/vaults/keys/read",
        "Microsoft.KeyVault/vaults/keys/versions/read",
    ] {
        assert!(actions.contains(a), "{a} in {actions}");
    }
    for args in [
        &["status"][..],
        &["check-expiry", "--warn", "30d", "--critical", "7d"],
        &["doctor", "kms"],
    ] {
        let out = w.run(args).await;
        assert!(
            out.status.code() == Some(0) || out.status.code() == Some(1),
            "{args:?}: {}",
            text(&out)
        );
        assert!(
            !text(&out).contains("AuthorizationFailed"),
            "{args:?}: {}",
            text(&out)
        );
        assert!(
            !text(&out).contains("could not be read"),
            "{args:?}: {}",
            text(&out)
        );
    }
    set_network(&w, OperatorNetwork::Inside);
    let out = w.run(&["rotate", "--yes"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test]
async fn a_server_error_at_the_reach_probe_is_not_called_a_permission_problem() {
    let w = world(SimOptions {
        kms_status_period_seconds: 1,
        ..common::small(20)
    })
    .await;
    w.twin.add_faults(vec![
        serde_json::from_value(serde_json::json!({
            "method": "GET", "host": "vault.azure.net", "path": "/keys/kms-key", "status": 500
        }))
        .unwrap(),
    ]);
    let before = w.fingerprint();
    let out = w.run(&["rotate", "--yes"]).await;
    let t = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("retry later") && !t.contains("Crypto Officer"),
        "{t}"
    );
    assert_eq!(w.fingerprint(), before);
}
