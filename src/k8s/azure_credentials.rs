//! Reaching a cluster's API server from Resource Manager, without a kubeconfig
//! (`--kube-credentials azure|azure-admin`): `listClusterUserCredential` gives the server, its
//! CA and any proxy, and for an Entra ID cluster a kubeconfig user that runs kubelogin. kmsctl
//! ignores that exec plugin and does what kubelogin does: a token from its own Azure credential
//! for the AKS Entra ID server application, sent as a bearer, refreshed before it expires (a
//! run can outlast a token). `listClusterAdminCredential` (local accounts) is used as given.

use crate::azure::arm::ArmClient;
use azure_core::credentials::TokenCredential;
use http::HeaderValue;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::time::Duration;

/// The AKS Entra ID server application (kubelogin's `--server-id`).
pub const AKS_SERVER_APP: &str = "6dae42f8-4368-4678-94ff-3960e28e3630";
pub const AKS_SCOPE: &str = "6dae42f8-4368-4678-94ff-3960e28e3630/.default";
/// A token is replaced this long before it expires.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// Which credential Resource Manager is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    User,
    Admin,
}

impl Which {
    pub fn action(self) -> &'static str {
        match self {
            Which::User => "listClusterUserCredential",
            Which::Admin => "listClusterAdminCredential",
        }
    }
}

/// The kubeconfig in a `listCluster*Credential` answer
/// (`{"kubeconfigs":[{"name","value":<base64>}]}`).
pub fn kubeconfig_text(answer: &Value) -> anyhow::Result<String> {
    use base64::Engine;
    let value = answer["kubeconfigs"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|k| k["value"].as_str())
        .ok_or_else(|| anyhow::anyhow!("Resource Manager's answer holds no kubeconfig"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|e| {
            anyhow::anyhow!("the kubeconfig Resource Manager returned is not base64: {e}")
        })?;
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("the kubeconfig is not UTF-8"))
}

/// Drops every user's exec plugin (kubelogin); says whether there was one (then kmsctl sends
/// its own Entra token).
pub fn without_exec(kc: &mut Kubeconfig) -> bool {
    let mut had = false;
    for u in &mut kc.auth_infos {
        if let Some(a) = u.auth_info.as_mut()
            && a.exec.take().is_some()
        {
            had = true;
        }
    }
    had
}

/// The kube configuration the credential kubeconfig describes, and whether it needs kmsctl's
/// own Entra token (an Entra ID cluster's exec user).
pub async fn config_from(text: &str) -> anyhow::Result<(kube::Config, bool)> {
    let mut kc = Kubeconfig::from_yaml(text)
        .map_err(|e| anyhow::anyhow!("the kubeconfig Resource Manager returned: {e}"))?;
    let entra = without_exec(&mut kc);
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| anyhow::anyhow!("the kubeconfig Resource Manager returned: {e}"))?;
    Ok((config, entra))
}

/// Asks Resource Manager for the cluster's credential.
pub async fn fetch(arm: &ArmClient, cluster_path: &str, which: Which) -> anyhow::Result<String> {
    let answer = arm
        .post_action(&format!("{cluster_path}/{}", which.action()), &arm.api.aks)
        .await?;
    kubeconfig_text(&answer.body)
}

/// An Entra token for the AKS server application, kept fresh in the background.
#[derive(Clone)]
pub struct Bearer(Arc<Current>);

struct Current {
    header: RwLock<HeaderValue>,
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<token>)")
    }
}

/// The shortest wait between two token requests (a token endpoint that hands out short-lived
/// tokens is not asked in a loop).
const MIN_WAIT: Duration = if cfg!(test) {
    Duration::from_millis(500)
} else {
    Duration::from_secs(10)
};

/// How long to wait before replacing a token that is valid for `left`.
pub fn refresh_in(left: Duration) -> Duration {
    left.saturating_sub(REFRESH_BEFORE).max(MIN_WAIT)
}

async fn token(credential: &dyn TokenCredential) -> anyhow::Result<(HeaderValue, Duration)> {
    let t = credential
        .get_token(&[AKS_SCOPE], None)
        .await
        .map_err(|e| anyhow::anyhow!("a token for the AKS server application: {e}"))?;
    let mut header = HeaderValue::try_from(format!("Bearer {}", t.token.secret()))
        .map_err(|_| anyhow::anyhow!("the AKS token is not a valid header value"))?;
    header.set_sensitive(true);
    let left = (t.expires_on - azure_core::time::OffsetDateTime::now_utc()).whole_seconds();
    Ok((header, Duration::from_secs(left.max(0) as u64)))
}

impl Bearer {
    /// Gets a first token now (an error is the caller's to report), then replaces it before it
    /// expires for as long as the bearer is in use.
    pub async fn start(credential: Arc<dyn TokenCredential>) -> anyhow::Result<Bearer> {
        let (header, left) = token(credential.as_ref()).await?;
        let current = Arc::new(Current {
            header: RwLock::new(header),
        });
        let weak: Weak<Current> = Arc::downgrade(&current);
        tokio::spawn(async move {
            let mut wait = refresh_in(left);
            loop {
                tokio::time::sleep(wait).await;
                let Some(current) = weak.upgrade() else {
                    return;
                };
                match token(credential.as_ref()).await {
                    Ok((h, left)) => {
                        *current.header.write().unwrap_or_else(|e| e.into_inner()) = h;
                        wait = refresh_in(left);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "refreshing the AKS token failed; trying again in 15 s");
                        wait = Duration::from_secs(15);
                    }
                }
            }
        });
        Ok(Bearer(current))
    }

    fn header(&self) -> HeaderValue {
        self.0
            .header
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The bearers of the API servers reached this way, by server URL: every client kmsctl builds
/// for such a server (fresh connections for probes and barriers) sends its bearer. Several
/// clusters in one process each have their own.
static BEARERS: LazyLock<Mutex<HashMap<String, Bearer>>> = LazyLock::new(Default::default);

pub fn register(config: &kube::Config, bearer: Bearer) {
    BEARERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(config.cluster_url.to_string(), bearer);
}

/// Stops refreshing the token of `config`'s server (a fleet process done with a cluster); the
/// clients built for it stop authenticating once their token expires.
pub fn unregister(config: &kube::Config) {
    BEARERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&config.cluster_url.to_string());
}

pub fn bearer_for(config: &kube::Config) -> Option<Bearer> {
    BEARERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&config.cluster_url.to_string())
        .cloned()
}

/// Adds `Authorization: Bearer <the current token>` to every request.
#[derive(Clone)]
pub struct BearerLayer(pub Bearer);

impl<S> tower_layer::Layer<S> for BearerLayer {
    type Service = BearerService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BearerService {
            inner,
            bearer: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct BearerService<S> {
    inner: S,
    bearer: Bearer,
}

impl<S, B> tower_service::Service<http::Request<B>> for BearerService<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, self.bearer.header());
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const ENTRA: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://c-dns-1.hcp.westeurope.azmk8s.io:443\n    proxy-url: http://127.0.0.1:9\n    certificate-authority-data: AAAA\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      args: [get-token, --login, devicecode, --server-id, 6dae42f8-4368-4678-94ff-3960e28e3630]\n      command: kubelogin\n";

    #[test]
    fn the_answer_holds_a_base64_kubeconfig() {
        let value = base64::engine::general_purpose::STANDARD.encode(ENTRA);
        let answer =
            serde_json::json!({ "kubeconfigs": [{ "name": "clusterUser", "value": value }] });
        assert_eq!(kubeconfig_text(&answer).unwrap(), ENTRA);
        assert!(kubeconfig_text(&serde_json::json!({ "kubeconfigs": [] })).is_err());
        assert!(
            kubeconfig_text(&serde_json::json!({ "kubeconfigs": [{ "value": "%%" }] })).is_err()
        );
    }

    #[test]
    fn the_exec_plugin_is_dropped_and_noted() {
        let mut kc = Kubeconfig::from_yaml(ENTRA).unwrap();
        assert!(without_exec(&mut kc));
        assert!(kc.auth_infos[0].auth_info.as_ref().unwrap().exec.is_none());
        assert!(!without_exec(&mut kc), "nothing left to drop");
    }

    #[test]
    fn tokens_are_replaced_before_they_expire() {
        assert_eq!(
            refresh_in(Duration::from_secs(3599)),
            Duration::from_secs(3299)
        );
        assert_eq!(refresh_in(Duration::from_secs(60)), MIN_WAIT);
        assert_eq!(refresh_in(Duration::ZERO), MIN_WAIT);
    }

    /// Hands out numbered tokens valid for one second.
    #[derive(Debug, Default)]
    struct ShortLived(std::sync::atomic::AtomicU32);

    #[async_trait::async_trait]
    impl TokenCredential for ShortLived {
        async fn get_token(
            &self,
            scopes: &[&str],
            _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<azure_core::credentials::AccessToken> {
            assert_eq!(scopes, [AKS_SCOPE]);
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(azure_core::credentials::AccessToken::new(
                format!("t{n}"),
                azure_core::time::OffsetDateTime::now_utc()
                    + azure_core::time::Duration::seconds(1),
            ))
        }
    }

    #[tokio::test]
    async fn a_running_bearer_replaces_its_token_and_stops_with_its_last_user() {
        let cred = Arc::new(ShortLived::default());
        let bearer = Bearer::start(cred.clone()).await.unwrap();
        assert_eq!(bearer.header(), "Bearer t0");
        assert!(bearer.header().is_sensitive(), "never logged");
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let asked = cred.0.load(std::sync::atomic::Ordering::SeqCst);
        assert!(asked >= 2, "replaced before it expired");
        assert_eq!(bearer.header(), format!("Bearer t{}", asked - 1).as_str());
        drop(bearer);
        let asked = cred.0.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(
            cred.0.load(std::sync::atomic::Ordering::SeqCst) <= asked + 1,
            "no more tokens once nobody uses the bearer"
        );
    }
}
