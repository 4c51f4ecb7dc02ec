//! What a run talks to: ARM and Key Vault (absent for a re-encryption-only run) and the cluster.

use crate::azure::arm::ArmClient;
use crate::azure::keys::{KeyId, KeyVault};
use crate::azure::mgmt_keys::KeyReader;
use azure_core::credentials::TokenCredential;
use azure_core::http::ClientOptions;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct Azure {
    pub arm: ArmClient,
    pub credential: Arc<dyn TokenCredential>,
    pub options: ClientOptions,
    pub subscription: String,
    pub cluster_path: String,
    /// Vault name (lowercase) -> its Resource Manager id, once found.
    pub vault_ids: Arc<Mutex<HashMap<String, String>>>,
}

impl Azure {
    /// Reads the key's state through Resource Manager. The vault's id: `hint` (the cluster's
    /// keyVaultResourceId) when it names the key's vault, else found by name in every
    /// subscription the credential can see (once per vault and run).
    pub async fn key_reader(&self, id: &KeyId, hint: Option<&str>) -> anyhow::Result<KeyReader> {
        let name = id.vault_name().to_ascii_lowercase();
        let hinted = hint.filter(|h| {
            h.trim_end_matches('/')
                .rsplit('/')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(&name))
        });
        let known = self
            .vault_ids
            .lock()
            .ok()
            .and_then(|m| m.get(&name).cloned());
        let vault_id = match hinted.map(str::to_string).or(known) {
            Some(v) => v,
            None => {
                let found =
                    crate::checks::facts::find_vault(&self.arm, &self.subscription, &name).await?;
                found
                    .and_then(|v| v["id"].as_str().map(str::to_string))
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "no vault named {name} in any subscription the credential can see (Resource Manager), so the key's state cannot be read"
                        )
                    })?
            }
        };
        if let Ok(mut m) = self.vault_ids.lock() {
            m.insert(name, vault_id.clone());
        }
        Ok(KeyReader::new(self.arm.clone(), &vault_id))
    }

    /// The vault's data plane: only for rotate, set expiry and disable (and the reach check).
    pub fn key_vault(&self, id: &KeyId) -> anyhow::Result<KeyVault> {
        Ok(KeyVault::new(
            &id.vault_url,
            self.credential.clone(),
            self.options.clone(),
            self.arm.retry.clone(),
        )?)
    }
}

pub struct Context {
    pub azure: Option<Azure>,
    pub kube: kube::Client,
    /// What `kube` was built from: barriers and verification passes use fresh connections.
    pub kube_config: kube::Config,
    /// `host:port` of the kubeconfig's API server (the wrong-cluster guard compares it).
    pub kube_server_endpoint: String,
    /// The API server URL as the kubeconfig names it (scheme, host and port).
    pub kube_server: String,
    pub kubeconfig: Option<std::path::PathBuf>,
    pub kube_context: Option<String>,
}

impl Context {
    pub fn azure(&self) -> anyhow::Result<&Azure> {
        self.azure.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "this step needs Azure access (--subscription, --resource-group, --name)"
            )
        })
    }
}
