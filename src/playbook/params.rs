//! The parameters a playbook run takes: defaults in the playbook's `params:`, overridden by
//! `--set NAME=VALUE`. Each is checked when it is set, so a typo changes nothing.

use crate::engine::journal::RunParams;
use serde_json::Value;

/// Every parameter name, as written in a playbook or after `--set`.
pub const KNOWN: &[(&str, &str)] = &[
    (
        "keyId",
        "versioned key id https://<vault>.vault.azure.net/keys/<name>/<version>",
    ),
    ("networkAccess", "Public or Private"),
    ("vaultResourceId", "the vault's resource id (private mode)"),
    (
        "targetVersion",
        "Kubernetes version to upgrade to, 1.x or 1.x.y",
    ),
    (
        "retireOld",
        "true or false: disable the oldest version after two rotations",
    ),
    (
        "marginDays",
        "days a key version in use must stay valid at least",
    ),
    (
        "switchTimeoutSeconds",
        "how long to wait for every API server to write with the new key",
    ),
    (
        "kmsStatusPeriodSeconds",
        "how often an API server asks its KMS plugin for the key id",
    ),
];

/// Parameters a step's `when:` may name.
pub const FLAGS: &[&str] = &["retireOld"];

pub fn is_flag(name: &str) -> bool {
    FLAGS.contains(&name)
}

fn number<T: std::str::FromStr>(key: &str, raw: &str) -> Result<T, String> {
    raw.parse()
        .map_err(|_| format!("{key}={raw}: not a whole number"))
}

/// Sets one parameter from its text form.
pub fn set(p: &mut RunParams, key: &str, raw: &str) -> Result<(), String> {
    match key {
        "keyId" => {
            crate::azure::keys::KeyId::parse(raw).map_err(|e| format!("keyId={raw}: {e}"))?;
            p.key_id = Some(raw.to_string());
        }
        "networkAccess" => {
            p.network_access = Some(match raw.to_ascii_lowercase().as_str() {
                "public" => "Public".into(),
                "private" => "Private".into(),
                _ => return Err(format!("networkAccess={raw}: use Public or Private")),
            })
        }
        "vaultResourceId" => {
            let l = raw.to_ascii_lowercase();
            if !(l.starts_with("/subscriptions/")
                && l.contains("/providers/microsoft.keyvault/vaults/"))
            {
                return Err(format!(
                    "vaultResourceId={raw}: not a vault resource id (/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.KeyVault/vaults/<name>)"
                ));
            }
            p.vault_resource_id = Some(raw.to_string());
        }
        "targetVersion" => {
            if crate::checks::facts::minor(raw).is_none() {
                return Err(format!(
                    "targetVersion={raw}: not a Kubernetes version (1.x or 1.x.y)"
                ));
            }
            p.target_version = Some(raw.trim_start_matches('v').to_string());
        }
        "retireOld" => {
            p.retire_old = match raw {
                "true" | "yes" => true,
                "false" | "no" => false,
                _ => return Err(format!("retireOld={raw}: use true or false")),
            }
        }
        "marginDays" => p.margin_days = number(key, raw)?,
        "switchTimeoutSeconds" => p.barrier_timeout_seconds = number(key, raw)?,
        "kmsStatusPeriodSeconds" => p.kms_status_period_seconds = number(key, raw)?,
        _ => {
            return Err(format!(
                "unknown parameter `{key}` (known: {})",
                KNOWN.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Checks a playbook's default for `key` without a run to apply it to.
pub fn check_default(key: &str, value: &Value) -> Result<(), String> {
    set(&mut RunParams::default(), key, &text(value))
}

/// The playbook's defaults, then each `NAME=VALUE` from the command line.
pub fn resolve(
    p: &mut RunParams,
    defaults: &std::collections::BTreeMap<String, Value>,
    sets: &[String],
) -> Result<(), String> {
    for (k, v) in defaults {
        set(p, k, &text(v))?;
    }
    for s in sets {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("--set {s}: write NAME=VALUE"))?;
        set(p, k.trim(), v.trim())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_checks_each_value() {
        let mut p = RunParams::default();
        resolve(
            &mut p,
            &Default::default(),
            &["networkAccess=private".into(), "targetVersion=1.28".into()],
        )
        .unwrap();
        assert_eq!(p.network_access.as_deref(), Some("Private"));
        assert_eq!(p.target_version.as_deref(), Some("1.28"));
        assert!(set(&mut p, "networkAccess", "internal").is_err());
        assert!(set(&mut p, "keyId", "https://v.vault.azure.net/keys/k").is_err());
        assert!(set(&mut p, "marginDays", "-3").is_err());
        assert!(
            set(&mut p, "keyid", "x")
                .unwrap_err()
                .starts_with("unknown parameter `keyid`")
        );
        assert!(resolve(&mut p, &Default::default(), &["retireOld".into()]).is_err());
    }
}
