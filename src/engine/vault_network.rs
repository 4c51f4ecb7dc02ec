//! The vault side of a mode change: the key's vault gets the network access KMS's mode needs,
//! and after AKS enables private mode, the private endpoint it creates is checked.

use super::StepError;
use super::context::Context;
use super::state::RunState;
use super::steps::{cluster, kms_of};
use serde_json::{Value, json};

/// What the vault must say for a mode: (publicNetworkAccess, firewall defaultAction). Private
/// closes the vault as `az keyvault update --public-network-access Disabled --default-action
/// Deny` does; public mode supports no firewall at all (domain.md §3), so it opens it.
fn wanted(private: bool) -> (&'static str, &'static str) {
    if private {
        ("Disabled", "Deny")
    } else {
        ("Enabled", "Allow")
    }
}

fn network_of(vault: &Value) -> (String, String) {
    let p = &vault["properties"];
    (
        p["publicNetworkAccess"]
            .as_str()
            .unwrap_or("Enabled")
            .to_string(),
        p["networkAcls"]["defaultAction"]
            .as_str()
            .unwrap_or("Allow")
            .to_string(),
    )
}

fn host(url: &str) -> String {
    crate::k8s::client::server_host(url).to_ascii_lowercase()
}

pub async fn set_vault_network(ctx: &Context, state: &RunState) -> Result<Value, StepError> {
    let az = ctx.azure()?;
    let vault_id = state.key_vault_id.clone().ok_or_else(|| {
        StepError::Failed(anyhow::anyhow!(
            "set-vault-network needs the key's vault, which preflight did not find"
        ))
    })?;
    let private = state.network_access.as_deref() == Some("Private");
    let (public, default_action) = wanted(private);
    let api = &az.arm.api.key_vault;
    let vault = az.arm.get(&vault_id, api).await?.body;
    let vault_host = host(vault["properties"]["vaultUri"].as_str().unwrap_or_default());
    // Closing the vault while KMS still reaches it over the public network would cut the KMS
    // plugin off: no Secret could be written, nor read once its key is out of the cache.
    let kms = kms_of(&cluster(az).await?);
    let kms_uses_vault = kms["enabled"].as_bool() == Some(true)
        && host(kms["keyId"].as_str().unwrap_or_default()) == vault_host;
    let kms_mode = kms["keyVaultNetworkAccess"].as_str().unwrap_or("Public");
    if private && kms_uses_vault && kms_mode.eq_ignore_ascii_case("Public") {
        return Err(StepError::Refused(format!(
            "KMS is enabled in public mode with vault {vault_id}: closing its public access would cut the KMS plugin off. Nothing was changed; disable KMS first (this playbook's update-kms enabled: false, prove-key-switch and reencrypt come before set-vault-network)"
        )));
    }
    // With KMS off, Secrets not yet rewritten are still decrypted through the plugin's old
    // (public) path: the vault stays open until the ledger shows them re-encrypted away.
    if private {
        let (l, _) = crate::k8s::ledger::load(&ctx.kube).await?;
        let pending: Vec<&str> = l
            .entries
            .iter()
            .filter(|e| {
                e.out_of_service_since.is_some()
                    && e.reencrypted_away_at.is_none()
                    && e.retired_at.is_none()
                    && host(&e.key_id) == vault_host
            })
            .map(|e| e.key_id.as_str())
            .collect();
        if !pending.is_empty() && kms_mode.eq_ignore_ascii_case("Public") {
            return Err(StepError::Refused(format!(
                "Secrets may still be encrypted with {} (the key ledger shows no verified re-encryption away from it), and KMS reached the vault publicly: closing it now could leave them unreadable. Nothing was changed; re-encrypt first (the reencrypt step), then run `kmsctl resume`",
                pending.join(", ")
            )));
        }
    }
    let before = network_of(&vault);
    let mut out = json!({
        "vault": vault_id,
        "before": { "publicNetworkAccess": before.0, "defaultAction": before.1 },
        "publicNetworkAccess": public,
        "defaultAction": default_action,
    });
    if before.0.eq_ignore_ascii_case(public) && before.1.eq_ignore_ascii_case(default_action) {
        out["changed"] = json!(false);
        return Ok(out);
    }
    // The firewall's rules (IP and virtual network rules, bypass) are sent back as read: only
    // the default action changes.
    let mut acls = vault["properties"]["networkAcls"].clone();
    if !acls.is_object() {
        acls = json!({});
    }
    acls["defaultAction"] = json!(default_action);
    let patch = json!({ "properties": { "publicNetworkAccess": public, "networkAcls": acls } });
    az.arm.patch(&vault_id, api, &patch).await?;
    let after = network_of(&az.arm.get(&vault_id, api).await?.body);
    if !(after.0.eq_ignore_ascii_case(public) && after.1.eq_ignore_ascii_case(default_action)) {
        return Err(StepError::Verification(format!(
            "the vault says publicNetworkAccess {} with default action {} after kmsctl asked for {public} and {default_action}",
            after.0, after.1
        )));
    }
    out["changed"] = json!(true);
    Ok(out)
}

/// After AKS enabled private mode: the vault has an approved private endpoint connection from
/// the cluster's node resource group (where AKS creates it); without one the KMS plugin cannot
/// reach the vault.
pub async fn check_private_endpoint(
    az: &super::context::Azure,
    cluster: &Value,
    vault_id: &str,
) -> Result<Value, StepError> {
    let node_rg = cluster["properties"]["nodeResourceGroup"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let vault = az.arm.get(vault_id, &az.arm.api.key_vault).await?.body;
    let connections = vault["properties"]["privateEndpointConnections"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let from_cluster: Vec<&Value> = connections
        .iter()
        .filter(|c| {
            let pe = c["properties"]["privateEndpoint"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            pe.contains(&format!("/resourcegroups/{node_rg}/"))
        })
        .collect();
    let status = |c: &Value| {
        c["properties"]["privateLinkServiceConnectionState"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    if let Some(c) = from_cluster
        .iter()
        .find(|c| status(c).eq_ignore_ascii_case("Approved"))
    {
        return Ok(json!({
            "privateEndpoint": c["properties"]["privateEndpoint"]["id"],
            "status": "Approved",
        }));
    }
    let why = match from_cluster.first() {
        Some(c) => format!(
            "its private endpoint connection {} is {}: approve it (az network private-endpoint-connection approve --id {})",
            c["name"].as_str().unwrap_or_default(),
            status(c),
            c["id"].as_str().unwrap_or_default()
        ),
        None => format!(
            "it has no private endpoint connection from the cluster's node resource group {node_rg}: check that the cluster identity has Key Vault Contributor on the vault, then run `kmsctl resume`"
        ),
    };
    Err(StepError::Verification(format!(
        "AKS reports private mode, but the KMS plugin cannot reach vault {vault_id}: {why}"
    )))
}
