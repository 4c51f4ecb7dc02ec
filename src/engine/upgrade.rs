//! Upgrading Kubernetes the way AKS allows it: one minor version at a time, to the latest patch
//! AKS offers for the next minor (its upgrade profile), control plane and node pools together as
//! `az aks upgrade` does. The cluster's version decides what is left, so a run killed in the
//! middle of a chain continues from wherever the cluster is.

use super::StepError;
use super::cluster::{self, ClusterChange, UpdateError};
use super::context::Context;
use super::events::{Event, Sink};
use crate::checks::facts::minor;
use crate::engine::journal::RunParams;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first minor version with KMS v2.
pub const KMS_V2_FROM: (u32, u32) = (1, 27);

pub struct KubernetesUpgrade {
    pub version: String,
}

fn current_version(resource: &Value) -> String {
    let p = &resource["properties"];
    p["currentKubernetesVersion"]
        .as_str()
        .or(p["kubernetesVersion"].as_str())
        .unwrap_or_default()
        .to_string()
}

impl ClusterChange for KubernetesUpgrade {
    fn matches(&self, resource: &Value) -> bool {
        let pools_done = resource["properties"]["agentPoolProfiles"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|p| {
                p["currentOrchestratorVersion"]
                    .as_str()
                    .is_none_or(|v| v == self.version)
            });
        current_version(resource) == self.version && pools_done
    }
    fn apply_to(&self, resource: &mut Value) {
        resource["properties"]["kubernetesVersion"] = json!(self.version);
        if let Some(pools) = resource["properties"]["agentPoolProfiles"].as_array_mut() {
            for p in pools {
                p["orchestratorVersion"] = json!(self.version);
            }
        }
    }
    fn what(&self) -> &'static str {
        "kubernetesVersion"
    }
    fn why(&self) -> String {
        format!(
            "AKS upgrades the control plane and every node pool to Kubernetes {} (one minor version at a time; tens of minutes on AKS)",
            self.version
        )
    }
}

/// A version's (minor, patch) ordering key.
fn patch_of(v: &str) -> u32 {
    v.split('.')
        .nth(2)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// The version to upgrade to next: the latest non-preview patch AKS offers for the next minor,
/// or exactly the target when the target names a patch of that minor.
pub fn next_hop(offered: &[(String, bool)], current: &str, target: Option<&str>) -> Option<String> {
    let (maj, min) = minor(current)?;
    let next = (maj, min + 1);
    let exact = target.filter(|t| minor(t) == Some(next) && t.split('.').count() >= 3);
    offered
        .iter()
        .filter(|(v, preview)| minor(v) == Some(next) && (!preview || exact == Some(v.as_str())))
        .map(|(v, _)| v)
        .filter(|v| exact.is_none_or(|t| t == v.as_str()))
        .max_by_key(|v| patch_of(v))
        .cloned()
}

/// Whether `current` is at or past the target (default: the first KMS v2 minor).
pub fn reached(current: &str, target: Option<&str>) -> bool {
    let Some(cur) = minor(current) else {
        return false;
    };
    match target {
        None => cur >= KMS_V2_FROM,
        Some(t) => {
            let want = minor(t).unwrap_or(KMS_V2_FROM);
            cur > want
                || (cur == want && (t.split('.').count() < 3 || patch_of(current) >= patch_of(t)))
        }
    }
}

/// The upgrades AKS offers from the cluster's current version: (version, isPreview).
pub async fn offered(az: &super::context::Azure) -> Result<Vec<(String, bool)>, StepError> {
    let path = format!("{}/upgradeProfiles/default", az.cluster_path);
    let profile = az.arm.get(&path, &az.arm.api.aks).await?.body;
    Ok(profile["properties"]["controlPlaneProfile"]["upgrades"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| {
            Some((
                u["kubernetesVersion"].as_str()?.to_string(),
                u["isPreview"].as_bool() == Some(true),
            ))
        })
        .collect())
}

fn update_error(e: UpdateError) -> StepError {
    match e {
        UpdateError::OperationFailed { .. } => StepError::Failed(anyhow::anyhow!(
            "{e}. KMS stays off and Secrets stay without KMS until the run finishes; fix the cause and run `kmsctl resume` (it continues from the cluster's version)"
        )),
        other => StepError::Failed(other.into()),
    }
}

/// The minor version the API server itself reports.
async fn apiserver_minor(ctx: &Context) -> Result<(u32, u32), StepError> {
    let info = ctx
        .kube
        .apiserver_version()
        .await
        .map_err(|e| StepError::Failed(crate::k8s::KubeError::from(e).into()))?;
    minor(&info.git_version).ok_or_else(|| {
        StepError::Verification(format!(
            "the API server reports version '{}', which kmsctl cannot read",
            info.git_version
        ))
    })
}

/// Checks the API server, not only Azure, runs `version`'s minor.
pub async fn verify_apiserver(ctx: &Context, version: &str) -> Result<(), StepError> {
    let have = apiserver_minor(ctx).await?;
    if Some(have) != minor(version) {
        return Err(StepError::Verification(format!(
            "the cluster says Kubernetes {version}, but its API server reports {}.{}",
            have.0, have.1
        )));
    }
    Ok(())
}

pub async fn upgrade_kubernetes(
    ctx: &Context,
    params: &RunParams,
    sink: &dyn Sink,
    lease_lost: &AtomicBool,
) -> Result<Value, StepError> {
    let az = ctx.azure()?;
    let target = params.target_version.as_deref();
    let mut hops = Vec::new();
    let mut from = None;
    loop {
        if lease_lost.load(Ordering::SeqCst) {
            return Err(StepError::Failed(anyhow::anyhow!(
                "lost the cluster's lease between upgrades; run `kmsctl resume` once no other run is active"
            )));
        }
        let c = cluster::when_idle(&az.arm, &az.cluster_path, sink)
            .await
            .map_err(update_error)?;
        let current = current_version(&c);
        from.get_or_insert_with(|| current.clone());
        let state = c["properties"]["provisioningState"].as_str().unwrap_or("");
        if reached(&current, target) && state == "Succeeded" {
            verify_apiserver(ctx, &current).await?;
            return Ok(json!({ "from": from, "to": current, "hops": hops }));
        }
        let kms_on = c
            .pointer("/properties/securityProfile/azureKeyVaultKms/enabled")
            .and_then(Value::as_bool)
            == Some(true);
        let offered = offered(az).await?;
        let Some(next) = next_hop(&offered, &current, target) else {
            let list: Vec<&str> = offered.iter().map(|(v, _)| v.as_str()).collect();
            return Err(StepError::Failed(anyhow::anyhow!(
                "AKS offers no upgrade from {current} to the next minor version (offered: [{}]); minor versions cannot be skipped. Check `az aks get-upgrades`, then run `kmsctl resume`",
                list.join(" ")
            )));
        };
        if kms_on && minor(&current) < Some(KMS_V2_FROM) && minor(&next) >= Some(KMS_V2_FROM) {
            return Err(StepError::Refused(format!(
                "KMS v1 is still enabled: AKS blocks upgrading {current} to {next}. Nothing was changed; KMS must be disabled and every Secret re-encrypted first (kmsctl migrate-v2 does that)"
            )));
        }
        sink.emit(&Event::Note {
            message: format!(
                "upgrading Kubernetes {current} -> {next} (one minor version at a time; each takes a while on AKS)"
            ),
        });
        cluster::update(
            &az.arm,
            &az.cluster_path,
            &KubernetesUpgrade {
                version: next.clone(),
            },
            sink,
        )
        .await
        .map_err(update_error)?;
        let after = cluster::when_idle(&az.arm, &az.cluster_path, sink)
            .await
            .map_err(update_error)?;
        let now = current_version(&after);
        let state = after["properties"]["provisioningState"]
            .as_str()
            .unwrap_or("");
        if now != next || state != "Succeeded" {
            return Err(StepError::Verification(format!(
                "after upgrading to {next} the cluster says Kubernetes {now}, provisioningState {state}"
            )));
        }
        hops.push(json!({ "from": current, "to": next }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(v: &[(&str, bool)]) -> Vec<(String, bool)> {
        v.iter().map(|(s, p)| (s.to_string(), *p)).collect()
    }

    #[test]
    fn one_minor_at_a_time_latest_patch() {
        let offered = o(&[
            ("1.26.3", false),
            ("1.26.15", false),
            ("1.26.16", true),
            ("1.27.1", false),
        ]);
        assert_eq!(
            next_hop(&offered, "1.25.11", None).as_deref(),
            Some("1.26.15")
        );
        assert_eq!(
            next_hop(&offered, "1.25.11", Some("1.26.3")).as_deref(),
            Some("1.26.3")
        );
        assert_eq!(
            next_hop(&offered, "1.26.15", None).as_deref(),
            Some("1.27.1")
        );
        assert_eq!(next_hop(&o(&[("1.28.1", false)]), "1.26.15", None), None);
    }

    #[test]
    fn target_reached() {
        assert!(!reached("1.26.15", None));
        assert!(reached("1.27.16", None));
        assert!(!reached("1.27.16", Some("1.28")));
        assert!(reached("1.28.1", Some("1.28")));
        assert!(!reached("1.28.1", Some("1.28.5")));
        assert!(reached("1.29.0", Some("1.28.5")));
    }
}
