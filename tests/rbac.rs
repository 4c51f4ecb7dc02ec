//! `kmsctl rbac`: the least privilege manifests apply with real kubectl, and the Azure custom
//! role never allows deleting a key, a vault or an identity.

mod common;

use common::{small, text, world};
use serde_json::Value;

#[tokio::test]
async fn the_roles_apply_and_never_allow_deleting_keys_vaults_or_identities() {
    let w = world(small(5)).await;
    let out = w.run(&["rbac", "--user", "alice@example.com"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let yaml = String::from_utf8(out.stdout).unwrap();
    let manifests: String = yaml
        .split("\n# Azure custom role")
        .next()
        .unwrap()
        .to_string();
    let applied = w.kubectl_apply_dry_run(manifests).await;
    assert!(applied.status.success(), "{}", text(&applied));
    let said = String::from_utf8_lossy(&applied.stdout).to_string();
    for o in [
        "clusterrole.rbac.authorization.k8s.io/kmsctl",
        "role.rbac.authorization.k8s.io/kmsctl",
        "clusterrolebinding.rbac.authorization.k8s.io/kmsctl",
        "rolebinding.rbac.authorization.k8s.io/kmsctl",
    ] {
        assert!(said.contains(o), "{o} in {said}");
    }

    let out = w.run(&["rbac", "-o", "json"]).await;
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let role = &doc["azureRole"];
    let list = |k: &str| -> Vec<String> {
        role[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    let (actions, data) = (list("Actions"), list("DataActions"));
    assert!(actions.contains(&"Microsoft.ContainerService/managedClusters/write".to_string()));
    assert!(data.contains(&"Microsoft.KeyVault/vaults/keys/rotate/action".to_string()));
    for a in actions.iter().chain(data.iter()) {
        assert!(!a.contains('*'), "no wildcards: {a}");
        assert!(
            !a.to_ascii_lowercase().contains("delete") && !a.contains("purge"),
            "never deletes: {a}"
        );
    }
    assert!(
        role["AssignableScopes"][0]
            .as_str()
            .unwrap()
            .starts_with("/subscriptions/")
    );
    // Secrets: only what re-encryption does (get, list, update), cluster-wide.
    let cluster_role = doc["kubernetes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == "ClusterRole")
        .unwrap();
    let secrets = cluster_role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resources"][0] == "secrets")
        .unwrap();
    assert_eq!(
        secrets["verbs"],
        serde_json::json!(["get", "list", "update"])
    );
}
