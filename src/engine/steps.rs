//! What each step does. Every step re-reads the world first, so running it again after a kill
//! neither repeats a finished change nor skips one.

use super::StepError;
use super::context::Context;
use super::kms::{self, UpdateError};
use super::state::RunState;
use crate::azure::keys::KeyId;
use crate::engine::journal::RunParams;
use crate::k8s::{canary, ledger};
use crate::reencrypt::{self, Checkpoint, Observer};
use serde_json::{Value, json};
use std::time::Duration;

/// The cluster resource as ARM returns it now.
async fn cluster(az: &super::context::Azure) -> Result<Value, StepError> {
    Ok(az.arm.get(&az.cluster_path, &az.arm.api.aks).await?.body)
}

fn kms_of(cluster: &Value) -> Value {
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

pub async fn plant_canary(ctx: &Context) -> Result<Value, StepError> {
    let planted = canary::plant(&ctx.kube).await?;
    let kms_at_plant = match &ctx.azure {
        Some(az) => {
            let k = kms_of(&cluster(az).await?);
            json!({ "enabled": k["enabled"].as_bool() == Some(true), "keyId": k["keyId"], "networkAccess": k["keyVaultNetworkAccess"], "vaultResourceId": k["keyVaultResourceId"] })
        }
        None => Value::Null,
    };
    Ok(json!({ "plantedRv": planted, "kmsAtPlant": kms_at_plant }))
}

/// Reads the newest version before rotating; kept in the journal so a resumed run can tell
/// whether the killed one's rotation happened.
pub async fn rotate_key_prepare(ctx: &Context, state: &RunState) -> Result<Value, StepError> {
    let id = key_id(state)?;
    let kv = ctx.azure()?.key_vault(&id)?;
    let versions = kv.versions(&id.name).await?;
    Ok(json!({ "latestBefore": versions.last().map(|v| v.id.to_string()) }))
}

pub async fn rotate_key(
    ctx: &Context,
    state: &RunState,
    prepared: &Value,
) -> Result<Value, StepError> {
    let id = key_id(state)?;
    let kv = ctx.azure()?.key_vault(&id)?;
    let versions = kv.versions(&id.name).await?;
    let latest = versions.last().map(|v| v.id.to_string());
    if latest.is_some()
        && latest.as_deref() != prepared["latestBefore"].as_str()
        && latest.as_deref() != state.key_id.as_deref()
    {
        tracing::info!("the rotation already happened before an interruption; using its version");
        return Ok(json!({ "keyId": latest, "resumed": true }));
    }
    let new = kv.rotate(&id.name).await?;
    Ok(json!({ "keyId": new.id.to_string(), "expiresOn": new.expires_on }))
}

pub async fn update_kms(
    ctx: &Context,
    state: &RunState,
    enabled: bool,
    on_status: impl FnMut(&str),
) -> Result<Value, StepError> {
    let az = ctx.azure()?;
    let desired = state.desired(enabled);
    let report = kms::update(&az.arm, &az.cluster_path, &desired, on_status)
        .await
        .map_err(|e| match e {
            UpdateError::OperationFailed { .. } => StepError::Failed(anyhow::anyhow!(
                "{e}. Nothing was re-encrypted; fix the cause and run `kmsctl resume`"
            )),
            other => StepError::Failed(other.into()),
        })?;
    Ok(json!({ "desired": desired, "report": report }))
}

pub async fn verify_kms(ctx: &Context, state: &RunState) -> Result<Value, StepError> {
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
    let now = chrono::Utc::now();
    let in_service = desired.enabled.then(|| desired.key_id.clone()).flatten();
    ledger::update(&ctx.kube, |l| l.put_in_service(in_service.as_deref(), now)).await?;
    Ok(json!({ "kms": kms_of(&c) }))
}

pub async fn prove_key_switch(
    ctx: &Context,
    state: &RunState,
    params: &RunParams,
) -> Result<Value, StepError> {
    if !state.key_switch_expected() {
        return Ok(json!({ "skipped": "the write key did not change" }));
    }
    let planted = state
        .planted_rv
        .clone()
        .ok_or_else(|| StepError::Failed(anyhow::anyhow!("no canary was planted")))?;
    let timeout = Duration::from_secs(params.barrier_timeout_seconds);
    match canary::prove_switch(&ctx.kube, &planted, timeout, Duration::from_secs(2)).await {
        Ok(waited) => Ok(json!({ "waitedSeconds": waited.as_secs_f64() })),
        Err(e) => Err(e.into()),
    }
}

pub async fn reencrypt(
    ctx: &Context,
    state: &RunState,
    params: &RunParams,
    checkpoint: Checkpoint,
    observer: &dyn Observer,
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
        ..Default::default()
    };
    let summary = reencrypt::run(ctx.kube.clone(), &options, checkpoint, observer).await?;
    if !summary.ok() {
        return Err(StepError::Incomplete(Box::new(summary)));
    }
    if p.namespaces.is_empty() {
        let now = chrono::Utc::now();
        ledger::update(&ctx.kube, |l| l.reencrypted(now)).await?;
    }
    Ok((serde_json::to_value(&summary).unwrap_or_default(), summary))
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
        let v = az.key_vault(&id)?.version(&id).await?;
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

pub async fn retire_oldest(ctx: &Context, state: &RunState) -> Result<Value, StepError> {
    let az = ctx.azure()?;
    let Some(oldest) = state.original_key_id.clone() else {
        return Ok(json!({ "skipped": "no key was in use before this run" }));
    };
    let complete = state.reencrypts.len() >= 2 && state.reencrypts.iter().all(|c| c.failed == 0);
    if !complete {
        return Err(StepError::Failed(anyhow::anyhow!(
            "retire-oldest needs two rotations, each followed by a complete re-encryption; refusing to disable {oldest}"
        )));
    }
    let current = kms_of(&cluster(az).await?)["keyId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if current.eq_ignore_ascii_case(&oldest) {
        return Err(StepError::Verification(format!(
            "the cluster still uses {oldest}; refusing to disable it"
        )));
    }
    let id = KeyId::parse(&oldest).map_err(|e| StepError::Failed(anyhow::anyhow!(e)))?;
    az.key_vault(&id)?.set_enabled(&id, false).await?;
    let now = chrono::Utc::now();
    ledger::update(&ctx.kube, |l| l.retired(&oldest, now)).await?;
    Ok(json!({ "disabled": oldest }))
}
