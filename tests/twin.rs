//! The twin, end to end over real sockets and TLS with the real client crates: azure_core's
//! pipeline (ARM), azure_identity (Entra ID), azure_security_keyvault_keys and kube.

mod common;

use common::{small, world};
use kmsctl::azure::arm::{ApiVersions, ArmClient};
use kmsctl::azure::keys::{KeyId, KeyVault};
use kmsctl::azure::mgmt_keys::KeyReader;
use kmsctl::azure::transport::Route;
use kmsctl::engine::cluster::update;
use kmsctl::engine::kms::DesiredKms;
use kmsctl::sim::SimOptions;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use std::sync::Arc;

struct Clients {
    arm: ArmClient,
    path: String,
    kv: KeyVault,
    /// The same key's state through Resource Manager.
    keys: KeyReader,
    kube: kube::Client,
    key: KeyId,
}

async fn clients(w: &common::World) -> Clients {
    let ids = w.twin.ids();
    let route = Route {
        address: Some(w.twin.addr),
        ca_pem: Some(w.twin.ca_pem.clone().into_bytes()),
    };
    let options = route.client_options().unwrap();
    let cred: Arc<dyn azure_core::credentials::TokenCredential> =
        azure_identity::ClientSecretCredential::new(
            &ids.tenant,
            ids.client_id.clone(),
            ids.client_secret.clone().into(),
            Some(azure_identity::ClientSecretCredentialOptions {
                client_options: options.clone(),
            }),
        )
        .unwrap();
    let arm = ArmClient::new(cred.clone(), options.clone(), ApiVersions::default());
    let path =
        kmsctl::checks::facts::cluster_path(&ids.subscription, &ids.resource_group, &ids.cluster);
    let c = arm.get(&path, &arm.api.aks).await.unwrap();
    let key = KeyId::parse(
        c.body["properties"]["securityProfile"]["azureKeyVaultKms"]["keyId"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let kv = KeyVault::new(&key.vault_url, cred, options, Default::default()).unwrap();
    let kc = kube::config::Kubeconfig::read_from(w.dir.path().join("kubeconfig")).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.default_retry = false;
    let keys = KeyReader::new(arm.clone(), &ids.vault_id());
    Clients {
        arm,
        path,
        kv,
        keys,
        kube: kube::Client::try_from(cfg).unwrap(),
        key,
    }
}

async fn put(
    c: &Clients,
    body: &Value,
) -> Result<kmsctl::azure::arm::Answer, kmsctl::azure::RemoteError> {
    let cur = c.arm.get(&c.path, &c.arm.api.aks).await.unwrap();
    c.arm
        .put_if_match(&c.path, &c.arm.api.aks, body, cur.etag.as_deref().unwrap())
        .await
}

#[tokio::test]
async fn get_put_round_trip_keeps_unknown_fields_and_follows_the_operation() {
    let w = world(SimOptions {
        lro_seconds: 1,
        ..small(10)
    })
    .await;
    let c = clients(&w).await;
    let mut body = c.arm.get(&c.path, &c.arm.api.aks).await.unwrap().body;
    body["properties"]["brandNewField2027"] = json!({ "nested": [1, 2, 3] });
    body["properties"]["securityProfile"]["azureKeyVaultKms"]["futureKmsField"] = json!("kept");
    let started = put(&c, &body).await.unwrap();
    assert_eq!(started.body["properties"]["provisioningState"], "Updating");
    assert!(
        started
            .async_operation
            .as_deref()
            .unwrap()
            .contains("/operations/")
    );
    let mut seen = Vec::new();
    let outcome = c
        .arm
        .wait_operation(&started, |s| seen.push(s.to_string()))
        .await
        .unwrap();
    assert_eq!(outcome.status, "Succeeded");
    let after = c.arm.get(&c.path, &c.arm.api.aks).await.unwrap();
    assert_eq!(
        after.body["properties"]["brandNewField2027"]["nested"][2],
        3
    );
    assert_eq!(
        after.body["properties"]["securityProfile"]["azureKeyVaultKms"]["futureKmsField"],
        "kept"
    );
    assert_eq!(after.body["properties"]["provisioningState"], "Succeeded");
    assert_ne!(after.etag, started.etag, "every write changes the eTag");
}

#[tokio::test]
async fn stale_if_match_is_412_and_a_running_operation_is_409() {
    let w = world(SimOptions {
        lro_seconds: 3,
        ..small(10)
    })
    .await;
    let c = clients(&w).await;
    let first = c.arm.get(&c.path, &c.arm.api.aks).await.unwrap();
    let mut body = first.body.clone();
    body["tags"]["x"] = json!("1");
    c.arm
        .put_if_match(
            &c.path,
            &c.arm.api.aks,
            &body,
            first.etag.as_deref().unwrap(),
        )
        .await
        .unwrap();
    let stale = c
        .arm
        .put_if_match(
            &c.path,
            &c.arm.api.aks,
            &body,
            first.etag.as_deref().unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (stale.status(), stale.code()),
        (Some(412), "PreconditionFailed")
    );
    let busy = put(&c, &body).await.unwrap_err();
    assert_eq!(
        (busy.status(), busy.code()),
        (Some(409), "OperationNotAllowed")
    );
    assert!(busy.to_string().contains("in progress"), "{busy}");
}

#[tokio::test]
async fn aks_rules_are_enforced_with_arm_errors() {
    let w = world(SimOptions {
        kubernetes_version: "1.26.15".into(),
        ..small(10)
    })
    .await;
    let c = clients(&w).await;
    let base = c.arm.get(&c.path, &c.arm.api.aks).await.unwrap().body;
    let kms_path = "/properties/securityProfile/azureKeyVaultKms";
    type Change = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "mode change while enabled",
            Box::new(|b: &mut Value| {
                b["properties"]["apiServerAccessProfile"]["enableVnetIntegration"] = json!(true);
                let k = b.pointer_mut(kms_path).unwrap();
                k["keyVaultNetworkAccess"] = json!("Private");
                k["keyVaultResourceId"] = json!(
                    "/subscriptions/x/resourceGroups/y/providers/Microsoft.KeyVault/vaults/kv-kmsctl-twin"
                );
            }),
            "not allowed while KMS is enabled",
        ),
        (
            "system-assigned identity",
            Box::new(|b: &mut Value| b["identity"] = json!({ "type": "SystemAssigned" })),
            "system-assigned",
        ),
        (
            "skipping a minor version",
            Box::new(|b: &mut Value| b["properties"]["kubernetesVersion"] = json!("1.28")),
            "Available upgrades: [1.27.16]",
        ),
        (
            "1.27 while KMS v1 is on",
            Box::new(|b: &mut Value| b["properties"]["kubernetesVersion"] = json!("1.27")),
            "KMS v1",
        ),
        (
            "network access unspecified",
            Box::new(|b: &mut Value| {
                b.pointer_mut(kms_path)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove("keyVaultNetworkAccess");
            }),
            "KeyVault network access is unspecified",
        ),
    ];
    for (name, change, message) in cases {
        let mut body = base.clone();
        change(&mut body);
        let e = put(&c, &body).await.expect_err(name);
        assert_eq!(e.status(), Some(400), "{name}: {e}");
        assert!(e.to_string().contains(message), "{name}: {e}");
    }
    // Private needs a resource id, and VNet integration.
    let disable = DesiredKms {
        enabled: false,
        key_id: None,
        network_access: None,
        vault_resource_id: None,
    };
    update(&c.arm, &c.path, &disable, &kmsctl::engine::events::Silent)
        .await
        .unwrap();
    let mut private = c.arm.get(&c.path, &c.arm.api.aks).await.unwrap().body;
    private["properties"]["securityProfile"]["azureKeyVaultKms"] =
        json!({ "enabled": true, "keyId": c.key.to_string(), "keyVaultNetworkAccess": "Private" });
    assert!(
        put(&c, &private)
            .await
            .unwrap_err()
            .to_string()
            .contains("KeyVault resource ID is empty")
    );
    private["properties"]["securityProfile"]["azureKeyVaultKms"]["keyVaultResourceId"] =
        json!(w.twin.ids().vault_id());
    assert!(
        put(&c, &private)
            .await
            .unwrap_err()
            .to_string()
            .contains("API Server VNet Integration")
    );
}

#[tokio::test]
async fn a_failed_operation_reports_failed() {
    let w = world(small(10)).await;
    let c = clients(&w).await;
    w.twin.shared.world().fail_next_operations = 1;
    let body = c.arm.get(&c.path, &c.arm.api.aks).await.unwrap().body;
    let started = put(&c, &body).await.unwrap();
    let outcome = c.arm.wait_operation(&started, |_| {}).await.unwrap();
    assert_eq!(outcome.status, "Failed");
    assert!(outcome.error.unwrap()["code"].is_string());
    assert_eq!(
        c.arm.get(&c.path, &c.arm.api.aks).await.unwrap().body["properties"]["provisioningState"],
        "Failed"
    );
}

#[tokio::test]
async fn key_vault_rotation_keeps_old_versions_and_expired_keys_stop_writes() {
    let w = world(small(10)).await;
    let c = clients(&w).await;
    let new = c.kv.rotate(&c.key.name).await.unwrap();
    assert_ne!(new.id.version, c.key.version);
    let old = c.keys.version(&c.key).await.unwrap();
    assert!(old.enabled);
    assert_eq!(old.kty.as_deref(), Some("RSA"));
    assert_eq!(c.keys.versions(&c.key.name).await.unwrap().len(), 2);
    // Resource Manager pages versions (two a page): every one is found through nextLink.
    let third = c.kv.rotate(&c.key.name).await.unwrap();
    let all = c.keys.versions(&c.key.name).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all.last().unwrap().id, third.id);
    let page = c
        .arm
        .get(
            &format!("{}/keys/{}/versions", c.keys.vault_id, c.key.name),
            &c.arm.api.key_vault,
        )
        .await
        .unwrap();
    assert_eq!(page.body["value"].as_array().unwrap().len(), 2);
    assert!(
        page.body["nextLink"]
            .as_str()
            .unwrap()
            .contains("$skiptoken=")
    );
    // The key version in use expires: the KMS plugin can no longer encrypt.
    for v in w
        .twin
        .shared
        .world()
        .keys
        .get_mut("kms-key")
        .unwrap()
        .versions
        .iter_mut()
    {
        v.exp = Some(1);
    }
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(c.kube.clone(), "default");
    let s = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("new".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let e = secrets
        .create(&PostParams::default(), &s)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("KeyExpired"), "{e}");
    // Disabling a version makes what it encrypted unreadable.
    c.kv.set_enabled(&c.key, false).await.unwrap();
    let all: Api<k8s_openapi::api::core::v1::Secret> = Api::all(c.kube.clone());
    assert!(
        all.list(&ListParams::default())
            .await
            .unwrap_err()
            .to_string()
            .contains("KeyDisabled")
    );
}

#[tokio::test]
async fn kubernetes_pages_conflicts_expiry_and_throttling() {
    let w = world(SimOptions {
        continue_ttl_seconds: 1,
        write_qps: Some(5.0),
        ..small(120)
    })
    .await;
    let c = clients(&w).await;
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::all(c.kube.clone());
    let mut lp = ListParams::default().limit(50);
    let mut names = 0;
    let mut token = None;
    loop {
        let page = api.list(&lp).await.unwrap();
        names += page.items.len();
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(t) => {
                token.get_or_insert(t.clone());
                lp = lp.continue_token(&t)
            }
            None => break,
        }
    }
    assert_eq!(names, 120);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    match api
        .list(
            &ListParams::default()
                .limit(50)
                .continue_token(&token.unwrap()),
        )
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
            assert!(
                s.metadata
                    .and_then(|m| m.continue_)
                    .is_some_and(|t| !t.is_empty())
            );
        }
        other => panic!("{other}"),
    }
    let ns: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.kube.clone(), "team-000");
    let mut s = ns
        .list(&ListParams::default().limit(1))
        .await
        .unwrap()
        .items
        .remove(0);
    let name = s.metadata.name.clone().unwrap();
    // At 5 writes/s the limiter admits one write per 200 ms: let it refill before each write
    // whose answer is checked (API Priority and Fairness answers 429 before any validation).
    let refill = || tokio::time::sleep(std::time::Duration::from_millis(300));
    refill().await;
    let fresh = ns.replace(&name, &PostParams::default(), &s).await.unwrap();
    assert_eq!(
        fresh.metadata.resource_version, s.metadata.resource_version,
        "an unchanged, current Secret is not rewritten"
    );
    s.metadata.resource_version = Some("999999999".into());
    s.metadata.labels = Some([("changed".to_string(), "yes".to_string())].into());
    refill().await;
    match ns
        .replace(&name, &PostParams::default(), &s)
        .await
        .unwrap_err()
    {
        kube::Error::Api(st) => assert_eq!(st.code, 409),
        other => panic!("{other}"),
    }
    let mut throttled = None;
    for _ in 0..20 {
        if let Err(kube::Error::Api(st)) = ns.replace(&name, &PostParams::default(), &fresh).await {
            throttled = Some(st);
            break;
        }
    }
    let st = throttled.expect("writes above the rate are refused");
    assert_eq!((st.code, st.details.unwrap().retry_after_seconds), (429, 1));
}

#[tokio::test]
async fn kubectl_pipeline_moves_secrets_only_after_a_key_change() {
    if std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        panic!("kubectl is required (.ci/run installs it)");
    }
    let w = world(small(200)).await;
    let kubeconfig = w.dir.path().join("kubeconfig");
    let pipeline = || {
        let kubeconfig = kubeconfig.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let k = kubeconfig.display().to_string();
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("kubectl --kubeconfig {k} get secrets -A -o json | kubectl --kubeconfig {k} replace -f - >/dev/null"))
                    .status()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let before = w.inspect()["storage"].clone();
    assert!(pipeline().await.success());
    assert_eq!(
        w.inspect()["storage"],
        before,
        "without a key change nothing is rewritten"
    );
    let c = clients(&w).await;
    let new = c.kv.rotate(&c.key.name).await.unwrap();
    update(
        &c.arm,
        &c.path,
        &DesiredKms {
            enabled: true,
            key_id: Some(new.id.to_string()),
            network_access: Some("Public".into()),
            vault_resource_id: None,
        },
        &kmsctl::engine::events::Silent,
    )
    .await
    .unwrap();
    assert!(pipeline().await.success());
    w.assert_all_current();
}

async fn kubectl(w: &common::World, args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new("kubectl");
    c.arg("--kubeconfig")
        .arg(w.dir.path().join("kubeconfig"))
        .args(args);
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn kubectl_namespaces_and_annotate_work() {
    let w = world(small(20)).await;
    let out = kubectl(&w, &["create", "namespace", "made-by-kubectl"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl(&w, &["get", "ns", "-o", "name"]).await;
    let names = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success()
            && names.contains("namespace/made-by-kubectl")
            && names.contains("namespace/kube-system"),
        "{names}"
    );
    let out = kubectl(
        &w,
        &[
            "create",
            "secret",
            "generic",
            "s1",
            "-n",
            "made-by-kubectl",
            "--from-literal=a=b",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl(
        &w,
        &[
            "annotate",
            "secret",
            "s1",
            "-n",
            "made-by-kubectl",
            "touched=yes",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = w
        .twin
        .shared
        .secrets_read()
        .get("made-by-kubectl", "s1")
        .unwrap()
        .obj
        .clone();
    assert_eq!(stored["metadata"]["annotations"]["touched"], "yes");
    assert_eq!(stored["data"]["a"], "Yg==", "a merge patch keeps the data");
}

#[tokio::test]
async fn replicas_learn_a_new_key_at_their_own_status_calls() {
    let w = world(SimOptions {
        apiserver_replicas: 2,
        kms_status_period_seconds: 4,
        ..small(10)
    })
    .await;
    let c = clients(&w).await;
    let leases: Api<kube::api::DynamicObject> = Api::namespaced_with(
        c.kube.clone(),
        "kube-system",
        &kmsctl::k8s::lease::resource(),
    );
    let ids = leases
        .list(&ListParams::default().labels("apiserver.kubernetes.io/identity=kube-apiserver"))
        .await
        .unwrap();
    assert_eq!(ids.items.len(), 2, "one identity Lease per replica");
    // A replica that went away an hour ago left its Lease behind: it is not counted.
    let stale = json!({ "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": "apiserver-gone", "namespace": "kube-system",
                      "labels": { "apiserver.kubernetes.io/identity": "kube-apiserver" } },
        "spec": { "holderIdentity": "kube-apiserver-gone", "leaseDurationSeconds": 3600,
                  "renewTime": "2026-01-01T00:00:00.000000Z" } });
    w.twin
        .shared
        .world()
        .objects
        .create("leases", "kube-system", stale)
        .unwrap();
    assert_eq!(
        kmsctl::k8s::replicas::count(&c.kube).await.unwrap(),
        Some(2)
    );
    let old = w
        .twin
        .shared
        .world()
        .replica_label(0, std::time::Instant::now());
    w.twin.shared.world().plugin_changed(std::sync::Arc::from(
        "kms:v2:https://kv.vault.azure.net/keys/k/new",
    ));
    // The replicas learn it at different moments, each within one period.
    let mut first_switch = [None, None];
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(9)
        && first_switch.iter().any(Option::is_none)
    {
        for (r, seen) in first_switch.iter_mut().enumerate() {
            let label = w
                .twin
                .shared
                .world()
                .replica_label(r, std::time::Instant::now());
            if seen.is_none() && label != old {
                *seen = Some(start.elapsed());
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (a, b) = (
        first_switch[0].expect("replica 0 switched"),
        first_switch[1].expect("replica 1 switched"),
    );
    assert!(
        a.abs_diff(b) >= std::time::Duration::from_millis(500),
        "{a:?} vs {b:?}: not at the same moment"
    );
    assert!(
        a.max(b) <= std::time::Duration::from_millis(4300),
        "{a:?} {b:?}: each within a period"
    );
    // /metrics of each replica (reached over fresh connections) shows the key its plugin returned.
    let cfg = {
        let kc = kube::config::Kubeconfig::read_from(w.dir.path().join("kubeconfig")).unwrap();
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap()
    };
    let hashes = kmsctl::k8s::replicas::sample_key_hashes(&cfg, 2, 8)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hashes.len(), 2, "{hashes:?}");
    let keys: std::collections::BTreeSet<_> = hashes.values().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        keys.len(),
        1,
        "both replicas report the new key: {hashes:?}"
    );
}

// --- The replicas as kube-apiserver runs them (issue 15) ---

async fn kube_config(w: &common::World) -> kube::Config {
    let kc = kube::config::Kubeconfig::read_from(w.dir.path().join("kubeconfig")).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.default_retry = false;
    cfg
}

/// A client over its own connection: the balancer gives it one replica for all its requests.
fn connection(cfg: &kube::Config) -> kube::Client {
    kube::Client::try_from(cfg.clone()).unwrap()
}

async fn metrics_of(client: &kube::Client) -> String {
    client
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap()
}

fn hash(text: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(text.as_bytes());
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// The apiserver_id_hash every series of one replica's /metrics carries (one replica per page).
fn apiserver_of(metrics: &str) -> String {
    let ids: std::collections::BTreeSet<&str> = metrics
        .match_indices("apiserver_id_hash=\"")
        .map(|(i, m)| {
            let rest = &metrics[i + m.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    assert_eq!(ids.len(), 1, "one replica per connection: {metrics}");
    ids.into_iter().next().unwrap().to_string()
}

/// The value of `name{...labels containing all of want...}` on a metrics page (None: no series).
fn series(metrics: &str, name: &str, want: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.rsplit_once('}')?;
        want.iter()
            .all(|w| labels.split(',').any(|kv| kv == *w))
            .then(|| value.trim().parse().unwrap())
    })
}

async fn identity_leases(c: &kube::Client) -> Vec<kube::api::DynamicObject> {
    let leases: Api<kube::api::DynamicObject> =
        Api::namespaced_with(c.clone(), "kube-system", &kmsctl::k8s::lease::resource());
    leases
        .list(&ListParams::default().labels("apiserver.kubernetes.io/identity=kube-apiserver"))
        .await
        .unwrap()
        .items
}

/// A new version of the twin's key, and the KMS v2 storage label that writes with it.
fn new_key_label(w: &common::World) -> String {
    let mut world = w.twin.shared.world();
    let v = kmsctl::sim::world::new_key_version("RSA", None);
    let kid = format!(
        "https://{}/keys/{}/{}",
        world.ids.vault_host(),
        kmsctl::sim::world::KEY_NAME,
        v.version
    );
    world
        .keys
        .get_mut(kmsctl::sim::world::KEY_NAME)
        .unwrap()
        .versions
        .push(v);
    format!("kms:v2:{kid}")
}

fn stored_key(w: &common::World, ns: &str, name: &str) -> String {
    w.twin
        .shared
        .secrets_read()
        .get(ns, name)
        .unwrap()
        .key
        .to_string()
}

fn secret(name: &str, value: &str) -> k8s_openapi::api::core::v1::Secret {
    serde_json::from_value(json!({ "metadata": { "name": name }, "stringData": { "v": value } }))
        .unwrap()
}

#[tokio::test]
async fn identity_leases_are_named_by_apiserver_id_and_come_back_after_a_delete() {
    let w = world(SimOptions {
        apiserver_replicas: 2,
        lease_recreate_seconds: 1,
        ..small(3)
    })
    .await;
    let cfg = kube_config(&w).await;
    let c = connection(&cfg);
    let leases = identity_leases(&c).await;
    assert_eq!(leases.len(), 2);
    let mut names = std::collections::BTreeSet::new();
    for l in &leases {
        let name = l.metadata.name.clone().unwrap();
        let suffix = name.strip_prefix("apiserver-").expect("apiserver-<id>");
        assert_eq!(suffix.len(), 26, "{name}");
        assert!(
            suffix.chars().all(|c| matches!(c, 'a'..='z' | '2'..='7')),
            "{name}"
        );
        let holder = l.data["spec"]["holderIdentity"].as_str().unwrap();
        let uuid = holder
            .strip_prefix(&format!("{name}_"))
            .expect("<ID>_<uuid>");
        uuid::Uuid::parse_str(uuid).expect("a uuid after the ID");
        assert_eq!(l.data["spec"]["leaseDurationSeconds"], 3600);
        names.insert(hash(&name));
    }
    // Every replica's metrics carry sha256(ID); fresh connections reach both.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(apiserver_of(&metrics_of(&connection(&cfg)).await));
    }
    assert_eq!(seen, names);
    // A deleted identity Lease is recreated by its replica, not at once.
    let first = leases[0].metadata.name.clone().unwrap();
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(c.clone(), "kube-system", &kmsctl::k8s::lease::resource());
    api.delete(&first, &Default::default()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(identity_leases(&c).await.len(), 1, "gone for a while");
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let back = identity_leases(&c).await;
    assert_eq!(back.len(), 2, "recreated");
    assert!(
        back.iter()
            .any(|l| l.metadata.name.as_deref() == Some(first.as_str()))
    );
    assert_eq!(SimOptions::default().lease_recreate_seconds, 10);
}

/// The replica each of `n` fresh connections reaches, by apiserver_id_hash.
async fn replicas_reached(cfg: &kube::Config, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(apiserver_of(&metrics_of(&connection(cfg)).await));
    }
    out
}

async fn balancer_sequence(balancer: kmsctl::sim::replicas::Balancer) -> Vec<String> {
    let w = world(SimOptions {
        apiserver_replicas: 3,
        balancer,
        seed: 7,
        ..small(1)
    })
    .await;
    replicas_reached(&kube_config(&w).await, 90).await
}

fn repeats(seq: &[String]) -> f64 {
    seq.windows(2).filter(|p| p[0] == p[1]).count() as f64 / (seq.len() - 1) as f64
}

#[tokio::test]
async fn balancers_round_robin_random_and_sticky() {
    use kmsctl::sim::replicas::Balancer;
    let rr = balancer_sequence(Balancer::RoundRobin).await;
    assert!(
        rr.windows(4)
            .all(|p| p[0] == p[3] && p[0] != p[1] && p[1] != p[2] && p[0] != p[2])
    );
    for b in [Balancer::Random, Balancer::Sticky] {
        let seq = balancer_sequence(b).await;
        let distinct: std::collections::BTreeSet<_> = seq.iter().collect();
        assert_eq!(distinct.len(), 3, "{b:?} reaches every replica");
        // Consecutive connections on one replica: 1/3 for uniform picks, 1/2 + 1/6 for sticky.
        let r = repeats(&seq);
        match b {
            Balancer::Random => assert!((0.15..0.5).contains(&r), "{b:?}: {r}"),
            _ => assert!((0.5..0.85).contains(&r), "{b:?}: {r}"),
        }
    }
}

#[tokio::test]
async fn write_lag_reports_a_key_to_status_before_writing_with_it() {
    let w = world(SimOptions {
        write_lag_seconds: 2,
        ..small(1)
    })
    .await;
    let cfg = kube_config(&w).await;
    let old = w
        .twin
        .shared
        .world()
        .replica_label(0, std::time::Instant::now())
        .to_string();
    let new = new_key_label(&w);
    w.twin
        .shared
        .world()
        .plugin_changed(std::sync::Arc::from(new.as_str()));
    let c = connection(&cfg);
    let status = kmsctl::k8s::replicas::parse_status_metric(&metrics_of(&c).await);
    let (reported, _) = status.values().next().unwrap();
    assert_eq!(
        reported,
        &hash(new.strip_prefix("kms:v2:").unwrap()),
        "Status has the new key"
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.clone(), "default");
    secrets
        .create(&PostParams::default(), &secret("lagged", "a"))
        .await
        .unwrap();
    assert_eq!(
        stored_key(&w, "default", "lagged"),
        old,
        "still written with the old key"
    );
    let to = "transformation_type=\"to_storage\"";
    let total = "apiserver_envelope_encryption_key_id_hash_total";
    let old_hash = format!(
        "key_id_hash=\"{}\"",
        hash(old.strip_prefix("kms:v2:").unwrap())
    );
    let new_hash = format!(
        "key_id_hash=\"{}\"",
        hash(new.strip_prefix("kms:v2:").unwrap())
    );
    let m = metrics_of(&c).await;
    assert_eq!(series(&m, total, &[to, &old_hash]), Some(1.0), "{m}");
    assert_eq!(series(&m, total, &[to, &new_hash]), None, "{m}");
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    secrets
        .create(&PostParams::default(), &secret("current", "a"))
        .await
        .unwrap();
    assert_eq!(
        stored_key(&w, "default", "current"),
        new,
        "the new key after the lag"
    );
    let m = metrics_of(&c).await;
    assert_eq!(series(&m, total, &[to, &new_hash]), Some(1.0), "{m}");
}

#[tokio::test]
async fn write_counters_count_what_each_replica_stored_and_decoded() {
    let w = world(SimOptions {
        apiserver_replicas: 2,
        ..small(4)
    })
    .await;
    let cfg = kube_config(&w).await;
    let label = w
        .twin
        .shared
        .world()
        .replica_label(0, std::time::Instant::now())
        .to_string();
    let key = format!(
        "key_id_hash=\"{}\"",
        hash(label.strip_prefix("kms:v2:").unwrap())
    );
    let c = connection(&cfg);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.clone(), "default");
    let created = secrets
        .create(&PostParams::default(), &secret("counted", "a"))
        .await
        .unwrap();
    let got = secrets.get("counted").await.unwrap();
    // An unchanged PUT of a current Secret is not written; a changed one is.
    secrets
        .replace("counted", &PostParams::default(), &got)
        .await
        .unwrap();
    let mut changed = got.clone();
    changed.data = Some(std::collections::BTreeMap::from([(
        "v".to_string(),
        k8s_openapi::ByteString(b"b".to_vec()),
    )]));
    secrets
        .replace("counted", &PostParams::default(), &changed)
        .await
        .unwrap();
    let listed = secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    assert!(created.metadata.resource_version.is_some());
    let m = metrics_of(&c).await;
    let total = "apiserver_envelope_encryption_key_id_hash_total";
    let to = "transformation_type=\"to_storage\"";
    let from = "transformation_type=\"from_storage\"";
    let provider = "provider_name=\"azurekmsprovider\"";
    assert_eq!(series(&m, total, &[to, &key, provider]), Some(2.0), "{m}");
    // The GET, the read before each PUT, and each listed item.
    assert_eq!(
        series(&m, total, &[from, &key]),
        Some(3.0 + listed as f64),
        "{m}"
    );
    let last = "apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds";
    let at = series(&m, last, &[to, &key]).unwrap();
    assert!(
        (at - kmsctl::sim::world::now_unix() as f64).abs() < 5.0,
        "{at}"
    );
    for line in [
        format!("# TYPE {total} counter"),
        format!("# TYPE {last} gauge"),
        format!("# HELP {total} [ALPHA]"),
    ] {
        assert!(m.contains(&line), "{line} in {m}");
    }
    let me = apiserver_of(&m);
    // The other replica wrote nothing: no series of its own.
    let other = loop {
        let m = metrics_of(&connection(&cfg)).await;
        if apiserver_of(&m) != me {
            break m;
        }
    };
    assert_eq!(series(&other, total, &[to]), None, "{other}");
    // Status series keep their shape.
    assert_eq!(kmsctl::k8s::replicas::parse_status_metric(&other).len(), 1);
}

#[tokio::test]
async fn writes_without_kms_v2_produce_no_counters() {
    let w = world(SimOptions {
        kms: false,
        ..small(1)
    })
    .await;
    let c = connection(&kube_config(&w).await);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.clone(), "default");
    secrets
        .create(&PostParams::default(), &secret("plain", "a"))
        .await
        .unwrap();
    secrets.get("plain").await.unwrap();
    let m = metrics_of(&c).await;
    assert!(
        !m.contains("apiserver_envelope_encryption_key_id_hash_total{"),
        "{m}"
    );
}

/// A connection that reached the replica whose apiserver_id_hash is `want`.
async fn connection_to(cfg: &kube::Config, want: &str) -> kube::Client {
    for _ in 0..12 {
        let c = connection(cfg);
        if apiserver_of(&metrics_of(&c).await) == want {
            return c;
        }
    }
    panic!("no connection reached {want}");
}

fn renew_times(leases: &[kube::api::DynamicObject]) -> std::collections::BTreeMap<String, String> {
    leases
        .iter()
        .map(|l| {
            (
                l.metadata.name.clone().unwrap(),
                l.data["spec"]["renewTime"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_restarted_replica_is_absent_then_back_as_a_new_apiserver_with_the_current_key() {
    let w = world(SimOptions {
        apiserver_replicas: 2,
        // Long enough that the replica that stays up does not learn the new key in this test.
        kms_status_period_seconds: 120,
        ..small(2)
    })
    .await;
    let cfg = kube_config(&w).await;
    let before: Vec<String> = w
        .twin
        .shared
        .world()
        .replicas
        .iter()
        .map(|r| r.id_hash())
        .collect();
    let old = w
        .twin
        .shared
        .world()
        .replica_label(0, std::time::Instant::now())
        .to_string();
    let new = new_key_label(&w);
    w.twin
        .shared
        .world()
        .plugin_changed(std::sync::Arc::from(new.as_str()));
    let on_0 = connection_to(&cfg, &before[0]).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(on_0.clone(), "default");
    secrets
        .create(&PostParams::default(), &secret("before", "a"))
        .await
        .unwrap();
    assert_eq!(stored_key(&w, "default", "before"), old);
    let leases_before = renew_times(&identity_leases(&on_0).await);
    // The command line's restart, against the files the twin wrote.
    let out = w
        .run(&[
            "sim",
            "restart-replica",
            "--dir",
            w.dir.path().to_str().unwrap(),
            "--replica",
            "0",
            "--down-seconds",
            "2",
        ])
        .await;
    assert!(out.status.success(), "{}", common::text(&out));
    // Its open connection answers 503; new connections all reach the other replica.
    let err = on_0
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("503") || err.to_string().contains("not running"),
        "{err}"
    );
    for h in replicas_reached(&cfg, 6).await {
        assert_eq!(
            h, before[1],
            "no new connection reaches a replica that is down"
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let c = connection(&cfg);
    let during = renew_times(&identity_leases(&c).await);
    let down_lease = &w.twin.shared.world().replicas[0].id.clone();
    assert_eq!(
        during[down_lease], leases_before[down_lease],
        "a replica that is down renews nothing"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // Back: a new apiserver ID, hash and Lease; fresh counters; the current key from the start.
    let names: Vec<String> = identity_leases(&c)
        .await
        .iter()
        .map(|l| l.metadata.name.clone().unwrap())
        .collect();
    let after: Vec<String> = w
        .twin
        .shared
        .world()
        .replicas
        .iter()
        .map(|r| r.id_hash())
        .collect();
    assert_ne!(after[0], before[0]);
    assert_eq!(after[1], before[1]);
    let new_id = w.twin.shared.world().replicas[0].id.clone();
    assert!(names.contains(&new_id), "{names:?}");
    assert_eq!(
        names.len(),
        3,
        "the old Lease stays until it expires: {names:?}"
    );
    let back = connection_to(&cfg, &after[0]).await;
    let m = metrics_of(&back).await;
    assert!(
        !m.contains("apiserver_envelope_encryption_key_id_hash_total{"),
        "counters reset: {m}"
    );
    let status = kmsctl::k8s::replicas::parse_status_metric(&m);
    assert_eq!(
        status[&after[0]].0,
        hash(new.strip_prefix("kms:v2:").unwrap()),
        "{m}"
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(back, "default");
    secrets
        .create(&PostParams::default(), &secret("after", "a"))
        .await
        .unwrap();
    assert_eq!(stored_key(&w, "default", "after"), new);
    let other = connection_to(&cfg, &after[1]).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(other, "default");
    secrets
        .create(&PostParams::default(), &secret("other", "a"))
        .await
        .unwrap();
    assert_eq!(
        stored_key(&w, "default", "other"),
        old,
        "the other replica has not switched"
    );
}

async fn get_error(c: &kube::Client, name: &str) -> String {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.clone(), "default");
    match secrets.get(name).await {
        Ok(_) => "readable".into(),
        Err(kube::Error::Api(s)) => format!("{} {}", s.code, s.message),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn secrets_under_a_disabled_missing_or_unreachable_key_fail_to_decrypt() {
    let w = world(small(4)).await;
    let c = connection(&kube_config(&w).await);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.clone(), "default");
    secrets
        .create(&PostParams::default(), &secret("s", "a"))
        .await
        .unwrap();
    assert_eq!(get_error(&c, "s").await, "readable");
    let unreadable = |w: &common::World| w.inspect()["storage"]["unreadable"].clone();
    assert_eq!(unreadable(&w)["total"], 0);
    // Disabled version.
    w.first_key_version(|v| v.enabled = false);
    let e = get_error(&c, "s").await;
    assert!(
        e.starts_with("500 Internal error occurred: failed to decrypt data: KeyDisabled"),
        "{e}"
    );
    assert_eq!(unreadable(&w)["total"], 5, "{}", unreadable(&w));
    assert!(
        secrets.list(&ListParams::default()).await.is_err(),
        "a list decodes every item"
    );
    w.first_key_version(|v| v.enabled = true);
    // The vault closed to the plugin (public access disabled, no private endpoint): a replica
    // holding the key's data key still decrypts (KMS v2 caches it); one that restarted cannot.
    w.twin.shared.world().vault["properties"]["publicNetworkAccess"] = json!("Disabled");
    assert_eq!(get_error(&c, "s").await, "readable");
    w.twin
        .shared
        .restart_replica(0, std::time::Duration::ZERO)
        .unwrap();
    let c = connection(&kube_config(&w).await);
    let e = get_error(&c, "s").await;
    assert!(
        e.starts_with(
            "500 Internal error occurred: failed to decrypt data: Forbidden: ForbiddenByConnection"
        ),
        "{e}"
    );
    let by_key = unreadable(&w)["byKey"].clone();
    let label = w.twin.shared.world().label_for_cluster().to_string();
    assert_eq!(by_key[&label], 5, "{by_key}");
    // ... also with KMS off: Secrets still under the key need the vault.
    {
        let mut world = w.twin.shared.world();
        world.vault["properties"]["publicNetworkAccess"] = json!("Enabled");
        world.vault["properties"]["networkAcls"]["defaultAction"] = json!("Deny");
        world.cluster["properties"]["securityProfile"]["azureKeyVaultKms"]["enabled"] =
            json!(false);
    }
    assert!(
        get_error(&c, "s")
            .await
            .contains("failed to decrypt data: Forbidden")
    );
    w.twin.shared.world().vault["properties"]["networkAcls"]["defaultAction"] = json!("Allow");
    assert_eq!(get_error(&c, "s").await, "readable");
    // A version the vault does not have.
    let mut ghost = label.clone();
    ghost.replace_range(ghost.len() - 4.., "beef");
    w.twin.shared.secrets_write().insert_seeded(
        "default",
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "ghost", "namespace": "default" } }),
        std::sync::Arc::from(ghost.as_str()),
    );
    let e = get_error(&c, "ghost").await;
    assert!(
        e.starts_with("500 Internal error occurred: failed to decrypt data: KeyNotFound"),
        "{e}"
    );
    assert_eq!(unreadable(&w)["byKey"][&ghost], 1);
}

#[tokio::test]
async fn key_names_and_vault_hosts_are_case_insensitive() {
    let w = world(small(3)).await;
    let c = clients(&w).await;
    let upper_kid = format!(
        "https://{}/keys/{}/{}",
        c.key.vault_host().to_ascii_uppercase(),
        c.key.name.to_ascii_uppercase(),
        c.key.version.to_ascii_uppercase()
    );
    let upper = KeyId::parse(&upper_kid).unwrap();
    // Resource Manager's key routes: the same key under an upper-case name and version.
    let got = c.keys.version(&upper).await.unwrap();
    assert!(got.enabled);
    assert!(got.id.version.eq_ignore_ascii_case(&c.key.version));
    // A Secret stored under the key spelled in another case is readable, and is not under a
    // disabled version until the real one is disabled.
    let label = format!("kms:v2:{upper_kid}");
    w.twin.shared.secrets_write().insert_seeded(
        "default",
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "shouty", "namespace": "default" } }),
        std::sync::Arc::from(label.as_str()),
    );
    let kc = connection(&kube_config(&w).await);
    assert_eq!(get_error(&kc, "shouty").await, "readable");
    assert_eq!(w.inspect()["storage"]["unreadable"]["total"], 0);
    w.first_key_version(|v| v.enabled = false);
    assert!(get_error(&kc, "shouty").await.contains("KeyDisabled"));
    w.first_key_version(|v| v.enabled = true);
    // AKS accepts the key id in any case (the key exists).
    let mut body = c.arm.get(&c.path, &c.arm.api.aks).await.unwrap().body;
    body["properties"]["securityProfile"]["azureKeyVaultKms"]["keyId"] = json!(upper_kid);
    put(&c, &body).await.unwrap();
}

#[tokio::test]
async fn names_it_does_not_hold_are_404_in_resource_managers_shapes() {
    let w = world(small(1)).await;
    let c = clients(&w).await;
    let ids = w.twin.ids();
    let sub = &ids.subscription;
    let api = c.arm.api.aks.clone();
    let err = |path: String| {
        let arm = &c.arm;
        let api = api.clone();
        async move {
            let e = arm.get(&path, &api).await.expect_err("a 404");
            (e.status(), e.code().to_string(), e.to_string())
        }
    };
    // A group that does not exist, whatever is asked for in it.
    let (status, code, text) = err(kmsctl::checks::facts::cluster_path(
        sub,
        "rg-nope",
        &ids.cluster,
    ))
    .await;
    assert_eq!(
        (status, code.as_str()),
        (Some(404), "ResourceGroupNotFound")
    );
    assert!(
        text.contains("Resource group 'rg-nope' could not be found."),
        "{text}"
    );
    let (_, code, _) = err(format!(
        "/subscriptions/{sub}/resourceGroups/rg-nope/providers/Microsoft.ContainerService/managedClusters"
    ))
    .await;
    assert_eq!(code, "ResourceGroupNotFound");
    let (_, code, _) = err(format!(
        "/subscriptions/{sub}/resourceGroups/rg-nope/providers/Microsoft.KeyVault/vaults/{}",
        ids.vault
    ))
    .await;
    assert_eq!(code, "ResourceGroupNotFound");
    // A resource missing from an existing group.
    let (status, code, text) = err(kmsctl::checks::facts::cluster_path(
        sub,
        &ids.resource_group,
        "aks-nope",
    ))
    .await;
    assert_eq!((status, code.as_str()), (Some(404), "ResourceNotFound"));
    assert!(
        text.contains(&format!(
            "The Resource 'Microsoft.ContainerService/managedClusters/aks-nope' under resource group '{}' was not found.",
            ids.resource_group
        )),
        "{text}"
    );
    // Names compare case-insensitively, as Resource Manager's do.
    let upper = kmsctl::checks::facts::cluster_path(
        sub,
        &ids.resource_group.to_ascii_uppercase(),
        &ids.cluster.to_ascii_uppercase(),
    );
    assert!(c.arm.get(&upper, &api).await.is_ok());
}

#[tokio::test]
async fn each_twin_has_its_own_api_server_host_which_its_kubeconfig_names() {
    let (a, b) = (world(small(1)).await, world(small(1)).await);
    let host = |w: &common::World| {
        w.twin.shared.world().cluster["properties"]["fqdn"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(host(&a), host(&b));
    assert!(
        host(&a).ends_with(".hcp.westeurope.azmk8s.io"),
        "{}",
        host(&a)
    );
    let kc = std::fs::read_to_string(a.dir.path().join("kubeconfig")).unwrap();
    assert!(
        kc.contains(&format!("server: https://{}\n", host(&a))),
        "{kc}"
    );
    assert!(
        kc.contains(&format!("proxy-url: http://{}\n", a.twin.addr)),
        "{kc}"
    );
    // The kube client reaches it through the proxy, verifying TLS for that name.
    let c = clients(&a).await;
    let ns: Api<kube::api::DynamicObject> = Api::all_with(
        c.kube.clone(),
        &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()),
    );
    assert!(
        !ns.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}
