//! The twin's answers carry the fields, names and types of the real services' example payloads
//! (shared/fixtures/arm/, present in CI beside the checkout).

mod common;

use common::{small, world};
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/arm");
    dir.is_dir().then_some(dir)
}

fn example(dir: &std::path::Path, file: &str) -> Value {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
    v["responses"]["200"]["body"].clone()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every field of `example` at these paths exists in `twin` with the same JSON type.
fn same_shape(example: &Value, twin: &Value, paths: &[&str], what: &str) {
    for p in paths {
        let e = example
            .pointer(p)
            .unwrap_or_else(|| panic!("{what}: the example has no {p}"));
        let t = twin
            .pointer(p)
            .unwrap_or_else(|| panic!("{what}: the twin has no {p}"));
        assert_eq!(kind(e), kind(t), "{what}{p}: example {e} vs twin {t}");
    }
}

#[tokio::test]
async fn twin_answers_match_the_real_examples() {
    let Some(dir) = fixtures() else {
        eprintln!("shared/fixtures/arm is absent: nothing to compare against");
        return;
    };
    let w = world(small(5)).await;
    let doc = w.inspect();
    let cluster = example(&dir, "containerservice__ManagedClustersGet.json");
    same_shape(
        &cluster,
        &doc["cluster"],
        &[
            "/id",
            "/name",
            "/type",
            "/location",
            "/eTag",
            "/tags",
            "/properties/provisioningState",
            "/properties/kubernetesVersion",
            "/properties/currentKubernetesVersion",
            "/properties/dnsPrefix",
            "/properties/fqdn",
            "/properties/azurePortalFQDN",
            "/properties/agentPoolProfiles/0/name",
            "/properties/agentPoolProfiles/0/count",
            "/properties/agentPoolProfiles/0/orchestratorVersion",
            "/properties/agentPoolProfiles/0/currentOrchestratorVersion",
            "/properties/agentPoolProfiles/0/provisioningState",
            "/properties/enableRBAC",
            "/properties/maxAgentPools",
            "/properties/nodeResourceGroup",
            "/properties/networkProfile/networkPlugin",
        ],
        "managedCluster",
    );
    let vault = example(&dir, "keyvault__updateVault.json");
    same_shape(
        &vault,
        &doc["vault"],
        &[
            "/id",
            "/name",
            "/type",
            "/location",
            "/properties/tenantId",
            "/properties/sku/name",
            "/properties/sku/family",
            "/properties/accessPolicies/0/objectId",
            "/properties/accessPolicies/0/tenantId",
            "/properties/accessPolicies/0/permissions/keys",
            "/properties/networkAcls/defaultAction",
            "/properties/networkAcls/bypass",
            "/properties/publicNetworkAccess",
            "/properties/vaultUri",
            "/properties/provisioningState",
            "/properties/enabledForDeployment",
        ],
        "vault",
    );
    // Key Vault and the upgrade profile, fetched as a client would (Entra token, real host names).
    let ids = w.twin.ids();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(w.twin.ca_pem.as_bytes()).unwrap()])
        .resolve("login.microsoftonline.com", w.twin.addr)
        .resolve("management.azure.com", w.twin.addr)
        .resolve(&ids.vault_host(), w.twin.addr)
        .build()
        .unwrap();
    let token = |scope: &'static str| {
        let (http, ids) = (http.clone(), ids.clone());
        async move {
            let form: String = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("grant_type", "client_credentials"),
                    ("client_id", ids.client_id.as_str()),
                    ("client_secret", ids.client_secret.as_str()),
                    ("scope", scope),
                ])
                .finish();
            let url = format!(
                "https://login.microsoftonline.com/{}/oauth2/v2.0/token",
                ids.tenant
            );
            let v: Value = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["access_token"].as_str().unwrap().to_string()
        }
    };
    let kv_token = token("https://vault.azure.net/.default").await;
    let get = |url: String, token: String| {
        let http = http.clone();
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let twin_key = get(
        format!(
            "https://{}/keys/kms-key?api-version=2025-07-01",
            ids.vault_host()
        ),
        kv_token.clone(),
    )
    .await;
    let key = example(&dir, "keyvault__GetKey-example.json");
    same_shape(
        &key,
        &twin_key,
        &[
            "/key/kid",
            "/key/kty",
            "/key/key_ops",
            "/key/n",
            "/key/e",
            "/attributes/enabled",
            "/attributes/created",
            "/attributes/updated",
            "/attributes/recoveryLevel",
            "/tags",
        ],
        "key",
    );
    let versions = get(
        format!(
            "https://{}/keys/kms-key/versions?api-version=2025-07-01",
            ids.vault_host()
        ),
        kv_token,
    )
    .await;
    same_shape(
        &example(&dir, "keyvault__GetKeyVersions-example.json"),
        &versions,
        &[
            "/value/0/kid",
            "/value/0/attributes/enabled",
            "/value/0/attributes/created",
        ],
        "key versions",
    );
    let arm_token = token("https://management.azure.com/.default").await;
    let twin_profile = get(
        format!(
            "https://management.azure.com{}/upgradeProfiles/default?api-version=2025-10-01",
            ids.cluster_id()
        ),
        arm_token.clone(),
    )
    .await;
    same_shape(
        &example(
            &dir,
            "containerservice__ManagedClustersGetUpgradeProfile.json",
        ),
        &twin_profile,
        &[
            "/id",
            "/name",
            "/type",
            "/properties/controlPlaneProfile/kubernetesVersion",
            "/properties/controlPlaneProfile/osType",
            "/properties/controlPlaneProfile/upgrades",
            "/properties/agentPoolProfiles/0/kubernetesVersion",
        ],
        "upgrade profile",
    );
    let scope = ids.vault_id();
    let ras = get(format!("https://management.azure.com{scope}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01"), arm_token).await;
    same_shape(
        &example(&dir, "authorization__RoleAssignments_ListForScope.json"),
        &ras,
        &[
            "/value/0/id",
            "/value/0/name",
            "/value/0/type",
            "/value/0/properties/roleDefinitionId",
            "/value/0/properties/principalId",
            "/value/0/properties/principalType",
            "/value/0/properties/scope",
        ],
        "role assignments",
    );
}
