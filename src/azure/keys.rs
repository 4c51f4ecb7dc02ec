//! Key Vault keys' data plane through azure_security_keyvault_keys: only what needs it (rotate,
//! set an expiry, disable a version) and the reach check before those. Reads of key state go
//! through Resource Manager (`mgmt_keys`), which a private vault's network does not block.
//! kmsctl never deletes or purges a key.

use super::{RemoteError, from_azure};
use crate::retry::{RetryHint, RetryPolicy, Retryable};
use azure_core::credentials::TokenCredential;
use azure_core::http::ClientOptions;
use azure_security_keyvault_keys::models::{Key, KeyAttributes, UpdateKeyPropertiesParameters};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use std::sync::Arc;

const SERVICE: &str = "Key Vault";

/// A versioned key id, `https://<vault>.vault.azure.net/keys/<name>/<version>`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyId {
    pub vault_url: String,
    pub name: String,
    pub version: String,
}

impl KeyId {
    /// Parses the forms AKS accepts: https, exactly `keys/<name>/<version>` after the host.
    pub fn parse(id: &str) -> Result<KeyId, String> {
        let bad = || {
            format!(
                "'{id}' is not a versioned Key Vault key id (https://<vault>.vault.azure.net/keys/<name>/<version>)"
            )
        };
        let rest = id.strip_prefix("https://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != 4 || parts[1] != "keys" || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        // AKS keeps the id as given and Key Vault's kid has no port: `:443` would name another
        // key id than the one Key Vault reports.
        if parts[0].contains(':') {
            return Err(format!(
                "'{id}' names a port: write the key id as Key Vault returns it (az keyvault key show --query key.kid), without a port"
            ));
        }
        Ok(KeyId {
            vault_url: format!("https://{}", parts[0].to_ascii_lowercase()),
            name: parts[2].to_string(),
            version: parts[3].to_string(),
        })
    }
    pub fn vault_host(&self) -> &str {
        self.vault_url.trim_start_matches("https://")
    }
    pub fn vault_name(&self) -> &str {
        self.vault_host().split('.').next().unwrap_or_default()
    }
    pub fn with_version(&self, version: &str) -> KeyId {
        KeyId {
            version: version.to_string(),
            ..self.clone()
        }
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/keys/{}/{}", self.vault_url, self.name, self.version)
    }
}

/// What kmsctl needs to know about one key version.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyVersionInfo {
    pub id: KeyId,
    pub kty: Option<String>,
    pub key_ops: Vec<String>,
    pub enabled: bool,
    pub expires_on: Option<chrono::DateTime<chrono::Utc>>,
    /// Not valid before this moment (`nbf`): the plugin cannot use it until then.
    pub not_before: Option<chrono::DateTime<chrono::Utc>>,
    pub created_on: Option<chrono::DateTime<chrono::Utc>>,
}

fn chrono_of(t: Option<azure_core::time::OffsetDateTime>) -> Option<chrono::DateTime<chrono::Utc>> {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.unix_timestamp(), 0))
}

fn from_attributes(id: KeyId, a: Option<&KeyAttributes>) -> KeyVersionInfo {
    KeyVersionInfo {
        id,
        kty: None,
        key_ops: Vec::new(),
        enabled: a.and_then(|a| a.enabled).unwrap_or(true),
        expires_on: chrono_of(a.and_then(|a| a.expires)),
        not_before: chrono_of(a.and_then(|a| a.not_before)),
        created_on: chrono_of(a.and_then(|a| a.created)),
    }
}

fn from_key(key: &Key) -> Result<KeyVersionInfo, RemoteError> {
    let jwk = key.key.as_ref();
    let kid = jwk.and_then(|k| k.kid.clone()).unwrap_or_default();
    let id = KeyId::parse(&kid).map_err(|detail| RemoteError::Other {
        service: SERVICE,
        detail,
    })?;
    let mut info = from_attributes(id, key.attributes.as_ref());
    info.kty = jwk
        .and_then(|k| k.kty.as_ref())
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_string));
    info.key_ops = jwk.and_then(|k| k.key_ops.clone()).unwrap_or_default();
    Ok(info)
}

/// Rotation is not idempotent: retry it only when the service certainly did nothing (429).
struct Throttled(RemoteError);
impl std::fmt::Display for Throttled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl Retryable for Throttled {
    fn retry_hint(&self) -> RetryHint {
        match &self.0 {
            RemoteError::Status {
                status: 429,
                retry_after,
                ..
            } => RetryHint::After(*retry_after),
            _ => RetryHint::No,
        }
    }
}

#[derive(Clone)]
pub struct KeyVault {
    client: Arc<KeyClient>,
    retry: RetryPolicy,
    pub vault_url: String,
}

impl KeyVault {
    pub fn new(
        vault_url: &str,
        credential: Arc<dyn TokenCredential>,
        options: ClientOptions,
        retry: RetryPolicy,
    ) -> Result<Self, RemoteError> {
        let opts = KeyClientOptions {
            client_options: options,
            ..Default::default()
        };
        let client = KeyClient::new(&format!("{vault_url}/"), credential, Some(opts))
            .map_err(|e| from_azure(SERVICE, e))?;
        Ok(KeyVault {
            client: Arc::new(client),
            retry,
            vault_url: vault_url.to_string(),
        })
    }

    /// Proves this machine reaches the vault's data plane before a change needs it: an
    /// authenticated read of the key there. A disabled newest version still proves the reach.
    pub async fn reach(&self, name: &str) -> Result<(), RemoteError> {
        let got: Result<(), RemoteError> = self
            .retry
            .run("Key Vault get key", || async {
                self.client
                    .get_key(name, None)
                    .await
                    .map_err(|e| from_azure(SERVICE, e))?;
                Ok(())
            })
            .await;
        match got {
            Err(e) if e.status() == Some(403) && e.to_string().contains("KeyDisabled") => Ok(()),
            other => other,
        }
    }

    /// A new version through Key Vault's rotate operation.
    pub async fn rotate(&self, name: &str) -> Result<KeyVersionInfo, RemoteError> {
        self.retry
            .run("Key Vault rotate", || async {
                let rsp = self
                    .client
                    .rotate_key(name, None)
                    .await
                    .map_err(|e| Throttled(from_azure(SERVICE, e)))?;
                from_key(
                    &rsp.into_model()
                        .map_err(|e| Throttled(from_azure(SERVICE, e)))?,
                )
                .map_err(Throttled)
            })
            .await
            .map_err(|t| t.0)
    }

    /// Sets a version's expiry (check-expiry --fix extend); nothing else about it changes.
    pub async fn set_expiry(
        &self,
        id: &KeyId,
        expires: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), RemoteError> {
        let at = azure_core::time::OffsetDateTime::from_unix_timestamp(expires.timestamp())
            .map_err(|e| RemoteError::Other {
                service: SERVICE,
                detail: e.to_string(),
            })?;
        self.update_attributes(
            id,
            KeyAttributes {
                expires: Some(at),
                ..Default::default()
            },
        )
        .await
    }

    /// Enables or disables one version (kmsctl's "retire" is a disable, never a delete).
    pub async fn set_enabled(&self, id: &KeyId, enabled: bool) -> Result<(), RemoteError> {
        self.update_attributes(
            id,
            KeyAttributes {
                enabled: Some(enabled),
                ..Default::default()
            },
        )
        .await
    }

    async fn update_attributes(
        &self,
        id: &KeyId,
        attributes: KeyAttributes,
    ) -> Result<(), RemoteError> {
        self.retry
            .run("Key Vault update key", || async {
                let params = UpdateKeyPropertiesParameters {
                    key_attributes: Some(attributes.clone()),
                    ..Default::default()
                };
                let body = params.try_into().map_err(|e| from_azure(SERVICE, e))?;
                let opts =
                    azure_security_keyvault_keys::models::KeyClientUpdateKeyPropertiesOptions {
                        key_version: Some(id.version.clone()),
                        ..Default::default()
                    };
                self.client
                    .update_key_properties(&id.name, body, Some(opts))
                    .await
                    .map_err(|e| from_azure(SERVICE, e))?;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_must_be_versioned() {
        let k = KeyId::parse("https://kv1.vault.azure.net/keys/k/abc").unwrap();
        assert_eq!(
            (k.vault_name(), k.name.as_str(), k.version.as_str()),
            ("kv1", "k", "abc")
        );
        assert_eq!(k.to_string(), "https://kv1.vault.azure.net/keys/k/abc");
        assert!(KeyId::parse("https://kv1.vault.azure.net/keys/k").is_err());
        assert!(KeyId::parse("https://kv1.vault.azure.net/keys/k/").is_err());
        assert!(KeyId::parse("http://kv1.vault.azure.net/keys/k/v").is_err());
    }
}
