//! Choosing a credential the way users of the Azure SDKs expect. azure_identity 1.x has no
//! DefaultAzureCredential, so `--auth auto` is kmsctl's own, documented order:
//! 1. `env`: AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_CLIENT_SECRET (a service principal);
//! 2. `workload`: AZURE_FEDERATED_TOKEN_FILE (+ tenant and client id), as injected into pods;
//! 3. `managed`: IDENTITY_ENDPOINT or MSI_ENDPOINT set (App Service, Arc, Cloud Shell), or
//!    AZURE_CLIENT_ID alone (no tenant, no secret) on a VM (IMDS);
//! 4. `cli`: the Azure CLI's signed-in account (`az login`).
//!
//! A half-set environment (a tenant and client id but neither a secret nor a token file, or a
//! secret without its tenant or client id) is refused naming what is missing: falling through
//! to managed identity would fail far from the cause (retries, then an IMDS error).

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

impl AuthMode {
    fn name(self) -> &'static str {
        match self {
            AuthMode::Auto => "auto",
            AuthMode::Env => "env (a service principal's client secret)",
            AuthMode::Workload => "workload (a federated token file)",
            AuthMode::Managed => "managed (a managed identity)",
            AuthMode::Cli => "cli (the Azure CLI's signed-in account)",
        }
    }

    /// What to do when this credential cannot get a token.
    fn advice(self) -> &'static str {
        match self {
            AuthMode::Env | AuthMode::Auto => {
                "check AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (a wrong or expired secret is refused by Entra ID), or sign in with `az login` and use --auth cli"
            }
            AuthMode::Workload => {
                "check AZURE_FEDERATED_TOKEN_FILE, AZURE_TENANT_ID, AZURE_CLIENT_ID and the identity's federated credential (issuer and subject), or sign in with `az login` and use --auth cli"
            }
            AuthMode::Managed => {
                "a managed identity answers only on Azure (IMDS, IDENTITY_ENDPOINT); elsewhere sign in with `az login` and use --auth cli, or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET and use --auth env"
            }
            AuthMode::Cli => {
                "sign in with `az login` (and `az account set --subscription ID`), or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET and use --auth env"
            }
        }
    }
}

/// What this environment lets `resolve` see: a variable counts when set and not empty.
pub trait Env {
    fn has(&self, name: &str) -> bool;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn has(&self, name: &str) -> bool {
        var(name).is_some()
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Which concrete mode `auto` picks in this environment, and why (one line, for `-v`); a
/// half-set environment is an error naming what is missing and what to do.
pub fn resolve(mode: AuthMode, env: &dyn Env) -> Result<(AuthMode, String), String> {
    if mode != AuthMode::Auto {
        return Ok((mode, format!("--auth {}", mode.name())));
    }
    let (tenant, client) = (env.has("AZURE_TENANT_ID"), env.has("AZURE_CLIENT_ID"));
    let (secret, token_file) = (
        env.has("AZURE_CLIENT_SECRET"),
        env.has("AZURE_FEDERATED_TOKEN_FILE"),
    );
    let missing = |names: &[(&'static str, bool)]| -> Vec<&'static str> {
        names
            .iter()
            .filter(|(_, set)| !set)
            .map(|(n, _)| *n)
            .collect()
    };
    if secret || token_file {
        let what = if secret {
            "AZURE_CLIENT_SECRET"
        } else {
            "AZURE_FEDERATED_TOKEN_FILE"
        };
        let absent = missing(&[("AZURE_TENANT_ID", tenant), ("AZURE_CLIENT_ID", client)]);
        if !absent.is_empty() {
            return Err(format!(
                "--auth auto: {what} is set but {} is not: set {}, or unset {what} and sign in with `az login` (--auth cli)",
                absent.join(" and "),
                absent.join(" and ")
            ));
        }
        return Ok(if secret {
            (
                AuthMode::Env,
                "AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET are set".into(),
            )
        } else {
            (
                AuthMode::Workload,
                "AZURE_FEDERATED_TOKEN_FILE, AZURE_TENANT_ID and AZURE_CLIENT_ID are set".into(),
            )
        });
    }
    if tenant && client {
        return Err("--auth auto: AZURE_TENANT_ID and AZURE_CLIENT_ID are set, but neither AZURE_CLIENT_SECRET (a service principal) nor AZURE_FEDERATED_TOKEN_FILE (workload identity): set the one you meant, or for a user-assigned managed identity use --auth managed, or unset them and sign in with `az login` (--auth cli)".into());
    }
    if env.has("IDENTITY_ENDPOINT") || env.has("MSI_ENDPOINT") {
        return Ok((
            AuthMode::Managed,
            "IDENTITY_ENDPOINT or MSI_ENDPOINT is set (App Service, Arc, Cloud Shell)".into(),
        ));
    }
    if client {
        return Ok((
            AuthMode::Managed,
            "AZURE_CLIENT_ID is set without a tenant or secret (a user-assigned managed identity)"
                .into(),
        ));
    }
    if tenant {
        return Err("--auth auto: AZURE_TENANT_ID is set but AZURE_CLIENT_ID is not: set AZURE_CLIENT_ID (and AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE), or unset AZURE_TENANT_ID and sign in with `az login` (--auth cli)".into());
    }
    Ok((
        AuthMode::Cli,
        "no AZURE_* credential variables are set: the Azure CLI's account (`az login`)".into(),
    ))
}

/// Retries a token request that failed for a passing reason (a 5xx, a dropped connection):
/// one flaky answer from the token endpoint must not end a run before it starts. Entra ID's
/// refusals carry an AADSTS code (a wrong secret, an unknown tenant) and are final at once.
/// A final failure names the credential and ends with what to do.
#[derive(Debug)]
struct Retrying(Arc<dyn TokenCredential>, AuthMode);

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
                        let detail = crate::azure::error_chain(&e);
                        return Err(azure_core::Error::with_message(
                            azure_core::error::ErrorKind::Credential,
                            format!(
                                "getting an Azure token with --auth {} failed: {detail}. To fix: {}",
                                self.1.name(),
                                self.1.advice()
                            ),
                        ));
                    }
                    tracing::warn!(attempt, "getting a token failed; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(400 << attempt)).await;
                }
            }
        }
    }
}

/// The credential `mode` names (for `auto`, the one this environment calls for: logged at `-v`).
/// An error is a refusal: nothing has been asked of Azure yet.
pub fn credential(
    mode: AuthMode,
    options: &ClientOptions,
) -> anyhow::Result<Arc<dyn TokenCredential>> {
    let (picked, why) = resolve(mode, &ProcessEnv).map_err(anyhow::Error::msg)?;
    tracing::info!("Azure credential: {} ({why})", picked.name());
    let c = inner(picked, options)
        .map_err(|e| anyhow::anyhow!("{e:#}. To fix: {}", picked.advice()))?;
    Ok(Arc::new(Retrying(c, picked)))
}

fn inner(mode: AuthMode, options: &ClientOptions) -> anyhow::Result<Arc<dyn TokenCredential>> {
    Ok(match mode {
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

#[cfg(test)]
mod tests {
    use super::{AuthMode, Env, resolve};

    struct Vars(&'static [&'static str]);
    impl Env for Vars {
        fn has(&self, name: &str) -> bool {
            self.0.contains(&name)
        }
    }

    fn auto(vars: &'static [&'static str]) -> Result<AuthMode, String> {
        resolve(AuthMode::Auto, &Vars(vars)).map(|(m, _)| m)
    }

    #[test]
    fn auto_picks_by_the_variables_set() {
        let sp = &["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"];
        assert_eq!(auto(sp), Ok(AuthMode::Env));
        let wi = &[
            "AZURE_TENANT_ID",
            "AZURE_CLIENT_ID",
            "AZURE_FEDERATED_TOKEN_FILE",
        ];
        assert_eq!(auto(wi), Ok(AuthMode::Workload));
        assert_eq!(auto(&["IDENTITY_ENDPOINT"]), Ok(AuthMode::Managed));
        assert_eq!(auto(&["AZURE_CLIENT_ID"]), Ok(AuthMode::Managed));
        assert_eq!(auto(&[]), Ok(AuthMode::Cli));
        // An explicit mode is taken as given.
        assert_eq!(
            resolve(AuthMode::Cli, &Vars(sp)).map(|(m, _)| m),
            Ok(AuthMode::Cli)
        );
    }

    #[test]
    fn a_half_set_environment_names_what_is_missing() {
        let e = auto(&["AZURE_TENANT_ID", "AZURE_CLIENT_ID"]).unwrap_err();
        assert!(
            e.contains("AZURE_CLIENT_SECRET") && e.contains("AZURE_FEDERATED_TOKEN_FILE"),
            "{e}"
        );
        assert!(e.contains("az login"), "{e}");
        let e = auto(&["AZURE_CLIENT_SECRET", "AZURE_CLIENT_ID"]).unwrap_err();
        assert!(
            e.contains("AZURE_TENANT_ID") && !e.contains("AZURE_CLIENT_ID is not"),
            "{e}"
        );
        let e = auto(&["AZURE_TENANT_ID"]).unwrap_err();
        assert!(e.contains("AZURE_CLIENT_ID"), "{e}");
        // Managed identity endpoints do not excuse a half-set service principal.
        assert!(auto(&["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "MSI_ENDPOINT"]).is_err());
    }

    #[test]
    fn every_mode_says_what_to_do() {
        for m in [
            AuthMode::Env,
            AuthMode::Workload,
            AuthMode::Managed,
            AuthMode::Cli,
        ] {
            assert!(m.advice().contains("az login"), "{m:?}");
            assert!(m.advice().contains("--auth"), "{m:?}");
        }
    }
}
