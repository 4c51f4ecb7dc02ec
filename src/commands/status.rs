//! `kmsctl status`: what the cluster says about KMS, the key version in use, the vault, and the
//! key ledger's versions that must stay alive. Reads only.

use super::setup;
use crate::azure::keys::KeyId;
use crate::checks::facts;
use crate::cli::TargetArgs;
use crate::exit_codes;
use crate::k8s::ledger;
use crate::output::{Format, print_json};
use serde_json::{Value, json};

pub async fn run(t: TargetArgs, format: Format) -> anyhow::Result<i32> {
    let target = setup::target(&t);
    let ctx = setup::context(&target, t.auth, &t.aks_api_version, true).await?;
    let az = ctx.azure()?;
    let c = facts::cluster(&az.arm, &az.cluster_path, &az.subscription).await?;
    let kms = c.kms().clone();
    let mut key = Value::Null;
    let mut vault = Value::Null;
    if let Some(id) = c.key_id().and_then(|k| KeyId::parse(&k).ok()) {
        // Through Resource Manager: a private vault's data plane is out of an operator's reach.
        let read = match az.key_reader(&id, c.vault_resource_id().as_deref()).await {
            Ok(r) => r.version(&id).await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        key = match read {
            Ok(v) => {
                json!({ "id": v.id.to_string(), "enabled": v.enabled, "expiresOn": v.expires_on, "createdOn": v.created_on, "kty": v.kty })
            }
            Err(e) => json!({ "id": id.to_string(), "error": format!("{e:#}") }),
        };
        let v = facts::vault(
            &az.arm,
            &az.subscription,
            &id,
            c.vault_resource_id().as_deref(),
            None,
        )
        .await;
        vault = match v.resource {
            Some(r) => {
                let p = &r["properties"];
                json!({
                    "id": r["id"], "name": r["name"], "publicNetworkAccess": p["publicNetworkAccess"],
                    "firewallDefaultAction": p["networkAcls"]["defaultAction"], "softDelete": p["enableSoftDelete"],
                    "purgeProtection": p["enablePurgeProtection"], "rbacAuthorization": p["enableRbacAuthorization"], "tenantId": p["tenantId"]
                })
            }
            None => json!({ "error": v.error }),
        };
    }
    // A ledger that cannot be read is reported as such: an empty list would read as "nothing
    // must stay alive".
    let (ledger, ledger_error) = match ledger::load(&ctx.kube).await {
        Ok((l, _)) => (l, None),
        Err(e) => (ledger::Ledger::default(), Some(e.to_string())),
    };
    let alive = alive_versions(
        &ledger,
        c.kms_enabled().then(|| c.key_id()).flatten().as_deref(),
    );
    let this_cluster = c
        .api_server_endpoints()
        .iter()
        .any(|h| h.eq_ignore_ascii_case(&ctx.kube_server_endpoint));
    let doc = json!({
        "cluster": c.resource["name"],
        "resourceGroup": target.resource_group,
        "provisioningState": c.provisioning_state(),
        "kubernetesVersion": c.kubernetes_version(),
        "kmsVersion": c.kms_version(),
        "kmsExperience": if c.uses_platform_managed_rotation() { "platform-managed-rotation" } else { "versioned-key" },
        "identityType": c.identity_type(),
        "kms": {
            "enabled": c.kms_enabled(),
            "keyId": kms["keyId"],
            "keyVaultNetworkAccess": kms["keyVaultNetworkAccess"],
            "keyVaultResourceId": kms["keyVaultResourceId"],
        },
        "key": key,
        "vault": vault,
        "ledger": { "entries": ledger.entries, "mustStayAlive": alive, "error": ledger_error,
                    "unprovenSwitch": ledger.switch.as_ref().filter(|s| s.proven_at.is_none()) },
        "kubeconfig": { "server": ctx.kube_server, "context": ctx.kube_context, "isThisCluster": this_cluster },
    });
    match format {
        Format::Json => print_json(&doc),
        Format::Text | Format::Prometheus | Format::Html => crate::output::out(&render(&doc)),
    }
    Ok(if doc["ledger"]["error"].is_null() && this_cluster {
        exit_codes::OK
    } else {
        exit_codes::FAILED
    })
}

/// The versions that must stay alive, one line each: the ledger's, and the key in use whatever
/// the ledger knows (KMS may have been enabled by hand), however each spells the id.
fn alive_versions(ledger: &ledger::Ledger, in_use: Option<&str>) -> Vec<String> {
    let mut alive: Vec<String> = Vec::new();
    let ids = ledger
        .must_stay_alive()
        .into_iter()
        .map(|e| e.key_id.as_str())
        .chain(in_use);
    for k in ids {
        if !alive.iter().any(|a| ledger::same_key_id(a, k)) {
            alive.push(k.to_string());
        }
    }
    alive
}

fn render(d: &Value) -> String {
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    out.push_str(&format!(
        "cluster:            {} ({})\n",
        s(&d["cluster"]),
        s(&d["provisioningState"])
    ));
    out.push_str(&format!(
        "kubernetes:         {} (KMS {})\n",
        s(&d["kubernetesVersion"]),
        s(&d["kmsVersion"])
    ));
    out.push_str(&format!("kms experience:     {}\n", s(&d["kmsExperience"])));
    out.push_str(&format!("identity:           {}\n", s(&d["identityType"])));
    out.push_str(&format!(
        "kms enabled:        {}\n",
        s(&d["kms"]["enabled"])
    ));
    out.push_str(&format!("key id:             {}\n", s(&d["kms"]["keyId"])));
    out.push_str(&format!(
        "network access:     {}\n",
        s(&d["kms"]["keyVaultNetworkAccess"])
    ));
    out.push_str(&format!(
        "key enabled:        {}   expires: {}\n",
        s(&d["key"]["enabled"]),
        s(&d["key"]["expiresOn"])
    ));
    out.push_str(&format!(
        "vault:              {} public access {}, firewall {}, soft delete {}, purge protection {}\n",
        s(&d["vault"]["name"]),
        s(&d["vault"]["publicNetworkAccess"]),
        s(&d["vault"]["firewallDefaultAction"]),
        s(&d["vault"]["softDelete"]),
        s(&d["vault"]["purgeProtection"])
    ));
    if d["kubeconfig"]["isThisCluster"] != true {
        out.push_str(&format!(
            "WARNING: the kubeconfig context {} (server {}) is not this cluster's API server: the ledger below is another cluster's\n",
            s(&d["kubeconfig"]["context"]),
            s(&d["kubeconfig"]["server"])
        ));
    }
    if let Some(e) = d["ledger"]["error"].as_str() {
        out.push_str(&format!("key ledger:         COULD NOT BE READ: {e}\n"));
    }
    if let Some(sw) = d["ledger"]["unprovenSwitch"].as_object() {
        out.push_str(&format!(
            "unproven switch:    to {} by run {}: finish it with `kmsctl resume --run {}`\n",
            s(&sw["to"]),
            s(&sw["runId"]),
            s(&sw["runId"])
        ));
    }
    out.push_str("key versions that must stay alive (ledger, and the key in use):\n");
    for k in d["ledger"]["mustStayAlive"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push_str(&format!("  {}\n", s(k)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::alive_versions;
    use crate::k8s::ledger::Ledger;

    #[test]
    fn each_version_that_must_stay_alive_is_listed_once() {
        let v1 = "https://kv.vault.azure.net/keys/k/aaa";
        let v2 = "https://kv.vault.azure.net/keys/k/bbb";
        let t = chrono::Utc::now();
        let mut l = Ledger::default();
        l.put_in_service(Some(v1), t);
        l.put_in_service(Some(v2), t);
        // The cluster spells the key in use in another case, with a trailing slash.
        let in_use = "HTTPS://KV.vault.azure.net/keys/K/BBB/";
        assert_eq!(alive_versions(&l, Some(in_use)), [v1, v2]);
        // Enabled by hand: the key in use is listed though the ledger does not know it.
        let v3 = "https://kv.vault.azure.net/keys/k/ccc";
        assert_eq!(alive_versions(&l, Some(v3)), [v1, v2, v3]);
        assert_eq!(
            alive_versions(&Ledger::default(), None),
            Vec::<String>::new()
        );
    }
}
