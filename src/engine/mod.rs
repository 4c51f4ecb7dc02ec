//! The lifecycle engine: one runner executes a procedure's typed steps (from a playbook),
//! journaling each before and after it runs, verifying the cluster after every change, and
//! continuing a killed run from its journal.

pub mod cluster;
pub mod context;
pub mod events;
pub mod journal;
pub mod kms;
pub mod preflight;
pub mod proof;
pub mod runner;
pub mod session;
pub mod state;
pub mod steps;
pub mod summary;
pub mod upgrade;
pub mod vault_network;

use crate::exit_codes;

/// Why a step stopped the run; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{0}")]
    Refused(String),
    #[error("verification failed: {0}")]
    Verification(String),
    #[error("{} Secrets could not be re-encrypted; they stay under the old key, which must stay alive. Fix the cause and run `kmsctl resume`", .0.totals.failed)]
    Incomplete(Box<crate::reencrypt::Summary>),
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
    /// A refusal after this run had already changed something: the step changed nothing, but
    /// the cluster is not where the run found it, so this is resumable (exit 1), never "nothing
    /// was changed" (exit 2).
    #[error(
        "{refusal}. This run had already changed: {changed}; once that is resolved, run `kmsctl resume`"
    )]
    RefusedAfterChange { refusal: String, changed: String },
}

// Remote and engine failures stop a step as plain failures (exit 1, resumable).
macro_rules! failed_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StepError {
            fn from(e: $t) -> Self {
                StepError::Failed(e.into())
            }
        }
    )*};
}
failed_from!(
    crate::azure::RemoteError,
    crate::k8s::KubeError,
    crate::reencrypt::EngineError,
    crate::k8s::canary::BarrierError
);

impl StepError {
    /// A refusal, told what the run had already changed (`Record::changes`): with changes it
    /// says the step changed nothing rather than that nothing was changed, and exits 1.
    pub fn after_changes(self, changes: &[String]) -> StepError {
        match self {
            StepError::Refused(why) if !changes.is_empty() => StepError::RefusedAfterChange {
                refusal: why
                    .replace("Nothing was changed", "This step changed nothing")
                    .replace("nothing was changed", "this step changed nothing")
                    .trim_end_matches('.')
                    .to_string(),
                changed: changes.join("; "),
            },
            other => other,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            StepError::Refused(_) => exit_codes::REFUSED,
            StepError::RefusedAfterChange { .. } => exit_codes::FAILED,
            StepError::Verification(_) => exit_codes::VERIFICATION_FAILED,
            StepError::Incomplete(_) => exit_codes::REENCRYPT_INCOMPLETE,
            StepError::Failed(_) => exit_codes::FAILED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_after_a_change_is_resumable_and_says_what_changed() {
        let refusal =
            || StepError::Refused("not disabling k1: it is needed. Nothing was changed.".into());
        let e = refusal().after_changes(&[]);
        assert_eq!(
            e.exit_code(),
            exit_codes::REFUSED,
            "nothing changed: exit 2"
        );
        let e = refusal().after_changes(&["KMS key now k2".into()]);
        assert_eq!(e.exit_code(), exit_codes::FAILED);
        let t = e.to_string();
        assert!(!t.contains("Nothing was changed"), "{t}");
        assert!(t.contains("This step changed nothing. This run had already changed: KMS key now k2; once that is resolved, run `kmsctl resume`"), "{t}");
        let other = StepError::Verification("x".into()).after_changes(&["y".into()]);
        assert_eq!(other.exit_code(), exit_codes::VERIFICATION_FAILED);
    }
}
