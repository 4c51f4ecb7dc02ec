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

fn least(opts: kmsctl::sim::SimOptions) -> kmsctl::sim::SimOptions {
    kmsctl::sim::SimOptions {
        least_privilege: true,
        kms_status_period_seconds: 1,
        ..opts
    }
}

#[tokio::test]
async fn every_lifecycle_command_works_under_exactly_those_permissions() {
    use kmsctl::sim::SimOptions;
    let w = world(least(SimOptions {
        vnet_integration: true,
        konnectivity: false,
        lro_seconds: 0,
        ..small(60)
    }))
    .await;
    for args in [
        &["status"][..],
        &["rotate", "--twice", "--retire-old", "--yes"],
        &["vault-mode", "--to", "private", "--yes"],
        &["vault-mode", "--to", "public", "--yes"],
        &["check-expiry"],
        &["reencrypt"],
        &["disable", "--yes"],
    ] {
        let out = w.run(args).await;
        assert!(
            out.status.success(),
            "{args:?} under least privilege: {}",
            text(&out)
        );
    }
    let kid = w.key_versions().last().unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let out = w.run(&["enable", "--key-id", &kid, "--yes"]).await;
    assert!(out.status.success(), "enable: {}", text(&out));
    w.assert_all_current();
    assert!(
        w.key_versions()[0]["enabled"] == false,
        "--retire-old disabled the oldest"
    );

    let old = world(least(SimOptions {
        kubernetes_version: "1.25.11".into(),
        lro_seconds: 0,
        ..small(30)
    }))
    .await;
    let out = old.run(&["migrate-v2", "--yes"]).await;
    assert!(out.status.success(), "migrate-v2: {}", text(&out));
    old.assert_all_current();
}

#[tokio::test]
async fn the_twin_refuses_what_the_roles_do_not_grant() {
    let w = world(least(small(5))).await;
    // Deleting a Secret is not granted: kubectl, with kmsctl's user, is forbidden.
    let kubeconfig = w.dir.path().join("kubeconfig");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kubectl")
            .args(["delete", "secret", "kmsctl-canary", "-n", "kube-system"])
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot delete resource \"secrets\""),
        "{}",
        text(&out)
    );
    // Doctor reads pods' logs and identities, which the lifecycle role does not grant: the
    // denial is the service's message, not a crash.
    let out = w
        .run(&["doctor", "identity", "--service-account", "default/default"])
        .await;
    assert!(
        text(&out).contains("AuthorizationFailed") || text(&out).contains("forbidden"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn each_half_prints_alone_for_the_tool_that_applies_it() {
    let w = world(small(5)).await;
    // --kubernetes: only manifests, accepted by kubectl as printed (YAML and -o json).
    for args in [
        &["rbac", "--kubernetes", "--user", "ops"][..],
        &["rbac", "--kubernetes", "-o", "json"][..],
    ] {
        let out = w.run(args).await;
        assert!(out.status.success(), "{}", text(&out));
        let printed = String::from_utf8(out.stdout).unwrap();
        assert!(!printed.contains("Actions"), "no Azure role in {printed}");
        let applied = w.kubectl_apply_dry_run(printed).await;
        assert!(applied.status.success(), "{args:?}: {}", text(&applied));
        assert!(
            String::from_utf8_lossy(&applied.stdout)
                .contains("clusterrole.rbac.authorization.k8s.io/kmsctl")
        );
    }
    // --azure: exactly the role definition, as JSON, the same as -o json's azureRole.
    let out = w.run(&["rbac", "--azure"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let role: Value = serde_json::from_slice(&out.stdout).expect("only JSON");
    let both: Value = serde_json::from_slice(&w.run(&["rbac", "-o", "json"]).await.stdout).unwrap();
    assert_eq!(role, both["azureRole"]);
    // --out-dir: both files, and how to apply each.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("rbac");
    let out = w.run(&["rbac", "--out-dir", d.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("kubectl apply -f")
            && said.contains("az role definition create --role-definition @"),
        "{said}"
    );
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("kmsctl-role.json")).unwrap())
            .unwrap();
    assert_eq!(written, role);
    let yaml = std::fs::read_to_string(d.join("kmsctl-rbac.yaml")).unwrap();
    assert!(w.kubectl_apply_dry_run(yaml).await.status.success());
    // The default output says how to apply each half.
    let out = w.run(&["rbac"]).await;
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("--kubernetes")
            && said.contains("| kubectl apply -f -")
            && said.contains("--azure"),
        "{said}"
    );
    // The halves exclude each other.
    assert_eq!(
        w.run(&["rbac", "--kubernetes", "--azure"])
            .await
            .status
            .code(),
        Some(2)
    );
}
