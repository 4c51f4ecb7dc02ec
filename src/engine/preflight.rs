//! The preflight step: gather facts (read-only) and run the checks. Also what `--dry-run` and
//! `status` show.

use super::context::Context;
use crate::azure::keys::KeyId;
use crate::checks::facts::{self, Facts};
use crate::checks::{Finding, preflight};
use crate::engine::journal::RunParams;
use crate::playbook::Intent;
use serde_json::{Value, json};

pub struct Preflight {
    pub facts: Facts,
    pub findings: Vec<Finding>,
    /// What the run keeps (journaled as the step's output).
    pub output: Value,
}

pub async fn gather(ctx: &Context, intent: Intent, params: &RunParams) -> anyhow::Result<Facts> {
    let mut f = Facts {
        kube: facts::kube(&ctx.kube, ctx.kube_server_host.clone()).await?,
        ..Default::default()
    };
    let Some(az) = &ctx.azure else { return Ok(f) };
    f.cluster = facts::cluster(&az.arm, &az.cluster_path, &az.subscription).await?;
    let key = match intent {
        Intent::Enable => params.key_id.clone(),
        _ => f.cluster.key_id(),
    };
    f.network_access = params
        .network_access
        .clone()
        .unwrap_or_else(|| f.cluster.network_access());
    f.vault_resource_id = params
        .vault_resource_id
        .clone()
        .or_else(|| f.cluster.vault_resource_id());
    let Some(key) = key else { return Ok(f) };
    let id = match KeyId::parse(&key) {
        Ok(id) => id,
        Err(e) => {
            f.key_error = Some(e);
            return Ok(f);
        }
    };
    if intent == Intent::Disable {
        match az.key_vault(&id) {
            Ok(kv) => match facts::key(&kv, &id).await {
                Ok(k) => f.key = Some(k),
                Err(e) => f.key_error = Some(e.to_string()),
            },
            Err(e) => f.key_error = Some(e.to_string()),
        }
    }
    if matches!(intent, Intent::Enable | Intent::Rotate) {
        let principal = f.cluster.identity_principal();
        f.vault = facts::vault(
            &az.arm,
            &az.subscription,
            &id,
            f.vault_resource_id.as_deref(),
            principal.as_deref(),
        )
        .await;
        match az.key_vault(&id) {
            Ok(kv) => match facts::key(&kv, &id).await {
                Ok(k) => f.key = Some(k),
                Err(e) => f.key_error = Some(e.to_string()),
            },
            Err(e) => f.key_error = Some(e.to_string()),
        }
    }
    f.key_id = Some(id);
    Ok(f)
}

pub async fn run(ctx: &Context, intent: Intent, params: &RunParams) -> anyhow::Result<Preflight> {
    let facts = gather(ctx, intent, params).await?;
    let findings = preflight::run(&preflight::Inputs {
        intent,
        facts: &facts,
        margin_days: params.margin_days,
        now: chrono::Utc::now(),
    });
    let key_for_change = match intent {
        Intent::Enable => params.key_id.clone(),
        _ => facts.cluster.key_id(),
    };
    let output = json!({
        "originalKeyId": facts.cluster.key_id(),
        "keyId": key_for_change,
        "networkAccess": facts.network_access,
        "vaultResourceId": facts.vault_resource_id,
        "concurrencyCap": if facts.kube.apiserver_guard { Some(4) } else { None },
        "findings": findings,
    });
    Ok(Preflight {
        facts,
        findings,
        output,
    })
}
