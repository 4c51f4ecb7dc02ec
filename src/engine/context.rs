//! What a run talks to: ARM and Key Vault (absent for a re-encryption-only run) and the cluster.

use crate::azure::arm::ArmClient;
use crate::azure::keys::{KeyId, KeyVault};
use azure_core::credentials::TokenCredential;
use azure_core::http::ClientOptions;
use std::sync::Arc;

pub struct Azure {
    pub arm: ArmClient,
    pub credential: Arc<dyn TokenCredential>,
    pub options: ClientOptions,
    pub subscription: String,
    pub cluster_path: String,
}

impl Azure {
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
