//! Azure clients: Resource Manager as raw JSON through azure_core's pipeline (so a GET -> PUT
//! keeps every field, known or not), Key Vault keys through azure_security_keyvault_keys, and
//! credentials from azure_identity. Every call goes through `crate::retry`.

pub mod arm;
pub mod credential;
pub mod keys;
pub mod mgmt_keys;
pub mod transport;

use crate::retry::{RetryHint, Retryable, parse_retry_after};
use std::time::Duration;

/// A failed remote call, with what the service said.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{service} answered HTTP {status} {code}: {message}")]
    Status {
        service: &'static str,
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{service} could not be reached: {detail}")]
    Transport {
        service: &'static str,
        detail: String,
    },
    #[error("{service}: {detail}")]
    Other {
        service: &'static str,
        detail: String,
    },
}

impl RemoteError {
    pub fn status(&self) -> Option<u16> {
        match self {
            RemoteError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
    /// When the service asked to be asked again (Retry-After).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RemoteError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
    /// Why the vault's data plane refused this machine's network, if that is what happened:
    /// Key Vault's 403 innererror `ForbiddenByConnection` (public network access disabled, no
    /// approved private link) or `ForbiddenByFirewall` (default Deny without this address), or
    /// no connection at all.
    pub fn network_block(&self) -> Option<&'static str> {
        match self {
            RemoteError::Status {
                status: 403,
                message,
                ..
            } if message.contains("ForbiddenByConnection") => Some("ForbiddenByConnection"),
            RemoteError::Status {
                status: 403,
                message,
                ..
            } if message.contains("ForbiddenByFirewall") => Some("ForbiddenByFirewall"),
            RemoteError::Transport { .. } => Some("unreachable"),
            _ => None,
        }
    }
    pub fn code(&self) -> &str {
        match self {
            RemoteError::Status { code, .. } => code,
            _ => "",
        }
    }
}

impl Retryable for RemoteError {
    fn retry_hint(&self) -> RetryHint {
        match self {
            RemoteError::Status {
                status: 408 | 429 | 500 | 502 | 503 | 504,
                retry_after,
                ..
            } => RetryHint::After(*retry_after),
            RemoteError::Transport { .. } => RetryHint::After(None),
            _ => RetryHint::No,
        }
    }
}

/// The whole `source()` chain: azure_core's `Display` hides the useful part.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// `{"error":{"code","message"}}` (ARM and Key Vault) -> (code, message).
pub fn error_body(body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let e = &v["error"];
    let code = e["code"].as_str().unwrap_or_default().to_string();
    let mut message = e["message"].as_str().unwrap_or_default().to_string();
    if let Some(inner) = e["innererror"]["code"].as_str() {
        message = format!("{message} ({inner})");
    }
    if message.is_empty() {
        message = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
    }
    (code, message)
}

/// Maps an azure_core error onto what kmsctl reports and retries.
pub fn from_azure(service: &'static str, e: azure_core::Error) -> RemoteError {
    use azure_core::error::ErrorKind;
    match e.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let (code, message, retry_after) = match raw_response {
                Some(r) => {
                    let (c, m) = error_body(r.body());
                    let ra = parse_retry_after(
                        r.headers()
                            .get_optional_str(&azure_core::http::headers::RETRY_AFTER),
                    );
                    (c, m, ra)
                }
                None => (
                    error_code.clone().unwrap_or_default(),
                    error_chain(&e),
                    None,
                ),
            };
            let code = if code.is_empty() {
                error_code.clone().unwrap_or_default()
            } else {
                code
            };
            RemoteError::Status {
                service,
                status: u16::from(*status),
                code,
                message,
                retry_after,
            }
        }
        ErrorKind::Io | ErrorKind::Connection => RemoteError::Transport {
            service,
            detail: error_chain(&e),
        },
        _ => RemoteError::Other {
            service,
            detail: error_chain(&e),
        },
    }
}
