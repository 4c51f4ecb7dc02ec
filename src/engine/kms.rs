//! The cluster side of a KMS change: the desired `securityProfile.azureKeyVaultKms`, applied by
//! `cluster::update` (every other field kept byte for byte), and what the cluster then reports.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredKms {
    pub enabled: bool,
    pub key_id: Option<String>,
    pub network_access: Option<String>,
    pub vault_resource_id: Option<String>,
}

fn kms(resource: &Value) -> &Value {
    resource
        .pointer("/properties/securityProfile/azureKeyVaultKms")
        .unwrap_or(&Value::Null)
}

impl DesiredKms {
    /// True when the resource already says what is desired.
    pub fn matches(&self, resource: &Value) -> bool {
        self.differences(resource).is_empty()
    }

    pub fn differences(&self, resource: &Value) -> Vec<String> {
        let k = kms(resource);
        let mut out = Vec::new();
        let enabled = k["enabled"].as_bool() == Some(true);
        if enabled != self.enabled {
            out.push(format!("enabled is {enabled}, want {}", self.enabled));
        }
        if !self.enabled {
            return out;
        }
        let eq = |field: &str, want: &Option<String>| {
            let have = k[field].as_str().unwrap_or_default();
            let want = want.as_deref().unwrap_or_default();
            (!have.eq_ignore_ascii_case(want))
                .then(|| format!("{field} is '{have}', want '{want}'"))
        };
        out.extend(eq("keyId", &self.key_id));
        out.extend(eq("keyVaultNetworkAccess", &self.network_access));
        if self.network_access.as_deref() == Some("Private") {
            out.extend(eq("keyVaultResourceId", &self.vault_resource_id));
        }
        out
    }

    /// Whether the API server writes with the same key under both (KMS off in both, or the same
    /// key version; ARM compares ids case-insensitively).
    pub fn same_write_key(&self, other: &DesiredKms) -> bool {
        self.enabled == other.enabled
            && (!self.enabled
                || self.key_id.as_deref().map(str::to_ascii_lowercase)
                    == other.key_id.as_deref().map(str::to_ascii_lowercase))
    }

    /// Changes only `azureKeyVaultKms` in a whole resource, as `az aks update` does.
    pub fn apply_to(&self, resource: &mut Value) {
        if !resource["properties"]["securityProfile"].is_object() {
            resource["properties"]["securityProfile"] = json!({});
        }
        let target = &mut resource["properties"]["securityProfile"]["azureKeyVaultKms"];
        if !target.is_object() {
            *target = json!({});
        }
        target["enabled"] = json!(self.enabled);
        if !self.enabled {
            return;
        }
        target["keyId"] = json!(self.key_id);
        target["keyVaultNetworkAccess"] = json!(
            self.network_access
                .clone()
                .unwrap_or_else(|| "Public".into())
        );
        // Public mode: the field is sent back as read ("" stays ""); only a leftover vault id
        // from private mode is cleared, since public mode takes none.
        match self.network_access.as_deref() {
            Some("Private") => target["keyVaultResourceId"] = json!(self.vault_resource_id),
            _ => {
                if target["keyVaultResourceId"]
                    .as_str()
                    .is_some_and(|v| !v.is_empty())
                {
                    target["keyVaultResourceId"] = json!("");
                }
            }
        }
    }
}

impl super::cluster::ClusterChange for DesiredKms {
    fn matches(&self, resource: &Value) -> bool {
        DesiredKms::matches(self, resource)
    }
    fn apply_to(&self, resource: &mut Value) {
        DesiredKms::apply_to(self, resource)
    }
    fn what(&self) -> &'static str {
        "securityProfile.azureKeyVaultKms"
    }
    fn why(&self) -> String {
        "AKS restarts the API servers with the new KMS configuration; only then can they be shown writing with it".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_changes_only_kms_and_matches_after() {
        let mut r = json!({ "properties": { "x": { "y": 1 }, "securityProfile": { "defender": { "a": 1 }, "azureKeyVaultKms": { "enabled": false, "future": 7 } } }, "z": [1] });
        let d = DesiredKms {
            enabled: true,
            key_id: Some("https://v.vault.azure.net/keys/k/1".into()),
            network_access: Some("Public".into()),
            vault_resource_id: None,
        };
        assert!(!d.matches(&r));
        d.apply_to(&mut r);
        assert!(d.matches(&r));
        assert_eq!(r["properties"]["securityProfile"]["defender"]["a"], 1);
        assert_eq!(
            r["properties"]["securityProfile"]["azureKeyVaultKms"]["future"],
            7
        );
        assert_eq!(r["z"][0], 1);
        let off = DesiredKms {
            enabled: false,
            key_id: None,
            network_access: None,
            vault_resource_id: None,
        };
        assert_eq!(
            off.differences(&r),
            vec!["enabled is true, want false".to_string()]
        );
    }
}
