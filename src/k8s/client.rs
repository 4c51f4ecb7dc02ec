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
    build(config).map_err(|e| super::KubeError::Other(e.to_string()))
}

/// kube's client for `config`, sending kmsctl's own Entra token where the API server was
/// reached through Resource Manager (`--kube-credentials azure`).
fn build(config: &kube::Config) -> Result<kube::Client, kube::Error> {
    match super::azure_credentials::bearer_for(config) {
        None => kube::Client::try_from(config.clone()),
        Some(b) => Ok(kube::client::ClientBuilder::try_from(config.clone())?
            .with_layer(&super::azure_credentials::BearerLayer(b))
            .build()),
    }
}

/// A client whose every request goes over ONE TCP connection: it refuses to open a second.
/// Behind a TCP balancer a connection stays on one API server replica, so what a /metrics read
/// and a canary PUT on this client show belong to the same replica. A pooled client could
/// silently reconnect between the two (to another replica) and make the pair lie.
pub fn pinned(config: &kube::Config) -> Result<kube::Client, super::KubeError> {
    use hyper_util::client::legacy::connect::HttpConnector;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let one = OneConnection {
        inner: http,
        used: Default::default(),
    };
    // Through the kubeconfig's http proxy-url, the one connection is the proxy's (a CONNECT
    // tunnel to the API server), as kube's own client does it.
    match config.proxy_url.as_ref() {
        Some(proxy) if proxy.scheme_str() == Some("http") => {
            let tunnel =
                hyper_util::client::legacy::connect::proxy::Tunnel::new(proxy.clone(), one);
            pinned_over(config, tunnel)
        }
        Some(proxy) => Err(super::KubeError::Other(format!(
            "proxy-url {proxy}: only http:// proxies are supported"
        ))),
        None => pinned_over(config, one),
    }
}

fn pinned_over<C>(config: &kube::Config, connector: C) -> Result<kube::Client, super::KubeError>
where
    C: tower_service::Service<http::Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper::rt::Read
        + hyper::rt::Write
        + hyper_util::client::legacy::connect::Connection
        + Send
        + Unpin
        + 'static,
    C::Future: Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::client::legacy::Client as HyperClient;
    use kube::client::{Body, ClientBuilder, ConfigExt};
    let other = |e: kube::Error| super::KubeError::Other(e.to_string());
    let https = config
        .rustls_https_connector_with_connector(connector)
        .map_err(other)?;
    let hyper: HyperClient<_, Body> =
        HyperClient::builder(hyper_util::rt::TokioExecutor::new()).build(https);
    let ns = config.default_namespace.clone();
    let builder = ClientBuilder::new(BoxErrors(hyper), ns.clone())
        .with_layer(&config.extra_headers_layer().map_err(other)?);
    let bearer = super::azure_credentials::bearer_for(config);
    Ok(match (config.auth_layer().map_err(other)?, bearer) {
        (Some(auth), _) => builder
            .with_layer(&auth)
            .with_layer(&config.base_uri_layer())
            .build(),
        (None, Some(b)) => builder
            .with_layer(&super::azure_credentials::BearerLayer(b))
            .with_layer(&config.base_uri_layer())
            .build(),
        (None, None) => builder.with_layer(&config.base_uri_layer()).build(),
    })
}

/// Gives the hyper client's errors the boxed type kube's layers expect.
#[derive(Clone)]
struct BoxErrors<S>(S);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, R> tower_service::Service<R> for BoxErrors<S>
where
    S: tower_service::Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = futures::future::MapErr<S::Future, fn(S::Error) -> BoxError>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        use futures::TryFutureExt;
        self.0
            .call(req)
            .map_err(Into::into as fn(S::Error) -> BoxError)
    }
}

/// A connector that connects once; a second connection is an error, never a silent detour.
#[derive(Clone)]
struct OneConnection {
    inner: hyper_util::client::legacy::connect::HttpConnector,
    used: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

type Connecting = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<hyper_util::rt::TokioIo<tokio::net::TcpStream>, std::io::Error>,
            > + Send,
    >,
>;

impl tower_service::Service<http::Uri> for OneConnection {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(std::io::Error::other)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        if self.used.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(async {
                Err(std::io::Error::other(
                    "this probe's connection closed; its evidence is void (a second connection could reach another API server replica)",
                ))
            });
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(std::io::Error::other) })
    }
}

/// A kubeconfig that cannot name the cluster: said with what there is, so the caller can add how
/// to get the right one.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigProblem {
    #[error("no kubeconfig at {0}")]
    Missing(std::path::PathBuf),
    #[error("the kubeconfig {file} has no context '{name}'; its contexts: {}", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownContext {
        file: String,
        name: String,
        known: Vec<String>,
    },
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
    // A missing file is said as such (not as a parse error). KUBECONFIG may list several files,
    // merged: it is missing when none of them exists.
    let listed: Vec<std::path::PathBuf> = match (kubeconfig, std::env::var_os("KUBECONFIG")) {
        (Some(p), _) => vec![p.to_path_buf()],
        (None, Some(v)) if !v.is_empty() => std::env::split_paths(&v)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        _ => std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".kube/config"))
            .into_iter()
            .collect(),
    };
    if let Some(f) = listed.first()
        && !listed.iter().any(|p| p.exists())
    {
        return Err(KubeconfigProblem::Missing(f.clone()).into());
    }
    let first = listed.first().cloned();
    let kc = match kubeconfig {
        Some(p) => Kubeconfig::read_from(p)
            .with_context(|| format!("reading kubeconfig {}", p.display()))?,
        None => {
            Kubeconfig::read().context("reading the kubeconfig (KUBECONFIG or ~/.kube/config)")?
        }
    };
    if let Some(name) = context
        && !kc.contexts.iter().any(|c| c.name == name)
    {
        return Err(KubeconfigProblem::UnknownContext {
            file: first.map(|f| f.display().to_string()).unwrap_or_default(),
            name: name.to_string(),
            known: kc.contexts.iter().map(|c| c.name.clone()).collect(),
        }
        .into());
    }
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

pub fn finish(
    mut config: kube::Config,
    resolved_file: Option<std::path::PathBuf>,
    resolved_context: Option<String>,
) -> anyhow::Result<Cluster> {
    // kube retries 429 silently (up to 15 times); kmsctl adapts to it instead, and shows it.
    config.default_retry = false;
    config.read_timeout = Some(Duration::from_secs(90));
    config.connect_timeout = Some(Duration::from_secs(15));
    let server = config.cluster_url.to_string();
    let client = build(&config).context("building the Kubernetes client")?;
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

/// The host and port a server URL names, `host:port` in lower case (443 for https when no port
/// is written, 80 for http): what the wrong-cluster guard compares. Two API servers behind one
/// host (local tunnels on 127.0.0.1, say) differ by port.
pub fn server_endpoint(server: &str) -> String {
    let (scheme, rest) = server.split_once("://").unwrap_or(("https", server));
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = server_host(server);
    let written = if authority.starts_with('[') {
        authority.split_once("]:").map(|(_, p)| p)
    } else {
        authority.rsplit_once(':').map(|(_, p)| p)
    };
    let port = match written {
        Some(p) if !p.is_empty() => p.to_string(),
        _ if scheme.eq_ignore_ascii_case("http") => "80".into(),
        _ => "443".into(),
    };
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoints_name_host_and_port() {
        assert_eq!(
            super::server_endpoint("https://AKS-abc.hcp.westeurope.azmk8s.io"),
            "aks-abc.hcp.westeurope.azmk8s.io:443"
        );
        assert_eq!(
            super::server_endpoint("https://aks-abc.hcp.westeurope.azmk8s.io:443/"),
            "aks-abc.hcp.westeurope.azmk8s.io:443"
        );
        assert_eq!(
            super::server_endpoint("https://127.0.0.1:6443"),
            "127.0.0.1:6443"
        );
        assert_ne!(
            super::server_endpoint("https://127.0.0.1:6443"),
            super::server_endpoint("https://127.0.0.1:7443")
        );
        assert_eq!(super::server_endpoint("https://[::1]:8443/x"), "[::1]:8443");
        assert_eq!(super::server_endpoint("http://10.0.0.1"), "10.0.0.1:80");
    }

    #[test]
    fn hosts() {
        assert_eq!(
            super::server_host("https://aks-abc.hcp.westeurope.azmk8s.io:443/"),
            "aks-abc.hcp.westeurope.azmk8s.io"
        );
        assert_eq!(super::server_host("https://127.0.0.1:6443"), "127.0.0.1");
    }
}
