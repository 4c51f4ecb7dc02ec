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

/// `data_plane`: the run will use the vault's data plane (`Procedure::uses_data_plane`), so its
/// reach is checked.
pub async fn gather(
    ctx: &Context,
    intent: Intent,
    params: &RunParams,
    data_plane: bool,
) -> anyhow::Result<Facts> {
    let mut f = Facts {
        kube: facts::kube(&ctx.kube, ctx.kube_server_endpoint.clone()).await?,
        ..Default::default()
    };
    let Some(az) = &ctx.azure else { return Ok(f) };
    f.cluster = facts::cluster(&az.arm, &az.cluster_path, &az.subscription).await?;
    let key = match intent {
        Intent::Enable => params.key_id.clone(),
        _ => f.cluster.key_id(),
    };
    f.network_access = match intent {
        // A migration enables KMS again as it was.
        Intent::MigrateV2 => f.cluster.network_access(),
        _ => params
            .network_access
            .clone()
            .unwrap_or_else(|| f.cluster.network_access()),
    };
    f.vault_resource_id = match intent {
        Intent::MigrateV2 => f.cluster.vault_resource_id(),
        _ => params
            .vault_resource_id
            .clone()
            .or_else(|| f.cluster.vault_resource_id()),
    };
    if intent == Intent::MigrateV2 {
        f.target_version = params.target_version.clone();
        f.upgrades = Some(match &ctx.azure {
            Some(az) => crate::engine::upgrade::offered(az)
                .await
                .map_err(|e| e.to_string()),
            None => Err("no Azure access".into()),
        });
    }
    let Some(key) = key else { return Ok(f) };
    let id = match KeyId::parse(&key) {
        Ok(id) => id,
        Err(e) => {
            f.key_error = Some(e);
            return Ok(f);
        }
    };
    if intent == Intent::Disable {
        let hint = f.cluster.vault_resource_id();
        read_key(az, &id, hint.as_deref(), &mut f).await;
    }
    if matches!(
        intent,
        Intent::Enable | Intent::Rotate | Intent::VaultMode | Intent::MigrateV2
    ) {
        let principal = f.cluster.identity_principal();
        // A mode change looks the vault up from the key: the id given for private mode is
        // then compared with it rather than trusted.
        let by_id = match intent {
            Intent::VaultMode => None,
            _ => f.vault_resource_id.as_deref(),
        };
        f.vault = facts::vault(&az.arm, &az.subscription, &id, by_id, principal.as_deref()).await;
        if intent == Intent::VaultMode && f.network_access == "Private" {
            let found = f.vault.resource.as_ref().and_then(|v| v["id"].as_str());
            f.vault_resource_id = f.vault_resource_id.clone().or(found.map(str::to_string));
        }
        let hint = f
            .vault
            .resource
            .as_ref()
            .and_then(|v| v["id"].as_str())
            .map(str::to_string);
        read_key(az, &id, hint.as_deref(), &mut f).await;
    }
    // A rotation (and the retire after it) goes through the vault's own endpoint: prove it is
    // reachable from here before anything changes.
    if data_plane {
        f.reach = Some(match az.key_vault(&id) {
            Ok(kv) => facts::reach(&kv, &id).await,
            Err(e) => facts::Reach::Failed {
                detail: format!("{e:#}"),
                denied: false,
            },
        });
    }
    f.key_id = Some(id);
    Ok(f)
}

/// The key version's state through Resource Manager (any network, management-plane read).
async fn read_key(az: &super::context::Azure, id: &KeyId, hint: Option<&str>, f: &mut Facts) {
    let read = match az.key_reader(id, hint).await {
        Ok(r) => facts::key(&r, id).await.map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    match read {
        Ok(k) => f.key = Some(k),
        Err(e) => f.key_error = Some(format!("{e:#}")),
    }
}

pub async fn run(
    ctx: &Context,
    intent: Intent,
    params: &RunParams,
    data_plane: bool,
) -> anyhow::Result<Preflight> {
    let facts = gather(ctx, intent, params, data_plane).await?;
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
        "vaultResourceId": if facts.network_access == "Private" { facts.vault_resource_id.clone() } else { None },
        "keyVaultId": facts.vault.resource.as_ref().and_then(|v| v["id"].as_str()),
        "concurrencyCap": if facts.kube.apiserver_guard { Some(4) } else { None },
        "findings": findings,
    });
    Ok(Preflight {
        facts,
        findings,
        output,
    })
}
