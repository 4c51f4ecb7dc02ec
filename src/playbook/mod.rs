//! Procedures as data: the built-in YAML playbooks in playbooks/ (embedded in the binary) are
//! parsed into a validated `Procedure` that the one engine runs. No command hard-codes a sequence.

use serde::{Deserialize, Serialize};

/// The kind of change a procedure makes; decides which preflight checks apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Intent {
    Enable,
    Disable,
    Rotate,
    Reencrypt,
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
    /// The cluster reports exactly the requested KMS configuration; records it in the key ledger.
    VerifyKms,
    /// The canary is rewritten: the API server writes with the new key.
    ProveKeySwitch,
    /// Every Secret rewritten under the current key.
    Reencrypt,
    /// Between rotations: the previous and new versions are enabled and not expiring soon.
    CheckRotationWindow,
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
            Step::VerifyKms => "verify-kms",
            Step::ProveKeySwitch => "prove-key-switch",
            Step::Reencrypt => "reencrypt",
            Step::CheckRotationWindow => "check-rotation-window",
            Step::RetireOldest { .. } => "retire-oldest",
        }
    }

    /// The run parameter that must be true for this step to run, if any.
    pub fn condition(&self) -> Option<&str> {
        match self {
            Step::RetireOldest { when } => when.as_deref(),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Procedure {
    pub name: String,
    pub description: String,
    pub intent: Intent,
    pub steps: Vec<Step>,
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
];

#[derive(Debug, thiserror::Error)]
pub enum PlaybookError {
    #[error("no built-in playbook named '{0}'")]
    Unknown(String),
    #[error("playbook {name} is not valid: {message}")]
    Invalid { name: String, message: String },
}

pub fn parse(name: &str, text: &str) -> Result<Procedure, PlaybookError> {
    let p: Procedure = serde_saphyr::from_str(text).map_err(|e| PlaybookError::Invalid {
        name: name.to_string(),
        message: e.to_string(),
    })?;
    validate(&p).map_err(|message| PlaybookError::Invalid {
        name: name.to_string(),
        message,
    })?;
    Ok(p)
}

/// Orders that would be unsafe whatever the cluster: a change without preflight first, a key
/// switch without a canary planted before it, or re-encryption before the switch is proven.
fn validate(p: &Procedure) -> Result<(), String> {
    let changes = p.steps.iter().any(|s| {
        matches!(
            s,
            Step::UpdateKms { .. } | Step::RotateKey | Step::RetireOldest { .. }
        )
    });
    if changes && p.steps.first() != Some(&Step::Preflight) {
        return Err("a procedure that changes anything must start with preflight".into());
    }
    let mut planted = false;
    let mut switched = false;
    for s in &p.steps {
        match s {
            Step::PlantCanary => planted = true,
            Step::UpdateKms { .. } if !planted => {
                return Err("update-kms needs a plant-canary step before it".into());
            }
            Step::UpdateKms { .. } => switched = true,
            Step::ProveKeySwitch => {
                planted = false;
                switched = false;
            }
            Step::Reencrypt if switched => {
                return Err("reencrypt must come after prove-key-switch".into());
            }
            _ => {}
        }
    }
    Ok(())
}

pub fn built_in(name: &str) -> Result<Procedure, PlaybookError> {
    let (n, text) = BUILT_IN
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| PlaybookError::Unknown(name.to_string()))?;
    parse(n, text)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn unsafe_orders_are_refused() {
        let bad = "name: x\ndescription: d\nintent: rotate\nsteps:\n  - step: preflight\n  - step: plant-canary\n  - step: update-kms\n    enabled: true\n  - step: reencrypt\n";
        assert!(
            parse("x", bad)
                .unwrap_err()
                .to_string()
                .contains("prove-key-switch")
        );
        let no_preflight =
            "name: x\ndescription: d\nintent: rotate\nsteps:\n  - step: rotate-key\n";
        assert!(parse("x", no_preflight).is_err());
    }
}
