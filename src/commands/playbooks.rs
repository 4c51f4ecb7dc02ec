//! `vault-mode`, `migrate-v2`, `run FILE` and `plan`: playbooks on the one engine. The first two
//! are built-in playbooks with their parameters from flags; `run` takes a user's file.

use super::Refusal;
use super::lifecycle::{params, refuse_scoped, start};
use crate::cli::{ChangeArgs, MigrateArgs, NetworkAccess, PlanArgs, RunArgs, VaultModeArgs};
use crate::engine::context::Context;
use crate::engine::journal::RunParams;
use crate::exit_codes;
use crate::output::run::render_plan;
use crate::output::{Format, out, print_json};
use crate::playbook::{self, Intent, Procedure, params as playbook_params};
use serde_json::{Value, json};

fn mode(m: NetworkAccess) -> &'static str {
    match m {
        NetworkAccess::Public => "Public",
        NetworkAccess::Private => "Private",
    }
}

pub async fn vault_mode(a: VaultModeArgs, format: Format) -> anyhow::Result<i32> {
    refuse_scoped(&a.change)?;
    let mut p = params(&a.change);
    let to = mode(a.to);
    if a.to == NetworkAccess::Public && a.vault_resource_id.is_some() {
        return Err(Refusal(
            "--vault-resource-id is for private mode: public mode takes none".into(),
        )
        .into());
    }
    playbook_params::set(&mut p, "networkAccess", to).map_err(Refusal)?;
    if let Some(id) = &a.vault_resource_id {
        playbook_params::set(&mut p, "vaultResourceId", id).map_err(Refusal)?;
    }
    // Another vault is a plain update: AKS allows it with KMS on. (A key of the vault KMS uses
    // now is refused by enable's preflight, since that vault's mode cannot change with KMS on.)
    if let Some(key) = &a.key_id {
        playbook_params::set(&mut p, "keyId", key).map_err(Refusal)?;
        if a.to == NetworkAccess::Private && a.vault_resource_id.is_none() {
            return Err(Refusal(
                "--key-id with --to private needs --vault-resource-id of the key's vault".into(),
            )
            .into());
        }
        crate::say!(
            "--key-id names a key to move KMS to: pointing KMS at a different vault is a plain update with KMS on (no off/on, no vault change); running `enable` with it"
        );
        return start(playbook::built_in("enable")?, &a.change, p, format).await;
    }
    start(playbook::built_in("vault-mode")?, &a.change, p, format).await
}

pub async fn migrate_v2(a: MigrateArgs, format: Format) -> anyhow::Result<i32> {
    refuse_scoped(&a.change)?;
    let mut p = params(&a.change);
    if let Some(v) = &a.target_version {
        playbook_params::set(&mut p, "targetVersion", v).map_err(Refusal)?;
    }
    start(playbook::built_in("migrate-v2")?, &a.change, p, format).await
}

/// A playbook named on the command line: a file if one exists there, else a built-in name.
fn load(name: &str) -> anyhow::Result<Procedure> {
    let path = std::path::Path::new(name);
    if path.is_file() || name.ends_with(".yaml") || name.ends_with(".yml") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Refusal(format!("cannot read playbook {name}: {e}")))?;
        return Ok(playbook::parse(name, &text).map_err(|e| Refusal(e.to_string()))?);
    }
    Ok(playbook::built_in(name).map_err(|e| Refusal(e.to_string()))?)
}

fn resolved(procedure: &Procedure, c: &ChangeArgs, sets: &[String]) -> anyhow::Result<RunParams> {
    let mut p = params(c);
    playbook_params::resolve(&mut p, procedure, sets).map_err(Refusal)?;
    Ok(p)
}

pub async fn run(a: RunArgs, format: Format) -> anyhow::Result<i32> {
    refuse_scoped(&a.change)?;
    let procedure = load(&a.file.display().to_string())?;
    let p = resolved(&procedure, &a.change, &a.set)?;
    start(procedure, &a.change, p, format).await
}

pub async fn plan(a: PlanArgs, format: Format) -> anyhow::Result<i32> {
    if a.change.yes {
        return Err(Refusal("plan changes nothing, so it asks nothing: --yes is for `kmsctl run FILE` and the lifecycle commands".into()).into());
    }
    if a.yaml {
        let source = match playbook::built_in_source(&a.playbook) {
            Some(s) => s.to_string(),
            None => std::fs::read_to_string(&a.playbook).map_err(|e| {
                Refusal(format!(
                    "no built-in playbook '{}' ({}) and no such file: {e}",
                    a.playbook,
                    playbook::built_in_names().collect::<Vec<_>>().join(", ")
                ))
            })?,
        };
        out(&source);
        return Ok(exit_codes::OK);
    }
    let procedure = load(&a.playbook)?;
    let p = resolved(&procedure, &a.change, &a.set)?;
    if a.offline {
        match format {
            Format::Json => print_json(&json!({ "plan": procedure, "params": p })),
            Format::Text | Format::Prometheus | Format::Html => out(&format!(
                "{}{}",
                render_plan(&procedure, |f| p.flag(f)),
                render_params(&procedure, &p)
            )),
        }
        return Ok(exit_codes::OK);
    }
    let mut change = a.change.clone();
    change.dry_run = true;
    start(procedure, &change, p, format).await
}

/// The parameters a plan resolved that its playbook reads, as `--set` would write them.
fn render_params(procedure: &Procedure, p: &RunParams) -> String {
    let v = serde_json::to_value(p).unwrap_or(Value::Null);
    let used = playbook_params::used(procedure);
    if used.is_empty() {
        return "parameters: none\n".into();
    }
    let mut out = String::from("parameters:\n");
    for name in used {
        let field = match name {
            "switchTimeoutSeconds" => "barrierTimeoutSeconds",
            n => n,
        };
        match v.get(field) {
            Some(Value::String(s)) => out.push_str(&format!("  {name}={s}\n")),
            Some(Value::Null) | None => {}
            Some(other) => out.push_str(&format!("  {name}={other}\n")),
        }
    }
    out
}

/// A run that would change nothing: said before any lease, preflight or confirmation.
pub async fn nothing_to_do(
    ctx: &Context,
    intent: Intent,
    p: &RunParams,
) -> anyhow::Result<Option<String>> {
    if !matches!(intent, Intent::VaultMode | Intent::MigrateV2) {
        return Ok(None);
    }
    let Some(az) = &ctx.azure else {
        return Ok(None);
    };
    let c = az.arm.get(&az.cluster_path, &az.arm.api.aks).await?.body;
    let kms = c
        .pointer("/properties/securityProfile/azureKeyVaultKms")
        .cloned()
        .unwrap_or(Value::Null);
    let enabled = kms["enabled"].as_bool() == Some(true);
    let version = c["properties"]["currentKubernetesVersion"]
        .as_str()
        .unwrap_or_default();
    Ok(match intent {
        Intent::MigrateV2 if !enabled => Some(format!(
            "KMS is off on this cluster (Kubernetes {version}): there is no KMS v1 to migrate. Upgrade as usual; enabling KMS on 1.27+ gives KMS v2"
        )),
        Intent::MigrateV2
            if crate::checks::facts::minor(version)
                >= Some(crate::engine::upgrade::KMS_V2_FROM) =>
        {
            Some(format!(
                "the cluster runs Kubernetes {version}: its KMS is v2 already"
            ))
        }
        Intent::VaultMode
            if enabled
                && p.network_access.as_deref().is_some_and(|m| {
                    kms["keyVaultNetworkAccess"]
                        .as_str()
                        .unwrap_or("Public")
                        .eq_ignore_ascii_case(m)
                }) =>
        {
            Some(format!(
                "KMS already uses its vault in {} mode",
                p.network_access.as_deref().unwrap_or_default()
            ))
        }
        _ => None,
    })
}
