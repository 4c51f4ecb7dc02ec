//! Procedures as data: the built-in YAML playbooks in playbooks/ (embedded in the binary) and
//! users' own files are parsed into a validated `Procedure` that the one engine runs. No command
//! hard-codes a sequence.

pub mod params;
mod parse;
pub mod rules;

pub use parse::{PlaybookError, parse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The kind of change a procedure makes; decides which preflight checks apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Intent {
    Enable,
    Disable,
    Rotate,
    Reencrypt,
    /// KMS off, the key's vault changed between public and private, KMS on in the new mode.
    VaultMode,
    /// KMS off, Kubernetes upgraded to 1.27 or later, KMS on again (now KMS v2).
    MigrateV2,
}

/// The KMS protocol the API server speaks: v1 below Kubernetes 1.27, v2 from 1.27.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KmsVersion {
    V1,
    V2,
}

/// One typed step. Steps are idempotent: each re-reads the world before acting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    /// Every documented limit that can be checked; refuses before any change.
    Preflight,
    /// Makes sure the canary Secret exists and notes its resourceVersion.
    PlantCanary,
    /// A new key version through Key Vault's rotate operation.
    RotateKey,
    /// Sets `securityProfile.azureKeyVaultKms` (GET, change, PUT with If-Match) and waits for the operation.
    UpdateKms { enabled: bool },
    /// The cluster reports exactly the requested KMS configuration (and, when asked, the KMS
    /// version its API server speaks); records it in the key ledger.
    VerifyKms {
        #[serde(
            default,
            rename = "kmsVersion",
            skip_serializing_if = "Option::is_none"
        )]
        kms_version: Option<KmsVersion>,
    },
    /// The canary is rewritten: the API server writes with the new key.
    ProveKeySwitch,
    /// Every Secret rewritten under the current key.
    Reencrypt,
    /// Between rotations: the previous and new versions are enabled and not expiring soon.
    CheckRotationWindow,
    /// The key's vault gets the network access the run's mode needs (private: public access
    /// disabled, firewall deny; public: enabled, allow). Never while KMS would lose the vault.
    SetVaultNetwork,
    /// Kubernetes upgraded one minor version at a time (latest patch) up to the run's target.
    UpgradeKubernetes,
    /// Disables (never deletes) the version in use before this run's rotations.
    RetireOldest {
        #[serde(default)]
        when: Option<String>,
    },
}

impl Step {
    pub fn name(&self) -> &'static str {
        match self {
            Step::Preflight => "preflight",
            Step::PlantCanary => "plant-canary",
            Step::RotateKey => "rotate-key",
            Step::UpdateKms { .. } => "update-kms",
            Step::VerifyKms { .. } => "verify-kms",
            Step::ProveKeySwitch => "prove-key-switch",
            Step::Reencrypt => "reencrypt",
            Step::CheckRotationWindow => "check-rotation-window",
            Step::SetVaultNetwork => "set-vault-network",
            Step::UpgradeKubernetes => "upgrade-kubernetes",
            Step::RetireOldest { .. } => "retire-oldest",
        }
    }

    /// The fields the step takes besides `step:`, as written in YAML. Any other key is refused
    /// when the file is read.
    pub fn fields(&self) -> &'static [&'static str] {
        match self {
            Step::UpdateKms { .. } => &["enabled"],
            Step::VerifyKms { .. } => &["kmsVersion"],
            Step::RetireOldest { .. } => &["when"],
            Step::Preflight
            | Step::PlantCanary
            | Step::RotateKey
            | Step::ProveKeySwitch
            | Step::Reencrypt
            | Step::CheckRotationWindow
            | Step::SetVaultNetwork
            | Step::UpgradeKubernetes => &[],
        }
    }

    /// The run parameter that must be true for this step to run, if any.
    pub fn condition(&self) -> Option<&str> {
        match self {
            Step::RetireOldest { when } => when.as_deref(),
            _ => None,
        }
    }

    /// Whether the step changes anything outside kmsctl's own records.
    pub fn changes(&self) -> bool {
        matches!(
            self,
            Step::UpdateKms { .. }
                | Step::RotateKey
                | Step::RetireOldest { .. }
                | Step::SetVaultNetwork
                | Step::UpgradeKubernetes
        )
    }

    /// The step with its arguments, as a plan shows it.
    pub fn describe(&self) -> String {
        match self {
            Step::UpdateKms { enabled } => format!("update-kms enabled={enabled}"),
            Step::VerifyKms {
                kms_version: Some(v),
            } => format!("verify-kms (KMS {v:?})").to_lowercase(),
            Step::RetireOldest { when: Some(w) } => format!("retire-oldest when {w}"),
            s => s.name().to_string(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Procedure {
    pub name: String,
    pub description: String,
    pub intent: Intent,
    /// Parameter defaults (the names `--set` takes); the command line overrides them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
    pub steps: Vec<Step>,
}

impl Procedure {
    /// Whether a step goes through the vault's data plane (rotate a key, disable a version):
    /// such a run must prove it reaches the vault before it changes anything.
    pub fn uses_data_plane(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::RotateKey | Step::RetireOldest { .. }))
    }
}

const BUILT_IN: &[(&str, &str)] = &[
    ("enable", include_str!("../../playbooks/enable.yaml")),
    ("disable", include_str!("../../playbooks/disable.yaml")),
    ("rotate", include_str!("../../playbooks/rotate.yaml")),
    (
        "rotate-twice",
        include_str!("../../playbooks/rotate-twice.yaml"),
    ),
    ("reencrypt", include_str!("../../playbooks/reencrypt.yaml")),
    (
        "vault-mode",
        include_str!("../../playbooks/vault-mode.yaml"),
    ),
    (
        "migrate-v2",
        include_str!("../../playbooks/migrate-v2.yaml"),
    ),
];

/// The names of the built-in playbooks.
/// A built-in playbook's YAML, as shipped (`kmsctl plan NAME --yaml`).
pub fn built_in_source(name: &str) -> Option<&'static str> {
    BUILT_IN.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

pub fn built_in_names() -> impl Iterator<Item = &'static str> {
    BUILT_IN.iter().map(|(n, _)| *n)
}

pub fn built_in(name: &str) -> Result<Procedure, PlaybookError> {
    let (n, text) = BUILT_IN
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| PlaybookError::Unknown(name.to_string()))?;
    parse(&format!("playbooks/{n}.yaml"), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rotations_use_the_vaults_data_plane() {
        for name in built_in_names() {
            let p = built_in(name).unwrap();
            assert_eq!(
                p.uses_data_plane(),
                p.intent == Intent::Rotate,
                "{name}: {:?}",
                p.steps
            );
        }
    }

    #[test]
    fn fields_are_the_keys_each_step_writes() {
        let every = [
            Step::Preflight,
            Step::PlantCanary,
            Step::RotateKey,
            Step::UpdateKms { enabled: true },
            Step::VerifyKms {
                kms_version: Some(KmsVersion::V2),
            },
            Step::ProveKeySwitch,
            Step::Reencrypt,
            Step::CheckRotationWindow,
            Step::SetVaultNetwork,
            Step::UpgradeKubernetes,
            Step::RetireOldest {
                when: Some("retireOld".into()),
            },
        ];
        for s in every {
            let v = serde_json::to_value(&s).unwrap();
            let mut keys: Vec<&str> = v
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "step")
                .collect();
            keys.sort();
            assert_eq!(keys, s.fields(), "{}", s.name());
        }
    }

    #[test]
    fn built_ins_parse_and_are_safe() {
        for (name, _) in BUILT_IN {
            let p = built_in(name).unwrap();
            assert_eq!(&p.name, name);
        }
        let twice = built_in("rotate-twice").unwrap();
        assert_eq!(
            twice
                .steps
                .iter()
                .filter(|s| **s == Step::Reencrypt)
                .count(),
            2
        );
        assert_eq!(twice.steps.last().unwrap().condition(), Some("retireOld"));
        let v2 = built_in("migrate-v2").unwrap();
        assert!(v2.steps.contains(&Step::UpgradeKubernetes));
        assert!(v2.steps.contains(&Step::VerifyKms {
            kms_version: Some(KmsVersion::V2)
        }));
    }
}
