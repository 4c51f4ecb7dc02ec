//! Key versions read through Azure Resource Manager (`Microsoft.KeyVault/vaults/keys` and
//! `.../keys/{key}/versions`), not the vault's data plane: Resource Manager does not go through
//! the vault's firewall or private link, so these reads work from any network, with
//! management-plane read (`Microsoft.KeyVault/vaults/keys/read`, `.../keys/versions/read`).
//! The data plane stays for what only it can do: rotate, set an expiry, disable.

use super::RemoteError;
use super::arm::ArmClient;
use super::keys::{KeyId, KeyVersionInfo};
use serde_json::Value;

const SERVICE: &str = "Azure Resource Manager";

/// Reads one vault's keys through Resource Manager.
#[derive(Clone)]
pub struct KeyReader {
    arm: ArmClient,
    /// `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{vault}`.
    pub vault_id: String,
}

fn time(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    v.as_i64()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
}

/// Resource Manager writes the vault host with `:443` (`https://v.vault.azure.net:443/keys/..`);
/// the key id AKS keeps has no port.
fn without_port(uri: &str) -> String {
    uri.replacen(".vault.azure.net:443/", ".vault.azure.net/", 1)
}

/// A `Microsoft.KeyVault/vaults/keys[/versions]` resource -> what kmsctl knows of a version.
pub fn from_resource(r: &Value) -> Result<KeyVersionInfo, RemoteError> {
    let p = &r["properties"];
    let uri = p["keyUriWithVersion"].as_str().unwrap_or_default();
    let id = KeyId::parse(&without_port(uri)).map_err(|detail| RemoteError::Other {
        service: SERVICE,
        detail: format!("the key resource {}: {detail}", r["id"]),
    })?;
    let a = &p["attributes"];
    Ok(KeyVersionInfo {
        id,
        kty: p["kty"].as_str().map(str::to_string),
        key_ops: p["keyOps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.as_str().map(str::to_string))
            .collect(),
        // A missing field is unknown, not enabled: a check must not call it fine.
        enabled: a["enabled"].as_bool().ok_or_else(|| RemoteError::Other {
            service: SERVICE,
            detail: format!(
                "the key resource {} has no properties.attributes.enabled: whether the version is enabled is unknown",
                r["id"]
            ),
        })?,
        expires_on: time(&a["exp"]),
        not_before: time(&a["nbf"]),
        created_on: time(&a["created"]),
    })
}

/// The Rotate action of a rotation policy, if it has one: (timeAfterCreate, timeBeforeExpiry).
pub fn rotate_trigger(policy: &Value) -> Option<(Option<String>, Option<String>)> {
    policy["lifetimeActions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| {
            a["action"]["type"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case("rotate"))
        })
        .map(|a| {
            let t = &a["trigger"];
            (
                t["timeAfterCreate"].as_str().map(str::to_string),
                t["timeBeforeExpiry"].as_str().map(str::to_string),
            )
        })
}

impl KeyReader {
    pub fn new(arm: ArmClient, vault_id: &str) -> Self {
        KeyReader {
            arm,
            vault_id: vault_id.trim_end_matches('/').to_string(),
        }
    }

    fn key_path(&self, name: &str) -> String {
        format!("{}/keys/{name}", self.vault_id)
    }

    /// All versions of a key, oldest first (disabled ones too), every page.
    pub async fn versions(&self, name: &str) -> Result<Vec<KeyVersionInfo>, RemoteError> {
        let items = self
            .arm
            .list_all(
                &format!("{}/versions", self.key_path(name)),
                &self.arm.api.key_vault,
            )
            .await?;
        let mut out = items
            .iter()
            .map(from_resource)
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|v| v.created_on);
        Ok(out)
    }

    /// One version, with its type and operations.
    pub async fn version(&self, id: &KeyId) -> Result<KeyVersionInfo, RemoteError> {
        let a = self
            .arm
            .get(
                &format!("{}/versions/{}", self.key_path(&id.name), id.version),
                &self.arm.api.key_vault,
            )
            .await?;
        from_resource(&a.body)
    }

    /// The key's Rotate action, if its rotation policy has one (`properties.rotationPolicy` of
    /// the key resource). A key without a policy has only Key Vault's default Notify action,
    /// which rotates nothing.
    pub async fn rotation_trigger(
        &self,
        name: &str,
    ) -> Result<Option<(Option<String>, Option<String>)>, RemoteError> {
        let a = self
            .arm
            .get(&self.key_path(name), &self.arm.api.key_vault)
            .await?;
        Ok(rotate_trigger(&a.body["properties"]["rotationPolicy"]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_version_resource_as_resource_manager_returns_it() {
        // The shape of the REST specs' example (getKey / key versions), ports included.
        let r = json!({
            "id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.KeyVault/vaults/v/keys/k/versions/abc",
            "name": "abc", "type": "Microsoft.KeyVault/vaults/keys/versions",
            "properties": {
                "attributes": { "enabled": false, "created": 1598533051, "updated": 1598533051, "exp": 1700000000, "recoveryLevel": "Purgeable" },
                "kty": "RSA", "keyOps": ["encrypt", "decrypt"],
                "keyUri": "https://v.vault.azure.net:443/keys/k",
                "keyUriWithVersion": "https://v.vault.azure.net:443/keys/k/abc"
            }
        });
        let v = from_resource(&r).unwrap();
        assert_eq!(v.id.to_string(), "https://v.vault.azure.net/keys/k/abc");
        assert!(!v.enabled);
        assert_eq!(v.expires_on.map(|e| e.timestamp()), Some(1700000000));
        assert_eq!(v.not_before, None);
        assert_eq!(v.kty.as_deref(), Some("RSA"));
        assert!(from_resource(&json!({ "properties": {} })).is_err());
        // No `enabled`: unknown, never taken as enabled.
        let mut no_enabled = r.clone();
        no_enabled["properties"]["attributes"]
            .as_object_mut()
            .unwrap()
            .remove("enabled");
        let e = from_resource(&no_enabled).unwrap_err().to_string();
        assert!(e.contains("attributes.enabled"), "{e}");
    }

    #[test]
    fn only_a_rotate_action_counts() {
        let notify = json!({ "lifetimeActions": [{ "trigger": { "timeBeforeExpiry": "P30D" }, "action": { "type": "notify" } }] });
        assert_eq!(rotate_trigger(&notify), None);
        let rotate = json!({ "lifetimeActions": [{ "trigger": { "timeAfterCreate": "P90D" }, "action": { "type": "rotate" } }] });
        assert_eq!(rotate_trigger(&rotate), Some((Some("P90D".into()), None)));
        assert_eq!(rotate_trigger(&Value::Null), None);
    }
}
