//! What each step does. Every step re-reads the world first, so running it again after a kill
//! neither repeats a finished change nor skips one.

use super::StepError;
use super::cluster::{self, UpdateError};
use super::context::Context;
use super::events::{Event, PassEvents, PassKind, PassLabel, Sink};
use super::kms::DesiredKms;
use super::state::RunState;
use crate::azure::keys::KeyId;
use crate::engine::journal::RunParams;
use crate::k8s::ledger;
use crate::reencrypt::{self, Checkpoint, Observer};
use serde_json::{Value, json};

/// The cluster resource as ARM returns it now.
pub(super) async fn cluster(az: &super::context::Azure) -> Result<Value, StepError> {
    Ok(az.arm.get(&az.cluster_path, &az.arm.api.aks).await?.body)
}

pub(super) fn kms_of(cluster: &Value) -> Value {
    cluster
        .pointer("/properties/securityProfile/azureKeyVaultKms")
        .cloned()
        .unwrap_or(Value::Null)
}

fn key_id(state: &RunState) -> Result<KeyId, StepError> {
    let raw = state.key_id.clone().ok_or_else(|| {
        StepError::Failed(anyhow::anyhow!(
            "no key id: the cluster has none and none was given"
        ))
    })?;
    KeyId::parse(&raw).map_err(|e| StepError::Failed(anyhow::anyhow!(e)))
}

/// Key state through Resource Manager (the run's private vault id, when it has one, names the
/// vault).
async fn reader(
    ctx: &Context,
    state: &RunState,
    id: &KeyId,
) -> Result<crate::azure::mgmt_keys::KeyReader, StepError> {
    Ok(ctx
        .azure()?
        .key_reader(id, state.vault_resource_id.as_deref())
        .await?)
}

/// A data-plane call that failed: when the vault's network stopped this machine mid-run, say
/// so; the step stops there and `kmsctl resume` continues it from a network that reaches it.
fn data_plane(e: crate::azure::RemoteError, what: &str) -> StepError {
    match e.network_block() {
        Some("unreachable") => StepError::Failed(anyhow::anyhow!(
            "{what}: the vault's data plane could not be reached from this network ({e}); the run stopped at this step. Whether the call arrived is checked again on `kmsctl resume`: run it from a network with a private endpoint to the vault (or an address its firewall allows)"
        )),
        Some(block) => StepError::Failed(anyhow::anyhow!(
            "{what}: the vault's network refused this machine ({block}: {e}); this step changed nothing and the run stopped here. Run `kmsctl resume` from a network with a private endpoint to the vault (a VM or runner in the cluster's VNet), or, for a vault with a public firewall, from an address it allows"
        )),
        None => StepError::Failed(e.into()),
    }
}

/// The KMS configuration as the cluster reports it, in the form the journal keeps.
fn kms_config(c: &Value) -> Value {
    let k = kms_of(c);
    json!({ "enabled": k["enabled"].as_bool() == Some(true), "keyId": k["keyId"], "networkAccess": k["keyVaultNetworkAccess"], "vaultResourceId": k["keyVaultResourceId"] })
}

pub async fn plant_canary(
    ctx: &Context,
    run_id: &str,
    sink: &dyn Sink,
) -> Result<Value, StepError> {
    let kms_at_plant = match &ctx.azure {
        Some(az) => kms_config(&cluster(az).await?),
        None => Value::Null,
    };
    super::proof::plant(ctx, run_id, kms_at_plant, sink).await
}

/// Reads the newest version before rotating; kept in the journal so a resumed run can tell
/// whether the killed one's rotation happened.
pub async fn rotate_key_prepare(ctx: &Context, state: &RunState) -> Result<Value, StepError> {
    let id = key_id(state)?;
    let versions = reader(ctx, state, &id).await?.versions(&id.name).await?;
    Ok(json!({ "latestBefore": versions.last().map(|v| v.id.to_string()) }))
}

pub async fn rotate_key(
    ctx: &Context,
    state: &RunState,
    prepared: &Value,
) -> Result<Value, StepError> {
    let id = key_id(state)?;
    let versions = reader(ctx, state, &id).await?.versions(&id.name).await?;
    let latest = versions.last().map(|v| v.id.to_string());
    if latest.is_some()
        && latest.as_deref() != prepared["latestBefore"].as_str()
        && latest.as_deref() != state.key_id.as_deref()
    {
        tracing::info!("the rotation already happened before an interruption; using its version");
        return Ok(json!({ "keyId": latest, "resumed": true }));
    }
    let kv = ctx.azure()?.key_vault(&id)?;
    let new = kv
        .rotate(&id.name)
        .await
        .map_err(|e| data_plane(e, "rotating the key"))?;
    Ok(json!({ "keyId": new.id.to_string(), "expiresOn": new.expires_on }))
}

pub async fn update_kms(
    ctx: &Context,
    state: &RunState,
    enabled: bool,
    run_id: &str,
    sink: &dyn Sink,
) -> Result<Value, StepError> {
    let az = ctx.azure()?;
    let desired = state.desired(enabled);
    // Someone else changed the key since the canary was made current: what the barrier would
    // see could come from their change, not this one. Asked again of every re-read after a 412.
    let shown = |k: &DesiredKms| match (k.enabled, k.key_id.as_deref()) {
        (true, Some(id)) => id.to_string(),
        _ => "off".to_string(),
    };
    let changed_by_others = |resource: &Value| -> Option<String> {
        let at_plant = state.kms_at_plant.as_ref()?;
        let now_kms: DesiredKms = match serde_json::from_value(kms_config(resource)) {
            Ok(k) => k,
            Err(e) => {
                return Some(format!(
                    "the cluster's KMS configuration could not be read ({e}); nothing was changed"
                ));
            }
        };
        (!now_kms.same_write_key(at_plant) && !now_kms.same_write_key(&desired)).then(|| format!(
            "the cluster's KMS key changed since this run started (now {}, was {}), and not by this run; nothing was changed. Check who changed it, then start again",
            shown(&now_kms),
            shown(at_plant)
        ))
    };
    if let Some(why) = changed_by_others(&cluster(az).await?) {
        return Err(StepError::Refused(why));
    }
    let to = desired.enabled.then(|| desired.key_id.clone()).flatten();
    let (l, _) = ledger::load(&ctx.kube).await?;
    super::proof::refuse_unproven(&l, run_id)?;
    // The switch is recorded as unproven before the cluster changes: until a barrier proves
    // it, no other run may start a change or re-encrypt.
    let now = chrono::Utc::now();
    let before = l.switch.clone();
    ledger::update(&ctx.kube, |l| {
        let already = l
            .switch
            .as_ref()
            .is_some_and(|s| s.run_id == run_id && s.to == to);
        if !already {
            l.switch = Some(ledger::Switch {
                to: to.clone(),
                run_id: run_id.to_string(),
                requested_at: now,
                proven_at: None,
                evidence: None,
                canary_flip_rv: None,
            });
        }
    })
    .await?;
    let updated = cluster::update_checked(
        &az.arm,
        &az.cluster_path,
        &desired,
        &changed_by_others,
        sink,
    )
    .await;
    if let Err(UpdateError::Refused(why)) = updated {
        // Nothing was PUT: the switch recorded above did not happen, and must not block others.
        ledger::update(&ctx.kube, |l| {
            if l.switch
                .as_ref()
                .is_some_and(|s| s.run_id == run_id && s.requested_at == now)
            {
                l.switch = before.clone();
            }
        })
        .await?;
        return Err(StepError::Refused(why));
    }
    let report = updated.map_err(|e| match e {
        UpdateError::OperationFailed { .. } => StepError::Failed(anyhow::anyhow!(
            "{e}. Nothing was re-encrypted; fix the cause and run `kmsctl resume`"
        )),
        other => StepError::Failed(other.into()),
    })?;
    Ok(json!({ "desired": desired, "report": report }))
}

pub async fn verify_kms(
    ctx: &Context,
    state: &RunState,
    kms_version: Option<crate::playbook::KmsVersion>,
) -> Result<Value, StepError> {
    let az = ctx.azure()?;
    let desired = state.desired.clone().ok_or_else(|| {
        StepError::Failed(anyhow::anyhow!(
            "verify-kms needs an update-kms step before it"
        ))
    })?;
    let c = cluster(az).await?;
    let ps = c["properties"]["provisioningState"]
        .as_str()
        .unwrap_or("Unknown");
    let mut diffs = desired.differences(&c);
    if ps != "Succeeded" {
        diffs.push(format!("provisioningState is {ps}, want Succeeded"));
    }
    if !diffs.is_empty() {
        return Err(StepError::Verification(format!(
            "securityProfile.azureKeyVaultKms does not say what was asked: {}",
            diffs.join("; ")
        )));
    }
    let mut out = json!({ "kms": kms_of(&c) });
    if desired.enabled && desired.network_access.as_deref() == Some("Private") {
        let vault = desired.vault_resource_id.clone().unwrap_or_default();
        out["privateEndpoint"] =
            super::vault_network::check_private_endpoint(az, &c, &vault).await?;
    }
    if let Some(want) = kms_version {
        out["kmsVersion"] = json!(verify_kms_version(ctx, &c, want).await?);
    }
    let now = chrono::Utc::now();
    let in_service = desired.enabled.then(|| desired.key_id.clone()).flatten();
    ledger::update(&ctx.kube, |l| l.put_in_service(in_service.as_deref(), now)).await?;
    Ok(out)
}

/// KMS v2 needs KMS on and Kubernetes 1.27+ as both Azure and the API server itself report it.
async fn verify_kms_version(
    ctx: &Context,
    c: &Value,
    want: crate::playbook::KmsVersion,
) -> Result<&'static str, StepError> {
    use crate::playbook::KmsVersion;
    let version = c["properties"]["currentKubernetesVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    super::upgrade::verify_apiserver(ctx, &version).await?;
    let v2 = crate::checks::facts::minor(&version) >= Some(super::upgrade::KMS_V2_FROM);
    let have = if v2 { KmsVersion::V2 } else { KmsVersion::V1 };
    if kms_of(c)["enabled"].as_bool() != Some(true) || have != want {
        return Err(StepError::Verification(format!(
            "the cluster runs Kubernetes {version}, so KMS is {have:?}, not {want:?} as asked"
        )));
    }
    Ok(if v2 { "v2" } else { "v1" })
}

/// Re-encrypts. A lifecycle run re-encrypts the whole cluster and verifies it (only then is
/// the old key marked re-encrypted away); a standalone `reencrypt` proves nothing for the ledger.
#[expect(
    clippy::too_many_arguments,
    reason = "the step needs the run, its journal, its reporting and its lease flag"
)]
pub async fn reencrypt(
    ctx: &Context,
    state: &RunState,
    params: &RunParams,
    lifecycle: bool,
    checkpoint: Checkpoint,
    journaled: &dyn Observer,
    sink: &dyn Sink,
    label: &str,
    lease_lost: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<(Value, reencrypt::Summary), StepError> {
    let p = &params.reencrypt;
    let concurrency = state
        .concurrency_cap
        .map_or(p.concurrency, |cap| p.concurrency.min(cap));
    let options = reencrypt::Options {
        namespaces: p.namespaces.clone(),
        batch_size: p.batch_size,
        concurrency,
        max_qps: p.max_qps,
        stop: Some(lease_lost.clone()),
        ..Default::default()
    };
    if lifecycle && p.namespaces.is_empty() {
        return super::proof::reencrypt_verified(
            ctx, state, params, &options, checkpoint, journaled, sink, label, lease_lost,
        )
        .await;
    }
    // A standalone pass proves nothing for the ledger, but must not report Secrets "unchanged"
    // while some replica still writes with another key: it checks before and after.
    let before = super::proof::standalone_check(ctx, sink).await?;
    if !before.attributed {
        sink.emit(&Event::Note {
            message: format!(
                "could not check that every API server replica writes with one key ({}): /metrics does not identify the replicas",
                before.detail
            ),
        });
    }
    let events = PassEvents::new(
        sink,
        PassLabel {
            kind: PassKind::Reencryption,
            label: label.to_string(),
            round: 1,
        },
    );
    let summary = reencrypt::run(
        ctx.kube.clone(),
        &options,
        checkpoint,
        &super::events::Both(journaled, &events),
    )
    .await?;
    events.finished(&summary);
    if !summary.ok() {
        return Err(StepError::Incomplete(Box::new(summary)));
    }
    // Secrets were rewritten by now: whatever this finds is a failure to resume from, not a
    // refusal before any change.
    let after = super::proof::standalone_check(ctx, sink)
        .await
        .map_err(|e| match e {
            StepError::Refused(m) => StepError::Failed(anyhow::anyhow!(m)),
            other => other,
        })?;
    if before.key.is_some() && after.key.is_some() && before.key != after.key {
        return Err(StepError::Failed(anyhow::anyhow!(
            "the API servers' write key changed during the re-encryption (before: {}, after: {}): Secrets rewritten before the change are under the key being left. Finish the key change (`kmsctl resume` if kmsctl made it), then run `kmsctl reencrypt` again",
            before.key.as_ref().map_or("?".into(), |k| k.to_string()),
            after.key.as_ref().map_or("?".into(), |k| k.to_string()),
        )));
    }
    let mut out = serde_json::to_value(&summary).unwrap_or_default();
    out["writeKey"] = json!({ "before": before, "after": after, "checked": before.attributed && after.attributed });
    Ok((out, summary))
}

pub async fn check_rotation_window(
    ctx: &Context,
    state: &RunState,
    params: &RunParams,
) -> Result<Value, StepError> {
    let az = ctx.azure()?;
    let margin = chrono::Duration::days(params.margin_days as i64);
    let mut checked = Vec::new();
    for raw in [state.original_key_id.as_ref(), state.key_id.as_ref()]
        .into_iter()
        .flatten()
    {
        let id = KeyId::parse(raw).map_err(|e| StepError::Failed(anyhow::anyhow!(e)))?;
        let hint = state.vault_resource_id.as_deref();
        let v = az.key_reader(&id, hint).await?.version(&id).await?;
        if !v.enabled {
            return Err(StepError::Failed(anyhow::anyhow!(
                "{id} is disabled, but KMS still needs it until the next rotation finishes; enable it (az keyvault key set-attributes --enabled true) and run `kmsctl resume`"
            )));
        }
        if let Some(exp) = v.expires_on.filter(|e| *e <= chrono::Utc::now() + margin) {
            return Err(StepError::Failed(anyhow::anyhow!(
                "{id} expires on {exp}, within the {}-day margin, but KMS still needs it until the next rotation finishes; extend its expiry and run `kmsctl resume`",
                params.margin_days
            )));
        }
        checked.push(id.to_string());
    }
    Ok(json!({ "checked": checked }))
}

/// Disables (never deletes) the version in service before this run, only when the ledger shows
/// it re-encrypted away by a verified pass, neither in service nor the previous version, and no
/// other cluster the credential can see uses it.
pub async fn retire_oldest(ctx: &Context, state: &RunState) -> Result<Value, StepError> {
    let az = ctx.azure()?;
    let Some(oldest) = state.original_key_id.clone() else {
        return Ok(json!({ "skipped": "no key was in use before this run" }));
    };
    let refuse = |why: String| {
        Err(StepError::Refused(format!(
            "not disabling {oldest}: {why}. It stays enabled; nothing was changed"
        )))
    };
    let current = kms_of(&cluster(az).await?)["keyId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if current.eq_ignore_ascii_case(&oldest) {
        return refuse("the cluster still uses it".into());
    }
    let (l, _) = ledger::load(&ctx.kube).await?;
    let same = |e: &&ledger::LedgerEntry| e.key_id.eq_ignore_ascii_case(&oldest);
    let Some(entry) = l.entries.iter().find(same) else {
        return refuse("the key ledger has no record of it".into());
    };
    if entry.reencrypted_away_at.is_none() {
        return refuse("the key ledger does not show every Secret re-encrypted away from it by a verified, whole-cluster pass".into());
    }
    if l.must_stay_alive().iter().any(same) {
        return refuse("the key ledger says it must stay alive (in service, or the previous version KMS may still use)".into());
    }
    let users = other_clusters_using(az, &oldest).await?;
    if !users.is_empty() {
        return refuse(format!("other clusters use it: {}", users.join(", ")));
    }
    let id = KeyId::parse(&oldest).map_err(|e| StepError::Failed(anyhow::anyhow!(e)))?;
    az.key_vault(&id)?
        .set_enabled(&id, false)
        .await
        .map_err(|e| data_plane(e, "disabling the retired version"))?;
    let now = chrono::Utc::now();
    ledger::update(&ctx.kube, |l| l.retired(&oldest, now)).await?;
    Ok(json!({ "disabled": oldest }))
}

/// Every managed cluster, in every subscription the credential can see, whose KMS key is `key_id`
/// (this cluster excepted). A listing that fails refuses: "could not check" is not "nobody".
async fn other_clusters_using(
    az: &super::context::Azure,
    key_id: &str,
) -> Result<Vec<String>, StepError> {
    let subs = az.arm.list_all("/subscriptions", "2022-12-01").await?;
    let mut users = Vec::new();
    for sub in subs {
        let Some(id) = sub["subscriptionId"].as_str() else {
            continue;
        };
        let path =
            format!("/subscriptions/{id}/providers/Microsoft.ContainerService/managedClusters");
        for c in az.arm.list_all(&path, &az.arm.api.aks).await? {
            let cid = c["id"].as_str().unwrap_or_default();
            if cid.eq_ignore_ascii_case(&az.cluster_path) {
                continue;
            }
            if kms_of(&c)["keyId"]
                .as_str()
                .is_some_and(|k| k.eq_ignore_ascii_case(key_id))
            {
                users.push(cid.to_string());
            }
        }
    }
    Ok(users)
}
