//! How the KMS plugin reaches the vault, as AKS sets it up (shared/domain.md §2–3): in private
//! mode AKS creates a private endpoint in the node resource group, which needs Key Vault
//! Contributor for the cluster identity, and the vault's connection to it is approved; in public
//! mode the plugin comes over the public network, which a vault with public access disabled or a
//! firewall that denies by default blocks.

use super::resources::ROLE_KV_CONTRIBUTOR;
use super::world::World;
use serde_json::{Value, json};

/// Roles that can create the private link (Key Vault Contributor, Contributor, Owner).
const LINK_ROLES: &[&str] = &[
    ROLE_KV_CONTRIBUTOR,
    "b24988ac-6180-42a0-ab88-20f7382dd24c",
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
];

const PREFIX: &str = "kms-";

fn kms(w: &World) -> &Value {
    w.cluster
        .pointer("/properties/securityProfile/azureKeyVaultKms")
        .unwrap_or(&Value::Null)
}

fn private_mode(w: &World) -> bool {
    kms(w)["enabled"].as_bool() == Some(true)
        && kms(w)["keyVaultNetworkAccess"].as_str() == Some("Private")
        && kms(w)["keyVaultResourceId"]
            .as_str()
            .is_some_and(|id| id.eq_ignore_ascii_case(&w.ids.vault_id()))
}

fn principal(w: &World) -> String {
    w.cluster["identity"]["userAssignedIdentities"]
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|v| v["principalId"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn may_create_link(w: &World) -> bool {
    let p = principal(w);
    let vault = w.ids.vault_id().to_ascii_lowercase();
    w.role_assignments.iter().any(|r| {
        let r = &r["properties"];
        r["principalId"].as_str() == Some(p.as_str())
            && r["roleDefinitionId"]
                .as_str()
                .is_some_and(|d| LINK_ROLES.iter().any(|g| d.ends_with(g)))
            && r["scope"]
                .as_str()
                .is_some_and(|s| vault.starts_with(&s.to_ascii_lowercase()))
    })
}

fn connections(w: &mut World) -> &mut Vec<Value> {
    let c = &mut w.vault["properties"]["privateEndpointConnections"];
    if !c.is_array() {
        *c = json!([]);
    }
    c.as_array_mut().expect("an array")
}

/// After a cluster operation: AKS creates its private endpoint when KMS goes private with this
/// vault, and removes it when KMS uses the vault in public mode again. Disabling KMS keeps it:
/// Secrets still under the key must stay readable until they are rewritten. Err: why the
/// operation fails (the identity may not create the link).
pub fn reconcile(w: &mut World) -> Result<(), String> {
    let ours = |c: &Value| c["name"].as_str().is_some_and(|n| n.starts_with(PREFIX));
    if !private_mode(w) {
        if kms(w)["enabled"].as_bool() == Some(true) {
            connections(w).retain(|c| !ours(c));
        }
        return Ok(());
    }
    if connections(w).iter().any(ours) {
        return Ok(());
    }
    if !may_create_link(w) {
        return Err(format!(
            "Failed to create the private endpoint for Azure Key Vault KMS: the cluster identity {} does not have authorization to perform action 'Microsoft.KeyVault/vaults/privateEndpointConnectionsApproval/action' over scope '{}'. Assign it the Key Vault Contributor role.",
            principal(w),
            w.ids.vault_id()
        ));
    }
    let name = format!("{PREFIX}{}", uuid::Uuid::new_v4().simple());
    let node_rg = w.cluster["properties"]["nodeResourceGroup"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let vault_id = w.ids.vault_id();
    let endpoint = format!(
        "/subscriptions/{}/resourceGroups/{node_rg}/providers/Microsoft.Network/privateEndpoints/{name}",
        w.ids.subscription
    );
    connections(w).push(json!({
        "id": format!("{vault_id}/privateEndpointConnections/{name}"),
        "name": name,
        "type": "Microsoft.KeyVault/vaults/privateEndpointConnections",
        "etag": "",
        "properties": {
            "privateEndpoint": { "id": endpoint },
            "privateLinkServiceConnectionState": { "status": "Approved", "description": "Auto-approved by Azure Kubernetes Service", "actionsRequired": "None" },
            "provisioningState": "Succeeded"
        }
    }));
    Ok(())
}

/// The vault has an approved private endpoint connection (AKS's, or one made by hand).
pub(super) fn approved_connection(w: &World) -> bool {
    w.vault["properties"]["privateEndpointConnections"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| {
            c["properties"]["privateLinkServiceConnectionState"]["status"].as_str()
                == Some("Approved")
        })
}

fn private_unreachable() -> String {
    "failed to reach key vault through its private endpoint: no approved private endpoint connection".to_string()
}

/// Why the plugin's traffic over the public network is refused, if it is.
fn public_blocked(w: &World) -> Option<String> {
    let p = &w.vault["properties"];
    let public = p["publicNetworkAccess"].as_str().unwrap_or("Enabled");
    let default_action = p["networkAcls"]["defaultAction"]
        .as_str()
        .unwrap_or("Allow");
    (public != "Enabled" || default_action != "Allow").then(|| {
        format!(
            "Forbidden: ForbiddenByConnection: Public network access is disabled and request is not from a trusted service nor via an approved private link (vault {}: publicNetworkAccess {public}, default action {default_action})",
            w.ids.vault_host()
        )
    })
}

/// Why the KMS plugin cannot reach the vault now, if it cannot.
pub fn unreachable(w: &World) -> Option<String> {
    if kms(w)["enabled"].as_bool() != Some(true) {
        return None;
    }
    if private_mode(w) {
        return (!approved_connection(w)).then(private_unreachable);
    }
    public_blocked(w)
}

/// Why the plugin cannot reach the vault to decrypt what is stored under a KMS key, if it
/// cannot. With KMS disabled the API server still decrypts through its plugin: over the private
/// endpoint AKS left in place, if there is one, else over the public network.
pub fn unreachable_for_decrypt(w: &World) -> Option<String> {
    if private_mode(w) || (kms(w)["enabled"].as_bool() != Some(true) && approved_connection(w)) {
        return (!approved_connection(w)).then(private_unreachable);
    }
    public_blocked(w)
}
