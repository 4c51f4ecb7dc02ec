//! The parameters a playbook run takes: defaults in the playbook's `params:`, overridden by
//! `--set NAME=VALUE`. Each is checked when it is set, so a typo changes nothing.

use super::{Intent, Procedure, Step};
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

/// The parameters a run of `p` reads, in `KNOWN`'s order: what its intent's preflight reads (the
/// preflight runs before confirmation, whatever the steps) and what its steps read. Setting any
/// other would be silently ignored.
pub fn used(p: &Procedure) -> Vec<&'static str> {
    let has = |f: fn(&Step) -> bool| p.steps.iter().any(f);
    let lifecycle = p.intent != Intent::Reencrypt;
    KNOWN
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| match *name {
            "keyId" => p.intent == Intent::Enable,
            // Other intents keep the cluster's mode (a migration enables KMS again as it was).
            "networkAccess" | "vaultResourceId" => {
                matches!(p.intent, Intent::Enable | Intent::VaultMode)
            }
            "targetVersion" => {
                p.intent == Intent::MigrateV2 || has(|s| *s == Step::UpgradeKubernetes)
            }
            // Key expiry is checked by every preflight that reads the key.
            "marginDays" => lifecycle || has(|s| *s == Step::CheckRotationWindow),
            // The proof's barrier, also waited on by a lifecycle reencrypt whose verification
            // pass still rewrote Secrets.
            "switchTimeoutSeconds" | "kmsStatusPeriodSeconds" => {
                has(|s| *s == Step::ProveKeySwitch) || (lifecycle && has(|s| *s == Step::Reencrypt))
            }
            flag => p.steps.iter().any(|s| s.condition() == Some(flag)),
        })
        .collect()
}

/// Refuses a parameter that `p` would not read, naming those it does.
pub fn check_used(p: &Procedure, key: &str) -> Result<(), String> {
    let used = used(p);
    if used.contains(&key) || !KNOWN.iter().any(|(k, _)| *k == key) {
        return Ok(());
    }
    Err(format!(
        "the {} playbook (intent {}) does not use `{key}`; it uses: {}",
        p.name,
        serde_json::to_value(p.intent)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        if used.is_empty() {
            "none".to_string()
        } else {
            used.join(", ")
        }
    ))
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

/// The playbook's defaults, then each `NAME=VALUE` from the command line; a name the playbook
/// does not use is refused rather than ignored.
pub fn resolve(p: &mut RunParams, procedure: &Procedure, sets: &[String]) -> Result<(), String> {
    for (k, v) in &procedure.params {
        set(p, k, &text(v))?;
    }
    for s in sets {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("--set {s}: write NAME=VALUE"))?;
        let k = k.trim();
        check_used(procedure, k).map_err(|e| format!("--set {k}: {e}"))?;
        set(p, k, v.trim())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_checks_each_value() {
        let mut p = RunParams::default();
        let vault_mode = crate::playbook::built_in("vault-mode").unwrap();
        resolve(&mut p, &vault_mode, &["networkAccess=private".into()]).unwrap();
        assert_eq!(p.network_access.as_deref(), Some("Private"));
        let migrate = crate::playbook::built_in("migrate-v2").unwrap();
        resolve(&mut p, &migrate, &["targetVersion=1.28".into()]).unwrap();
        assert_eq!(p.target_version.as_deref(), Some("1.28"));
        assert!(set(&mut p, "networkAccess", "internal").is_err());
        assert!(set(&mut p, "keyId", "https://v.vault.azure.net/keys/k").is_err());
        assert!(set(&mut p, "marginDays", "-3").is_err());
        assert!(
            set(&mut p, "keyid", "x")
                .unwrap_err()
                .starts_with("unknown parameter `keyid`")
        );
        assert!(resolve(&mut p, &migrate, &["retireOld".into()]).is_err());
    }

    fn uses(name: &str) -> Vec<&'static str> {
        used(&crate::playbook::built_in(name).unwrap())
    }

    #[test]
    fn each_built_in_uses_what_its_intent_and_steps_read() {
        let proof = ["switchTimeoutSeconds", "kmsStatusPeriodSeconds"];
        let with = |first: &[&'static str], last: &[&'static str]| -> Vec<&'static str> {
            [first, &proof, last].concat()
        };
        assert_eq!(
            uses("enable"),
            with(
                &["keyId", "networkAccess", "vaultResourceId", "marginDays"],
                &[]
            )
        );
        assert_eq!(uses("disable"), with(&["marginDays"], &[]));
        assert_eq!(uses("rotate"), with(&["marginDays"], &[]));
        assert_eq!(
            uses("rotate-twice"),
            with(&["retireOld", "marginDays"], &[])
        );
        assert_eq!(
            uses("vault-mode"),
            with(&["networkAccess", "vaultResourceId", "marginDays"], &[])
        );
        assert_eq!(
            uses("migrate-v2"),
            with(&["targetVersion", "marginDays"], &[])
        );
        // A standalone re-encryption reads none of them.
        assert!(uses("reencrypt").is_empty());
    }

    #[test]
    fn a_parameter_the_playbook_does_not_read_is_refused_by_name() {
        let rotate = crate::playbook::built_in("rotate").unwrap();
        let e = resolve(
            &mut RunParams::default(),
            &rotate,
            &["keyId=https://v.vault.azure.net/keys/k/1".into()],
        )
        .unwrap_err();
        assert_eq!(
            e,
            "--set keyId: the rotate playbook (intent rotate) does not use `keyId`; it uses: marginDays, switchTimeoutSeconds, kmsStatusPeriodSeconds"
        );
        let reencrypt = crate::playbook::built_in("reencrypt").unwrap();
        let e = check_used(&reencrypt, "marginDays").unwrap_err();
        assert!(e.ends_with("it uses: none"), "{e}");
        // retireOld is read only where a step's `when:` names it.
        assert!(check_used(&rotate, "retireOld").is_err());
        let twice = crate::playbook::built_in("rotate-twice").unwrap();
        assert_eq!(check_used(&twice, "retireOld"), Ok(()));
        // An unknown name is left to `set`, which lists the known ones.
        assert_eq!(check_used(&rotate, "marginDay"), Ok(()));
        let e = resolve(&mut RunParams::default(), &rotate, &["marginDay=3".into()]).unwrap_err();
        assert!(e.starts_with("unknown parameter `marginDay`"), "{e}");
    }
}
