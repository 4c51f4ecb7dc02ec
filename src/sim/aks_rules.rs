//! AKS's validation of a managedCluster PUT, as far as KMS and upgrades are concerned
//! (shared/domain.md §2–3). Pure: the current resource, the desired one, and what the twin knows
//! about the vault in, an ARM-shaped refusal out.

use super::world::{minor_of, parse_kid};
use serde_json::Value;

#[derive(Debug, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn refuse(status: u16, code: &'static str, message: impl Into<String>) -> Result<(), Refusal> {
    Err(Refusal {
        status,
        code,
        message: message.into(),
    })
}

/// The Kubernetes versions the twin's region offers, one patch per minor.
pub const VERSIONS: &[&str] = &[
    "1.25.16", "1.26.15", "1.27.16", "1.28.15", "1.29.15", "1.30.14", "1.31.13", "1.32.9",
    "1.33.5", "1.34.1", "1.35.0",
];

/// The full version a requested `1.x` or `1.x.y` resolves to.
pub fn resolve_version(requested: &str) -> Option<String> {
    let want = minor_of(requested)?;
    let known = VERSIONS.iter().find(|v| minor_of(v) == Some(want))?;
    if requested.split('.').count() >= 3 {
        Some(requested.to_string())
    } else {
        Some(known.to_string())
    }
}

pub fn available_upgrades(current: &str) -> Vec<String> {
    let Some((maj, min)) = minor_of(current) else {
        return vec![];
    };
    VERSIONS
        .iter()
        .filter(|v| minor_of(v) == Some((maj, min + 1)))
        .map(|v| v.to_string())
        .collect()
}

/// What the twin knows about the world beyond the two resources.
pub struct Facts<'a> {
    pub vault_host: &'a str,
    pub vault_id: &'a str,
    pub key_exists: &'a dyn Fn(&str, &str) -> bool,
    /// The identity may encrypt and decrypt with keys of the vault (policy or role).
    pub identity_has_crypto_access: &'a dyn Fn(&str) -> bool,
}

fn kms(resource: &Value) -> &Value {
    resource
        .pointer("/properties/securityProfile/azureKeyVaultKms")
        .unwrap_or(&Value::Null)
}

fn enabled(kms: &Value) -> bool {
    kms["enabled"].as_bool() == Some(true)
}

fn key_host(key_id: &str) -> String {
    key_id
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

pub fn validate(current: &Value, desired: &Value, facts: &Facts) -> Result<(), Refusal> {
    validate_version(current, desired)?;
    validate_kms(current, desired, facts)
}

fn validate_version(current: &Value, desired: &Value) -> Result<(), Refusal> {
    let cur = current["properties"]["currentKubernetesVersion"]
        .as_str()
        .unwrap_or_default();
    let Some(want) = desired["properties"]["kubernetesVersion"].as_str() else {
        return Ok(());
    };
    let (Some(c), Some(w)) = (minor_of(cur), minor_of(want)) else {
        return refuse(
            400,
            "InvalidParameter",
            format!("The value of parameter kubernetesVersion is invalid: {want}."),
        );
    };
    if resolve_version(want).is_none() {
        return refuse(
            400,
            "K8sVersionNotSupported",
            format!(
                "Version {want} is not supported in this region. Please use [az aks get-versions] command to get the supported version list in this region."
            ),
        );
    }
    if w < c {
        return refuse(
            400,
            "NotAllowedK8sVersionDowngrading",
            format!("Downgrading Kubernetes version {cur} to {want} is not allowed."),
        );
    }
    if w.0 == c.0 && w.1 > c.1 + 1 {
        return refuse(
            400,
            "OperationNotAllowed",
            format!(
                "Upgrading Kubernetes version {cur} to {want} is not allowed. Available upgrades: [{}]. Please see https://aka.ms/aks-supported-k8s-ver for version details.",
                available_upgrades(cur).join(" ")
            ),
        );
    }
    let kms_on = enabled(kms(current)) || enabled(kms(desired));
    if kms_on && c < (1, 27) && w >= (1, 27) {
        return refuse(
            400,
            "OperationNotAllowed",
            format!(
                "Upgrading Kubernetes version {cur} to {want} is not allowed for a cluster with Azure Key Vault KMS enabled below 1.27 (KMS v1). Disable KMS, re-encrypt all secrets, upgrade, then enable KMS again (KMS v2)."
            ),
        );
    }
    Ok(())
}

fn validate_kms(current: &Value, desired: &Value, facts: &Facts) -> Result<(), Refusal> {
    let want = kms(desired);
    if !enabled(want) {
        return Ok(());
    }
    let identity_type = desired["identity"]["type"].as_str().unwrap_or("None");
    if !identity_type.contains("UserAssigned") {
        return refuse(
            400,
            "BadRequest",
            "Azure Key Vault KMS requires a user-assigned managed identity: KMS etcd encryption doesn't work with a system-assigned managed identity.",
        );
    }
    let key_id = want["keyId"].as_str().unwrap_or_default();
    let versioned = key_id.starts_with("https://")
        && key_id["https://".len()..].split('/').count() == 4
        && key_id.split('/').nth(3) == Some("keys");
    if !versioned {
        return refuse(
            400,
            "BadRequest",
            format!(
                "KeyId '{key_id}' is not a valid versioned Azure Key Vault key identifier (https://<vault>.vault.azure.net/keys/<name>/<version>)."
            ),
        );
    }
    let access = want["keyVaultNetworkAccess"].as_str().unwrap_or_default();
    let resource_id = want["keyVaultResourceId"].as_str().unwrap_or_default();
    match access {
        "" => {
            return refuse(
                400,
                "BadRequest",
                "KeyVault network access is unspecified for Azure Key Vault KMS.",
            );
        }
        "Private" if resource_id.is_empty() => {
            return refuse(
                400,
                "BadRequest",
                "KeyVault resource ID is empty when KeyVault network access is Private.",
            );
        }
        "Public" if !resource_id.is_empty() => {
            return refuse(
                400,
                "BadRequest",
                "KeyVault resource ID must be empty when KeyVault network access is Public.",
            );
        }
        "Public" | "Private" => {}
        other => {
            return refuse(
                400,
                "BadRequest",
                format!("KeyVault network access '{other}' is invalid: use Public or Private."),
            );
        }
    }
    if access == "Private"
        && desired
            .pointer("/properties/apiServerAccessProfile/enableVnetIntegration")
            .and_then(Value::as_bool)
            != Some(true)
    {
        return refuse(
            400,
            "BadRequest",
            "Azure Key Vault KMS with a private key vault requires API Server VNet Integration; Konnectivity is not supported for private key vaults.",
        );
    }
    let have = kms(current);
    if enabled(have) {
        let same_vault = key_host(have["keyId"].as_str().unwrap_or_default()) == key_host(key_id);
        let old_access = have["keyVaultNetworkAccess"].as_str().unwrap_or("Public");
        if same_vault && old_access != access {
            return refuse(
                400,
                "OperationNotAllowed",
                format!(
                    "Changing the key vault network access of Azure Key Vault KMS from {old_access} to {access} is not allowed while KMS is enabled. Disable KMS, re-encrypt all secrets, change the key vault, then enable KMS with the new network access."
                ),
            );
        }
    }
    if key_host(key_id) == facts.vault_host {
        if access == "Private" && !resource_id.eq_ignore_ascii_case(facts.vault_id) {
            return refuse(
                400,
                "BadRequest",
                format!(
                    "KeyVault resource ID '{resource_id}' does not match the vault of key '{key_id}'."
                ),
            );
        }
        let (name, version) = parse_kid(key_id, facts.vault_host).unwrap_or_default();
        // A customer-managed key id names its version.
        if version.is_empty() || !(facts.key_exists)(&name, &version) {
            return refuse(
                400,
                "KeyVaultKeyNotFound",
                format!(
                    "The key '{key_id}' was not found in key vault '{}'.",
                    facts.vault_host
                ),
            );
        }
        let principal = desired["identity"]["userAssignedIdentities"]
            .as_object()
            .and_then(|m| m.values().next())
            .and_then(|v| v["principalId"].as_str())
            .unwrap_or_default();
        if access == "Public" && !(facts.identity_has_crypto_access)(principal) {
            return refuse(
                400,
                "AzureKeyVaultKmsValidateIdentityPermissionCustomerError",
                format!(
                    "The identity does not have keys encrypt/decrypt permission on key vault https://{}/",
                    facts.vault_host
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(version: &str, kms: Value) -> Value {
        json!({ "identity": { "type": "UserAssigned", "userAssignedIdentities": { "/id": { "principalId": "p" } } },
                "properties": { "kubernetesVersion": version, "currentKubernetesVersion": version,
                                "apiServerAccessProfile": { "enableVnetIntegration": false },
                                "securityProfile": { "azureKeyVaultKms": kms } } })
    }

    fn check(cur: &Value, want: &Value) -> Result<(), Refusal> {
        let k = |_: &str, _: &str| true;
        let a = |_: &str| true;
        validate(
            cur,
            want,
            &Facts {
                vault_host: "kv.vault.azure.net",
                vault_id: "/v",
                key_exists: &k,
                identity_has_crypto_access: &a,
            },
        )
    }

    #[test]
    fn version_rules() {
        let off = json!({ "enabled": false });
        assert!(
            check(
                &cluster("1.28.15", off.clone()),
                &cluster("1.29", off.clone())
            )
            .is_ok()
        );
        let e = check(
            &cluster("1.28.15", off.clone()),
            &cluster("1.30", off.clone()),
        )
        .unwrap_err();
        assert!(
            e.message.contains("Available upgrades: [1.29.15]"),
            "{}",
            e.message
        );
        let on = json!({ "enabled": true, "keyId": "https://kv.vault.azure.net/keys/k/v1", "keyVaultNetworkAccess": "Public" });
        assert_eq!(
            check(&cluster("1.26.15", on.clone()), &cluster("1.27", on))
                .unwrap_err()
                .code,
            "OperationNotAllowed"
        );
    }

    #[test]
    fn kms_rules() {
        let public = json!({ "enabled": true, "keyId": "https://kv.vault.azure.net/keys/k/v1", "keyVaultNetworkAccess": "Public" });
        let private = json!({ "enabled": true, "keyId": "https://kv.vault.azure.net/keys/k/v1", "keyVaultNetworkAccess": "Private", "keyVaultResourceId": "/v" });
        let e = check(
            &cluster("1.33.5", public.clone()),
            &cluster("1.33.5", private.clone()),
        )
        .unwrap_err();
        assert!(e.message.contains("VNet Integration"), "{}", e.message);
        let mut vnet = cluster("1.33.5", private);
        vnet["properties"]["apiServerAccessProfile"]["enableVnetIntegration"] = json!(true);
        let mut cur = cluster("1.33.5", public.clone());
        cur["properties"]["apiServerAccessProfile"]["enableVnetIntegration"] = json!(true);
        assert_eq!(check(&cur, &vnet).unwrap_err().code, "OperationNotAllowed");
        let no_access = json!({ "enabled": true, "keyId": "https://kv.vault.azure.net/keys/k/v1" });
        assert!(
            check(&cur, &cluster("1.33.5", no_access))
                .unwrap_err()
                .message
                .contains("unspecified")
        );
        let mut system = cluster("1.33.5", public);
        system["identity"] = json!({ "type": "SystemAssigned" });
        assert!(
            check(&cur, &system)
                .unwrap_err()
                .message
                .contains("system-assigned")
        );
    }
}
