//! The cluster side of a KMS change: the desired `securityProfile.azureKeyVaultKms`, applying it
//! by GET -> change that one object -> PUT with If-Match (every other field kept byte for byte),
//! following the operation, and verifying what the cluster then reports.

use crate::azure::RemoteError;
use crate::azure::arm::ArmClient;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

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

fn terminal(state: &str) -> bool {
    matches!(state, "Succeeded" | "Failed" | "Canceled")
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("the cluster update operation ended {status}: {error}")]
    OperationFailed { status: String, error: String },
    #[error(
        "the cluster kept changing under kmsctl (412 PreconditionFailed {0} times): someone else is updating it; try again later"
    )]
    KeptChanging(u32),
    #[error(
        "the cluster stayed busy with other operations for {0} minutes; nothing was changed by kmsctl. Check `az aks show --query provisioningState` and run `kmsctl resume` once it is Succeeded"
    )]
    Busy(u64),
}

/// What happened, for the journal and the user.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateReport {
    pub changed: bool,
    pub replans: u32,
    pub waited_for_other_operations: u32,
}

/// Brings the cluster to `desired`. Idempotent: an already-matching Succeeded cluster is left
/// alone; a running operation is waited for; a 412 (someone changed the cluster since it was read)
/// is re-read and re-planned, never overwritten.
pub async fn update(
    arm: &ArmClient,
    path: &str,
    desired: &DesiredKms,
    mut on_status: impl FnMut(&str),
) -> Result<UpdateReport, UpdateError> {
    let mut report = UpdateReport::default();
    const MAX_REPLANS: u32 = 5;
    let began = std::time::Instant::now();
    loop {
        if began.elapsed() >= crate::azure::arm::OPERATION_DEADLINE {
            return Err(UpdateError::Busy(
                crate::azure::arm::OPERATION_DEADLINE.as_secs() / 60,
            ));
        }
        let current = arm.get(path, &arm.api.aks).await?;
        let state = current.body["properties"]["provisioningState"]
            .as_str()
            .unwrap_or("Unknown")
            .to_string();
        if !terminal(&state) {
            on_status(&format!(
                "waiting for the cluster's running operation ({state})"
            ));
            report.waited_for_other_operations += 1;
            tokio::time::sleep(
                current
                    .retry_after
                    .unwrap_or(Duration::from_secs(5))
                    .max(Duration::from_secs(1)),
            )
            .await;
            continue;
        }
        if state == "Succeeded" && desired.matches(&current.body) {
            return Ok(report);
        }
        let mut body = current.body.clone();
        desired.apply_to(&mut body);
        let etag = current.etag.clone().unwrap_or_else(|| "*".into());
        on_status("updating securityProfile.azureKeyVaultKms");
        let started = match arm.put_if_match(path, &arm.api.aks, &body, &etag).await {
            Ok(a) => a,
            Err(e) if e.status() == Some(412) && report.replans < MAX_REPLANS => {
                report.replans += 1;
                tracing::warn!(
                    "the cluster changed since it was read (412 PreconditionFailed): re-reading and re-planning"
                );
                on_status(
                    "the cluster changed since it was read (412): re-reading and re-planning",
                );
                continue;
            }
            Err(e) if e.status() == Some(412) => {
                return Err(UpdateError::KeptChanging(report.replans));
            }
            Err(e) if e.status() == Some(409) => {
                on_status("another operation is running on the cluster (409): waiting");
                report.waited_for_other_operations += 1;
                // OperationNotAllowed says when to ask again; honour it.
                let wait = e.retry_after().unwrap_or(Duration::from_secs(5));
                tokio::time::sleep(wait.clamp(Duration::from_secs(1), Duration::from_secs(120)))
                    .await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        report.changed = true;
        let outcome = arm
            .wait_operation(&started, |s| on_status(&format!("cluster operation {s}")))
            .await?;
        if !outcome.status.eq_ignore_ascii_case("Succeeded") {
            let error = outcome
                .error
                .map(|e| {
                    format!(
                        "{} {}",
                        e["code"].as_str().unwrap_or_default(),
                        e["message"].as_str().unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            return Err(UpdateError::OperationFailed {
                status: outcome.status,
                error,
            });
        }
        return Ok(report);
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
