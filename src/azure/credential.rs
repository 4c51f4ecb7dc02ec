//! Choosing a credential the way users of the Azure SDKs expect. azure_identity 1.x has no
//! DefaultAzureCredential, so `--auth auto` is kmsctl's own, documented order:
//! 1. `env`: AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_CLIENT_SECRET (a service principal);
//! 2. `workload`: AZURE_FEDERATED_TOKEN_FILE (+ tenant and client id), as injected into pods;
//! 3. `managed`: IDENTITY_ENDPOINT or MSI_ENDPOINT set (App Service, Arc, Cloud Shell), or
//!    AZURE_CLIENT_ID without a secret on a VM (IMDS);
//! 4. `cli`: the Azure CLI's signed-in account (`az login`).

use anyhow::{Context, bail};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::ClientOptions;
use azure_identity::{
    AzureCliCredential, ClientAssertionCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    Auto,
    Env,
    Workload,
    Managed,
    Cli,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Which concrete mode `auto` picks in this environment.
pub fn resolve(mode: AuthMode) -> AuthMode {
    if mode != AuthMode::Auto {
        return mode;
    }
    let has = |n: &str| var(n).is_some();
    if has("AZURE_TENANT_ID") && has("AZURE_CLIENT_ID") && has("AZURE_CLIENT_SECRET") {
        AuthMode::Env
    } else if has("AZURE_FEDERATED_TOKEN_FILE") {
        AuthMode::Workload
    } else if has("IDENTITY_ENDPOINT") || has("MSI_ENDPOINT") || has("AZURE_CLIENT_ID") {
        AuthMode::Managed
    } else {
        AuthMode::Cli
    }
}

/// Retries a token request that failed for a passing reason (a 5xx, a dropped connection):
/// one flaky answer from the token endpoint must not end a run before it starts. Entra ID's
/// refusals carry an AADSTS code (a wrong secret, an unknown tenant) and are final at once.
#[derive(Debug)]
struct Retrying(Arc<dyn TokenCredential>);

const TOKEN_ATTEMPTS: u32 = 5;

#[async_trait::async_trait]
impl TokenCredential for Retrying {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        let mut attempt = 0;
        loop {
            match self.0.get_token(scopes, options.clone()).await {
                Ok(t) => return Ok(t),
                Err(e) => {
                    attempt += 1;
                    let text = format!("{e:?}");
                    if attempt >= TOKEN_ATTEMPTS || text.contains("AADSTS") {
                        return Err(e);
                    }
                    tracing::warn!(attempt, "getting a token failed; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(400 << attempt)).await;
                }
            }
        }
    }
}

pub fn credential(
    mode: AuthMode,
    options: &ClientOptions,
) -> anyhow::Result<Arc<dyn TokenCredential>> {
    Ok(Arc::new(Retrying(inner(mode, options)?)))
}

fn inner(mode: AuthMode, options: &ClientOptions) -> anyhow::Result<Arc<dyn TokenCredential>> {
    Ok(match resolve(mode) {
        AuthMode::Env => {
            let (Some(tenant), Some(client), Some(secret)) = (
                var("AZURE_TENANT_ID"),
                var("AZURE_CLIENT_ID"),
                var("AZURE_CLIENT_SECRET"),
            ) else {
                let missing: Vec<&str> =
                    ["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"]
                        .into_iter()
                        .filter(|n| var(n).is_none())
                        .collect();
                bail!(
                    "--auth env needs AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET; missing: {}",
                    missing.join(", ")
                );
            };
            let opts = ClientSecretCredentialOptions {
                client_options: options.clone(),
            };
            ClientSecretCredential::new(&tenant, client, Secret::new(secret), Some(opts))
                .context("building the client-secret credential")?
        }
        AuthMode::Workload => {
            let opts = WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions {
                    client_options: options.clone(),
                },
                ..Default::default()
            };
            WorkloadIdentityCredential::new(Some(opts)).context("building the workload identity credential (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE)")?
        }
        AuthMode::Managed => {
            let user_assigned_id = var("AZURE_CLIENT_ID").map(UserAssignedId::ClientId);
            let opts = ManagedIdentityCredentialOptions {
                user_assigned_id,
                client_options: options.clone(),
            };
            ManagedIdentityCredential::new(Some(opts))
                .context("building the managed identity credential")?
        }
        AuthMode::Cli | AuthMode::Auto => {
            AzureCliCredential::new(None).context("building the Azure CLI credential")?
        }
    })
}
