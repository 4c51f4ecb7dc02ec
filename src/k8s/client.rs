//! Builds the Kubernetes client from a kubeconfig and context, as kubectl would.

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::Path;
use std::time::Duration;

pub struct Cluster {
    pub client: kube::Client,
    /// The API server URL the context names (for the wrong-cluster guard).
    pub server: String,
    /// What the client was built from, to build clients with fresh connections.
    pub config: kube::Config,
    /// The kubeconfig file and context used, resolved (for a run's journal).
    pub kubeconfig: Option<std::path::PathBuf>,
    pub context: Option<String>,
}

/// A client with its own connection pool. Behind one address a managed control plane may run
/// several API server replicas, and a balancer picks one per connection: a request on a fresh
/// connection may reach any of them, a pooled one always reaches the same.
pub fn fresh(config: &kube::Config) -> Result<kube::Client, super::KubeError> {
    kube::Client::try_from(config.clone()).map_err(|e| super::KubeError::Other(e.to_string()))
}

pub async fn connect(kubeconfig: Option<&Path>, context: Option<&str>) -> anyhow::Result<Cluster> {
    // Inside a pod (the check-expiry CronJob) without a kubeconfig: the pod's service account.
    let home_config =
        std::env::var_os("HOME").is_some_and(|h| Path::new(&h).join(".kube/config").exists());
    if kubeconfig.is_none()
        && context.is_none()
        && std::env::var_os("KUBECONFIG").is_none()
        && !home_config
        && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
    {
        let config = kube::Config::incluster().context("loading the in-cluster configuration")?;
        return finish(config, None, None);
    }
    let kc = match kubeconfig {
        Some(p) => Kubeconfig::read_from(p)
            .with_context(|| format!("reading kubeconfig {}", p.display()))?,
        None => {
            Kubeconfig::read().context("reading the kubeconfig (KUBECONFIG or ~/.kube/config)")?
        }
    };
    let resolved_context = context
        .map(str::to_string)
        .or_else(|| kc.current_context.clone());
    let resolved_file = kubeconfig.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("KUBECONFIG")
            .and_then(|v| std::env::split_paths(&v).next())
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".kube/config")))
    });
    let opts = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kc, &opts)
        .await
        .context("loading the kubeconfig context")?;
    finish(config, resolved_file, resolved_context)
}

fn finish(
    mut config: kube::Config,
    resolved_file: Option<std::path::PathBuf>,
    resolved_context: Option<String>,
) -> anyhow::Result<Cluster> {
    // kube retries 429 silently (up to 15 times); kmsctl adapts to it instead, and shows it.
    config.default_retry = false;
    config.read_timeout = Some(Duration::from_secs(90));
    config.connect_timeout = Some(Duration::from_secs(15));
    let server = config.cluster_url.to_string();
    let client =
        kube::Client::try_from(config.clone()).context("building the Kubernetes client")?;
    Ok(Cluster {
        client,
        server,
        config,
        kubeconfig: resolved_file,
        context: resolved_context,
    })
}

/// The host a server URL names, without port or scheme.
pub fn server_host(server: &str) -> String {
    let rest = server.split("://").nth(1).unwrap_or(server);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = if authority.starts_with('[') {
        authority
            .split(']')
            .next()
            .map(|h| h.trim_start_matches('['))
            .unwrap_or(authority)
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts() {
        assert_eq!(
            super::server_host("https://aks-abc.hcp.westeurope.azmk8s.io:443/"),
            "aks-abc.hcp.westeurope.azmk8s.io"
        );
        assert_eq!(super::server_host("https://127.0.0.1:6443"), "127.0.0.1");
    }
}
