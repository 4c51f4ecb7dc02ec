//! `--kube-credentials azure|azure-admin`: the cluster's API server from Resource Manager, no
//! kubeconfig needed. Everything here happens before any change: what cannot be used is a
//! refusal (exit 2) that says what to do; a private API server out of this network's reach is
//! the refusal [`Unreachable`], which fleet rollouts tell apart (downcast) and report.

use super::Refusal;
use crate::azure::RemoteError;
use crate::engine::context::Azure;
use crate::engine::journal::KubeCredentials;
use crate::k8s::azure_credentials::{self as creds, Bearer, Which};
use crate::k8s::client::{self, Cluster};
use std::time::Duration;

/// A private cluster's API server that this network cannot reach (its name resolves only in
/// the cluster's VNet). Returned as an `anyhow::Error` whose context is this type and whose
/// source is a [`Refusal`] with the same text: `e.downcast_ref::<Unreachable>()` recognises it,
/// and it exits 2 as every refusal does.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "private API server {fqdn}: not reachable from this network; run kmsctl from a network that reaches it (a VM or runner in the cluster's VNet, or `az aks command invoke`)"
)]
pub struct Unreachable {
    /// The cluster's privateFQDN (or the server host its credential names).
    pub fqdn: String,
    /// What the connection attempt met (for logs).
    pub cause: String,
}

impl Unreachable {
    pub fn into_error(self) -> anyhow::Error {
        let text = self.to_string();
        anyhow::Error::new(Refusal(text)).context(self)
    }
}

/// How long the first request may take before a server counts as out of reach.
const REACH_TIMEOUT: Duration = Duration::from_secs(30);

/// The cluster's API server as `target` says to reach it: its kubeconfig and context, or
/// through Resource Manager with `az`.
pub async fn cluster_for(
    target: &crate::engine::journal::Target,
    az: &Azure,
) -> anyhow::Result<Cluster> {
    match target.kube_credentials {
        KubeCredentials::Kubeconfig => {
            client::connect(target.kubeconfig.as_deref(), target.context.as_deref()).await
        }
        mode => connect(az, mode).await,
    }
}

pub async fn connect(az: &Azure, mode: KubeCredentials) -> anyhow::Result<Cluster> {
    let which = match mode {
        KubeCredentials::AzureAdmin => Which::Admin,
        _ => Which::User,
    };
    let resource = az
        .arm
        .get(&az.cluster_path, &az.arm.api.aks)
        .await
        .map_err(|e| Refusal(format!("the cluster could not be read: {e}")))?
        .body;
    let p = &resource["properties"];
    let private = p["apiServerAccessProfile"]["enablePrivateCluster"].as_bool() == Some(true);
    let text = creds::fetch(&az.arm, &az.cluster_path, which)
        .await
        .map_err(|e| credential_refusal(&e, which))?;
    let (config, entra) = creds::config_from(&text)
        .await
        .map_err(|e| Refusal(format!("{e:#}")))?;
    let host = client::server_host(&config.cluster_url.to_string());
    if private && let Err(cause) = reach(&config).await {
        let fqdn = p["privateFQDN"].as_str().unwrap_or(&host).to_string();
        return Err(Unreachable { fqdn, cause }.into_error());
    }
    if entra {
        let bearer = Bearer::start(az.credential.clone()).await.map_err(|e| {
            Refusal(format!(
                "{e:#}: kmsctl authenticates to an Entra ID cluster with its own Azure credential (--auth), as kubelogin does"
            ))
        })?;
        creds::register(&config, bearer);
    }
    let cluster = client::finish(config, None, None)?;
    // One read before anything else: a server out of reach is said as such now.
    let reached = tokio::time::timeout(REACH_TIMEOUT, cluster.client.apiserver_version()).await;
    let failure = match reached {
        Ok(Ok(_)) => return Ok(cluster),
        Ok(Err(kube::Error::Api(s))) => {
            return Err(Refusal(format!(
                "the API server {host} refused kmsctl's {} credential: HTTP {} {}{}",
                which.action(),
                s.code,
                s.message,
                if entra {
                    "; the Azure principal needs a Kubernetes role on the cluster (Azure RBAC for Kubernetes: e.g. Azure Kubernetes Service RBAC Cluster Admin, or what `kmsctl rbac` prints bound to it)"
                } else {
                    ""
                }
            ))
            .into());
        }
        Ok(Err(e)) => format!("{e}"),
        Err(_) => format!("no answer in {} s", REACH_TIMEOUT.as_secs()),
    };
    if private {
        let fqdn = p["privateFQDN"].as_str().unwrap_or(&host).to_string();
        return Err(Unreachable {
            fqdn,
            cause: failure,
        }
        .into_error());
    }
    Err(Refusal(format!(
        "the API server {host} (from {}) could not be reached: {failure}; nothing was changed",
        which.action()
    ))
    .into())
}

/// Whether a TCP connection to the API server can be made from here (through the kubeconfig's
/// proxy, as kube would): a private cluster's name resolves only inside its VNet.
async fn reach(config: &kube::Config) -> Result<(), String> {
    use hyper_util::client::legacy::connect::HttpConnector;
    use tower_service::Service;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(REACH_TIMEOUT));
    let uri = config.cluster_url.clone();
    let attempt = async {
        match config.proxy_url.clone() {
            Some(proxy) => {
                let mut tunnel =
                    hyper_util::client::legacy::connect::proxy::Tunnel::new(proxy, http);
                tunnel.call(uri).await.map(drop).map_err(|e| e.to_string())
            }
            None => http.call(uri).await.map(drop).map_err(|e| e.to_string()),
        }
    };
    match tokio::time::timeout(REACH_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no connection in {} s", REACH_TIMEOUT.as_secs())),
    }
}

/// What a failed `listCluster*Credential` says, with what to do.
fn credential_refusal(e: &anyhow::Error, which: Which) -> anyhow::Error {
    let remote = e.downcast_ref::<RemoteError>();
    let text = match remote {
        Some(RemoteError::Status {
            status: 400,
            message,
            ..
        }) if which == Which::Admin => format!(
            "the cluster's admin credential cannot be had: {message} (local accounts are disabled); use --kube-credentials azure (an Entra ID token from kmsctl's Azure credential)"
        ),
        Some(RemoteError::Status { status: 403, .. }) => format!(
            "{e}; kmsctl needs Microsoft.ContainerService/managedClusters/{}/action (`kmsctl rbac` lists it)",
            which.action()
        ),
        _ => format!("{}: {e:#}", which.action()),
    };
    Refusal(text).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_is_a_refusal_that_can_be_told_apart() {
        let e = Unreachable {
            fqdn: "aks-1-dns-x.privatelink.westeurope.azmk8s.io".into(),
            cause: "client error (Connect)".into(),
        }
        .into_error();
        let u = e.downcast_ref::<Unreachable>().expect("told apart");
        assert_eq!(u.fqdn, "aks-1-dns-x.privatelink.westeurope.azmk8s.io");
        assert!(e.downcast_ref::<Refusal>().is_some(), "exits 2");
        assert_eq!(
            e.to_string(),
            "private API server aks-1-dns-x.privatelink.westeurope.azmk8s.io: not reachable from this network; run kmsctl from a network that reaches it (a VM or runner in the cluster's VNet, or `az aks command invoke`)"
        );
    }
}
