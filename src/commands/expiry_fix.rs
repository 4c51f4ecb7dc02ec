//! `kmsctl check-expiry --fix`: the two remedies of shared/domain.md §4. `extend=90d` sets a
//! later expiry on the versions that make the check fail, the key ledger's included (never on a
//! disabled one, never earlier than it is, never on one without an expiry); `rotate` runs the
//! rotate playbook.

use super::Refusal;
use super::expiry::{ClusterReport, Extension};
use crate::azure::keys::KeyId;
use crate::checks::expiry::{ExtendPlan, Status, plan_extension};
use crate::cli::{ExpiryArgs, RotateArgs};
use crate::engine::context::Azure;
use crate::output::Format;
use clap::{Args, FromArgMatches};

pub use crate::checks::expiry::{Fix, parse_fix as parse};

/// `--fix extend` could not read what it would act on: the check's UNKNOWN (exit 3), not a
/// refusal of the request. Nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// What `--fix extend` did: the expiries it set, and the version it failed on (the others
/// after it were left as they were), if one.
#[derive(Debug, Default)]
pub struct Extended {
    pub done: Vec<Extension>,
    pub failed: Option<String>,
}

/// Sets a new expiry, now + `by`, on each version that makes `report` WARNING or CRITICAL (the
/// one in use and the ones the key ledger says must stay alive), after confirmation; returns
/// what it changed. Refuses, changing nothing, when one of those cannot be helped by a later
/// expiry (disabled, not yet valid) or would get an earlier one; a version it could not read is
/// `Unreadable` (UNKNOWN). With nothing in a window (the check is OK) it changes nothing and
/// says so. A failure part-way is returned in `failed`, with what was changed before it.
pub async fn extend(
    az: &Azure,
    report: &ClusterReport,
    by: chrono::Duration,
    yes: bool,
) -> anyhow::Result<Extended> {
    let now = chrono::Utc::now();
    let new = now.checked_add_signed(by).ok_or_else(|| {
        Refusal(format!(
            "--fix extend: now + {} days is past the last date kmsctl can write: nothing was changed",
            by.num_days()
        ))
    })?;
    let mut targets = Vec::new();
    let mut skipped = Vec::new();
    if report.versions.is_empty() || report.status == Status::Unknown {
        let unread: Vec<String> = report
            .versions
            .iter()
            .filter(|v| v.needed && v.status == Status::Unknown)
            .map(|v| format!("{}: {}", v.key_id, v.note))
            .chain(report.notes.iter().cloned())
            .collect();
        return Err(Unreadable(format!(
            "--fix extend: the check could not read what it would extend ({}): nothing was changed",
            unread.join("; ")
        ))
        .into());
    }
    for v in &report.versions {
        match plan_extension(v, now, new) {
            ExtendPlan::Extend => targets.push(v),
            ExtendPlan::Skip(why) if v.needed => skipped.push(format!("{}: {why}", v.key_id)),
            ExtendPlan::Skip(_) => {}
            ExtendPlan::Refuse(why) => return Err(Refusal(why).into()),
        }
    }
    for s in &skipped {
        crate::say!("left as it is: {s}");
    }
    if targets.is_empty() {
        // Nothing is inside a window: there was nothing to do, which is no refusal.
        crate::say!(
            "nothing needed extending: no version the cluster needs is inside the warning or critical window (the check is {})",
            report.status.label()
        );
        return Ok(Extended::default());
    }
    let list: Vec<String> = targets
        .iter()
        .map(|v| {
            format!(
                "  {} ({}): {} -> {new}",
                v.key_id,
                v.roles.join(","),
                v.expires_on.map_or("none".to_string(), |e| e.to_string())
            )
        })
        .collect();
    // Setting an expiry goes through the vault's data plane: prove it is reachable from here
    // before asking, so nothing is half done.
    for v in &targets {
        reach(az, &v.key_id).await?;
    }
    let question = format!("Set these expiries?\n{}\n", list.join("\n"));
    if !yes && !super::lifecycle::confirm(&question).await? {
        return Err(Refusal("not confirmed: nothing was changed".into()).into());
    }
    let mut done = Vec::new();
    for v in targets {
        if let Err(e) = set_one(az, &v.key_id, new).await {
            // Stop at the first failure; what was set before it is reported with the check
            // that follows, which says what is still wrong.
            let failed = format!(
                "--fix extend could not set the expiry of {}: {e:#}. {} changed before it; the versions after it were left as they were",
                v.key_id,
                if done.is_empty() {
                    "nothing was".to_string()
                } else {
                    format!("{} version(s) listed as extended were", done.len())
                }
            );
            crate::say!("{failed}");
            return Ok(Extended {
                done,
                failed: Some(failed),
            });
        }
        let x = Extension {
            key_id: v.key_id.clone(),
            roles: v.roles.clone(),
            from: v.expires_on,
            to: new,
        };
        print_done(&x);
        done.push(x);
    }
    Ok(Extended { done, failed: None })
}

fn print_done(x: &Extension) {
    crate::say!(
        "extended {}: {} -> {}",
        x.key_id,
        x.from.map_or("no expiry".to_string(), |f| f.to_string()),
        x.to
    );
}

/// Refuses (nothing changed) when the version's vault cannot be reached on its data plane.
async fn reach(az: &Azure, key_id: &str) -> anyhow::Result<()> {
    use crate::checks::facts::{self, Reach};
    let id = KeyId::parse(key_id).map_err(anyhow::Error::msg)?;
    match facts::reach(&az.key_vault(&id)?, &id).await {
        Reach::Reached => Ok(()),
        Reach::Blocked { block, detail } => {
            let vault = match az.key_reader(&id, None).await {
                Ok(r) => az.arm.get(&r.vault_id, &az.arm.api.key_vault).await.ok(),
                Err(_) => None,
            };
            let vault = vault.map(|a| a.body);
            Err(Refusal(format!(
                "{}. Nothing was changed. Ways forward: {}",
                crate::checks::reach::message(id.vault_name(), vault.as_ref(), block, &detail),
                crate::checks::reach::ways_forward_for(vault.as_ref(), block)
            ))
            .into())
        }
        Reach::Failed { detail, .. } => Err(Refusal(format!(
            "{id} could not be read on the vault's data plane, which setting its expiry needs: {detail}. Nothing was changed"
        ))
        .into()),
    }
}

/// Sets one version's expiry and reads it back.
async fn set_one(
    az: &Azure,
    key_id: &str,
    new: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let id = KeyId::parse(key_id).map_err(anyhow::Error::msg)?;
    let kv = az.key_vault(&id)?;
    kv.set_expiry(&id, new).await.map_err(|e| match e.network_block() {
        Some(block) => anyhow::anyhow!(
            "setting the expiry of {id}: the vault's network refused this machine ({block}: {e}); the versions listed above as extended were changed, this one was not. {}",
            crate::checks::reach::ways_forward(None)
        ),
        None => e.into(),
    })?;
    let after = az.key_reader(&id, None).await?.version(&id).await?;
    if after.expires_on.map(|e| e.timestamp()) != Some(new.timestamp()) {
        anyhow::bail!(
            "Key Vault says {id} expires on {:?} after kmsctl set {new}",
            after.expires_on
        );
    }
    Ok(())
}

/// Runs `kmsctl rotate` for the same cluster, with the same target flags.
pub async fn rotate(a: &ExpiryArgs, format: Format) -> anyhow::Result<i32> {
    let t = &a.target;
    let mut argv: Vec<String> = vec!["rotate".into()];
    let mut flag = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            argv.push(name.into());
            argv.push(v);
        }
    };
    flag("--subscription", t.subscription.clone());
    flag("--resource-group", t.resource_group.clone());
    flag("--name", t.cluster.clone());
    flag(
        "--kubeconfig",
        t.kube.kubeconfig.as_ref().map(|p| p.display().to_string()),
    );
    flag("--context", t.kube.context.clone());
    flag(
        "--kube-credentials",
        t.kube_credentials.map(|k| {
            clap::ValueEnum::to_possible_value(&k)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default()
        }),
    );
    flag("--aks-api-version", Some(t.aks_api_version.clone()));
    flag(
        "--state-dir",
        t.state.state_dir.as_ref().map(|p| p.display().to_string()),
    );
    if a.yes {
        argv.push("--yes".into());
    }
    // Parsed by clap, so the rotate command's defaults and environment apply as on its own.
    let cmd = RotateArgs::augment_args(clap::Command::new("rotate"));
    let matches = cmd.try_get_matches_from(&argv)?;
    let mut r = RotateArgs::from_arg_matches(&matches)?;
    r.change.target.auth = t.auth;
    super::lifecycle::rotate(r, format).await
}
