//! `kmsctl doctor` end to end against the twin's scenarios: each cause of the troubleshooting
//! guide (shared/domain.md §5) and each identity misconfiguration is named, with the evidence
//! line and the remedy; a healthy cluster yields nothing above info; doctor changes nothing.

mod common;

use common::{World, small, text, world};
use kmsctl::sim::SimOptions;
use serde_json::Value;

async fn scenario(name: &str) -> World {
    world(SimOptions {
        scenario: Some(name.into()),
        ..small(5)
    })
    .await
}

async fn doctor(w: &World, args: &[&str]) -> (i32, Vec<Value>) {
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    all.extend(["-o", "json"]);
    let before = w.fingerprint();
    let out = w.run(&all).await;
    assert_eq!(w.fingerprint(), before, "doctor changed something");
    let doc: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let findings = doc["findings"].as_array().cloned().unwrap_or_default();
    for f in &findings {
        for field in ["severity", "cause", "evidence", "remedy"] {
            assert!(f[field].is_string(), "{field} missing in {f}");
        }
    }
    (out.status.code().unwrap_or(-1), findings)
}

fn problems(findings: &[Value]) -> Vec<&Value> {
    findings
        .iter()
        .filter(|f| f["severity"] != "info")
        .collect()
}

/// (scenario, the guide's cause number, a piece of the real log or event line, a piece of the remedy)
const CAUSES: &[(&str, &str, &str, &str)] = &[
    (
        "nmi-404",
        "1",
        "nmi response failed with status code: 404",
        "NMI",
    ),
    (
        "vault-unreachable",
        "2",
        "StatusCode=0 -- Original Error: context deadline exceeded",
        "nc -v -w 2",
    ),
    (
        "identity-not-found",
        "3",
        "\"error_description\":\"Identity not found\"",
        "addonProfiles.azureKeyvaultSecretsProvider.identity.clientId",
    ),
    (
        "forbidden-by-connection",
        "4",
        "InnerError={\"code\":\"ForbiddenByConnection\"}",
        "privatelink.vaultcore.azure.net",
    ),
    (
        "no-driver-on-node",
        "5",
        "not found in the list of registered CSI drivers",
        "kubectl get pod -l app=secrets-store-csi-driver",
    ),
    (
        "spc-not-found",
        "6",
        "failed to get secretproviderclass default/app-spc",
        "namespace",
    ),
    (
        "provider-not-found",
        "6'",
        "failed to find provider binary azure",
        "gRPC",
    ),
    (
        "sync-rbac-missing",
        "7'",
        "failed to create Kubernetes secret",
        "secretprovidersyncing-role",
    ),
    ("vault-401", "7", "StatusCode=401", "401"),
    ("vault-429", "8", "StatusCode=429", "429"),
];

#[tokio::test]
async fn each_cause_of_the_guide_is_named_with_its_evidence_and_remedy() {
    for (name, guide, line, remedy) in CAUSES {
        let w = scenario(name).await;
        let (code, findings) = doctor(&w, &["secrets-provider", "--pod", "default/app"]).await;
        assert_eq!(code, 1, "{name}: errors exit 1");
        let f = findings
            .iter()
            .find(|f| f["guide"] == *guide)
            .unwrap_or_else(|| panic!("{name}: no cause {guide} in {findings:#?}"));
        assert_eq!(f["severity"], "error", "{name}");
        assert!(
            f["evidence"].as_str().unwrap().contains(line),
            "{name}: evidence {}",
            f["evidence"]
        );
        assert!(
            f["remedy"].as_str().unwrap().contains(remedy),
            "{name}: remedy {}",
            f["remedy"]
        );
        // Only this cause is reported as a guide cause.
        let guides: Vec<&Value> = findings.iter().filter(|f| !f["guide"].is_null()).collect();
        assert!(
            guides
                .iter()
                .all(|f| f["guide"] == *guide || *name == "no-driver-on-node"),
            "{name}: {guides:#?}"
        );
    }
}

#[tokio::test]
async fn a_healthy_cluster_yields_nothing_above_info() {
    let w = scenario("healthy").await;
    let (code, findings) = doctor(&w, &["secrets-provider", "--pod", "default/app"]).await;
    assert_eq!(code, 0);
    assert!(problems(&findings).is_empty(), "{findings:#?}");
    assert!(findings.iter().any(|f| {
        f["cause"]
            .as_str()
            .unwrap()
            .contains("may read secret objects")
    }));
    // An error line older than an hour is not read (the guide's window).
    assert!(
        !serde_json::to_string(&findings)
            .unwrap()
            .contains("code = Canceled")
    );
    let (code, findings) = doctor(&w, &["identity", "--service-account", "default/app"]).await;
    assert_eq!(code, 0);
    assert!(problems(&findings).is_empty(), "{findings:#?}");
}

/// (scenario, a piece of the cause, a piece of the evidence, a piece of the remedy)
const IDENTITY: &[(&str, &str, &str, &str)] = &[
    (
        "wi-annotation-missing",
        "has no azure.workload.identity/client-id annotation",
        "annotations",
        "kubectl annotate serviceaccount app",
    ),
    (
        "wi-subject-mismatch",
        "has subject system:serviceaccount:default:app",
        "system:serviceaccount:default:app-old",
        "az identity federated-credential create",
    ),
    (
        "wi-issuer-mismatch",
        "names another issuer",
        "00000000-0000-0000-0000-000000000000",
        "--issuer https://",
    ),
    (
        "wi-pod-not-labelled",
        "is not labelled azure.workload.identity/use=true",
        "pod/app labels",
        "azure.workload.identity/use",
    ),
    (
        "wi-no-vault-access",
        "no access policy lets identity app-identity get secrets",
        "accessPolicies",
        "az keyvault set-policy",
    ),
    (
        "wi-wrong-role",
        "has no role on",
        "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba",
        "Key Vault Secrets User",
    ),
    (
        "addon-disabled",
        "add-on is disabled",
        "enabled is not true",
        "az aks enable-addons",
    ),
];

#[tokio::test]
async fn each_identity_misconfiguration_is_named() {
    for (name, cause, evidence, remedy) in IDENTITY {
        let w = scenario(name).await;
        let (code, findings) = doctor(&w, &["secrets-provider", "--pod", "default/app"]).await;
        assert_eq!(code, 1, "{name}");
        let f = findings
            .iter()
            .find(|f| f["cause"].as_str().unwrap().contains(cause))
            .unwrap_or_else(|| panic!("{name}: no '{cause}' in {findings:#?}"));
        assert_eq!(f["severity"], "error", "{name}");
        assert!(
            f["evidence"].as_str().unwrap().contains(evidence),
            "{name}: {}",
            f["evidence"]
        );
        assert!(
            f["remedy"].as_str().unwrap().contains(remedy),
            "{name}: {}",
            f["remedy"]
        );
        if name.starts_with("wi-") && *name != "wi-pod-not-labelled" {
            // `doctor identity` finds the same for the ServiceAccount.
            let (_, by_sa) = doctor(&w, &["identity", "--service-account", "default/app"]).await;
            assert!(
                by_sa
                    .iter()
                    .any(|f| f["cause"].as_str().unwrap().contains(cause)),
                "{name}: {by_sa:#?}"
            );
        }
    }
    let w = scenario("mi-wrong-identity").await;
    let (_, findings) = doctor(&w, &["secrets-provider", "--pod", "default/app"]).await;
    assert!(
        problems(&findings).iter().any(|f| f["cause"]
            .as_str()
            .unwrap()
            .contains("is not the add-on's identity")),
        "{findings:#?}"
    );
}

#[tokio::test]
async fn doctor_kms_names_an_expired_key_and_passes_a_healthy_one() {
    let w = world(small(5)).await;
    let (code, findings) = doctor(&w, &["kms"]).await;
    assert_eq!(code, 0, "{findings:#?}");
    assert!(findings.iter().any(|f| {
        f["cause"]
            .as_str()
            .unwrap()
            .contains("KMS etcd encryption is on")
    }));
    w.first_key_version(|v| v.exp = Some(chrono::Utc::now().timestamp() - 3600));
    let (code, findings) = doctor(&w, &["kms"]).await;
    assert_eq!(code, 1);
    let f = findings
        .iter()
        .find(|f| {
            f["cause"]
                .as_str()
                .unwrap()
                .starts_with("KeyExpired: Operation encrypt is not allowed on an expired key")
        })
        .unwrap_or_else(|| panic!("{findings:#?}"));
    assert!(f["remedy"].as_str().unwrap().contains("extend"));
    let off = world(SimOptions {
        kms: false,
        ..small(5)
    })
    .await;
    let (code, findings) = doctor(&off, &["kms"]).await;
    assert_eq!(code, 0);
    assert!(
        findings
            .iter()
            .any(|f| f["cause"] == "KMS etcd encryption is off")
    );
}

#[test]
fn the_twin_lists_its_scenarios_one_per_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kmsctl"))
        .args(["sim", "scenarios"])
        .output()
        .unwrap();
    let names: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        names.len() >= 10 && names.contains(&"healthy".to_string()),
        "{names:?}"
    );
}
