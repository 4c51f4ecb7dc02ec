//! `kmsctl check-expiry --fix`: the two remedies of shared/domain.md §4, applied to the version
//! the cluster uses. `extend=90d` sets a later expiry on it (never on a disabled one, never
//! earlier than it is); `rotate` runs the rotate playbook.

use super::Refusal;
use crate::azure::keys::KeyId;
use crate::checks::expiry::parse_duration;
use crate::cli::{ExpiryArgs, RotateArgs};
use crate::engine::context::Azure;
use crate::output::Format;
use clap::{Args, FromArgMatches};

#[derive(Clone, Debug, PartialEq)]
pub enum Fix {
    Extend(chrono::Duration),
    Rotate,
}

pub fn parse(s: &str) -> Result<Fix, String> {
    match s.split_once('=') {
        Some(("extend", d)) => {
            let d = parse_duration(d)?;
            Ok(Fix::Extend(chrono::Duration::seconds(d.as_secs() as i64)))
        }
        None if s == "rotate" => Ok(Fix::Rotate),
        _ => Err(format!(
            "'{s}': use extend=<duration> (e.g. extend=90d) or rotate"
        )),
    }
}

/// Sets the in-use version's expiry to now + `by`, after confirmation.
pub async fn extend(az: &Azure, by: chrono::Duration, yes: bool) -> anyhow::Result<()> {
    let c = az.arm.get(&az.cluster_path, &az.arm.api.aks).await?.body;
    let kms = &c["properties"]["securityProfile"]["azureKeyVaultKms"];
    let id = kms["keyId"]
        .as_str()
        .filter(|_| kms["enabled"].as_bool() == Some(true))
        .and_then(|k| KeyId::parse(k).ok())
        .ok_or_else(|| {
            Refusal(
                "KMS is off or its key id is not versioned: there is no version in use to extend"
                    .into(),
            )
        })?;
    let kv = az.key_vault(&id)?;
    let v = kv.version(&id).await?;
    if !v.enabled {
        return Err(Refusal(format!(
            "{id} is disabled; kmsctl never extends a disabled version. Enable it first if it must serve (az keyvault key set-attributes --enabled true), or rotate"
        ))
        .into());
    }
    let new = chrono::Utc::now() + by;
    if v.expires_on.is_some_and(|e| e >= new) {
        return Err(Refusal(format!(
            "{id} already expires on {}, not before {new}: nothing to extend",
            v.expires_on.unwrap_or_default()
        ))
        .into());
    }
    let question = format!(
        "Set the expiry of {id} (in use by the cluster) from {} to {new}?",
        v.expires_on.map_or("none".to_string(), |e| e.to_string())
    );
    if !yes && !super::lifecycle::confirm(&question).await? {
        return Err(Refusal("not confirmed: nothing was changed".into()).into());
    }
    kv.set_expiry(&id, new).await?;
    let after = kv.version(&id).await?;
    if after.expires_on.map(|e| e.timestamp()) != Some(new.timestamp()) {
        anyhow::bail!(
            "Key Vault says {id} expires on {:?} after kmsctl set {new}",
            after.expires_on
        );
    }
    eprintln!("{id} now expires on {new}");
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
