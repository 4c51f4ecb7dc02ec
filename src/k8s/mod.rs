//! Kubernetes access shared by the engines: the client (built from a kubeconfig, with kube's
//! silent retries off so kmsctl's own policy and progress see every 429), the run lease, the
//! key ledger, and the key-switch canary.

pub mod azure_credentials;
pub mod canary;
pub mod client;
pub mod evidence;
pub mod lease;
pub mod ledger;
pub mod probe;
pub mod replicas;

use crate::retry::{RetryHint, Retryable};
use kube::api::ApiResource;
use std::time::Duration;

/// core/v1 Secrets for untyped access (`DynamicObject`): a PUT then sends back every field the
/// server sent, including ones this client's types do not know.
pub fn secrets() -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "Secret".into(),
        plural: "secrets".into(),
    }
}

/// A Kubernetes API failure, classified for kmsctl's retry policy.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("Kubernetes API answered {code} {reason}: {message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
        retry_after: Option<Duration>,
        continue_token: Option<String>,
    },
    #[error("Kubernetes API could not be reached: {0}")]
    Transport(String),
    #[error("{0}")]
    Other(String),
}

impl KubeError {
    pub fn code(&self) -> Option<u16> {
        match self {
            KubeError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
    /// The KMS plugin cannot encrypt or decrypt: nothing will work until the key is fixed.
    pub fn is_kms_failure(&self) -> bool {
        matches!(self, KubeError::Api { code: 500, message, .. }
            if ["KeyExpired", "KeyDisabled", "KeyNotFound", "failed to encrypt", "failed to decrypt"].iter().any(|m| message.contains(m)))
    }
}

impl From<kube::Error> for KubeError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => KubeError::Api {
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
                retry_after: s.details.as_ref().and_then(|d| {
                    (d.retry_after_seconds > 0)
                        .then(|| Duration::from_secs(d.retry_after_seconds as u64))
                }),
                continue_token: s
                    .metadata
                    .as_ref()
                    .and_then(|m| m.continue_.clone())
                    .filter(|c| !c.is_empty()),
            },
            kube::Error::HyperError(e) => KubeError::Transport(e.to_string()),
            kube::Error::Service(e) => KubeError::Transport(e.to_string()),
            other => KubeError::Other(other.to_string()),
        }
    }
}

impl Retryable for KubeError {
    fn retry_hint(&self) -> RetryHint {
        match self {
            _ if self.is_kms_failure() => RetryHint::No,
            KubeError::Api {
                code: 429 | 500 | 502 | 503 | 504,
                retry_after,
                ..
            } => RetryHint::After(*retry_after),
            KubeError::Transport(_) => RetryHint::After(None),
            _ => RetryHint::No,
        }
    }
}
