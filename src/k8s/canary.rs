//! The key-switch barrier. After AKS reports a new KMS configuration, the API server may keep
//! writing with the previous key for minutes (a KMS v2 plugin's key id is polled about once a
//! minute). kmsctl plants a Secret it owns before the change and, after it, PUTs it back unchanged
//! until its resourceVersion changes: only a stale object is rewritten, so a new resourceVersion
//! proves the API server now writes with another key than the one the canary was planted under.

use super::KubeError;
use crate::retry::{RetryPolicy, Retryable};
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};

pub const NAME: &str = "kmsctl-canary";
const NAMESPACE: &str = "kube-system";

fn api(client: &kube::Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NAMESPACE, &crate::k8s::secrets())
}

/// Makes sure the canary exists; returns its resourceVersion (the "planted" one).
pub async fn plant(client: &kube::Client) -> Result<String, KubeError> {
    let api = api(client);
    let retry = RetryPolicy::default();
    if let Some(c) = retry
        .run("get the canary", || async {
            api.get_opt(NAME).await.map_err(KubeError::from)
        })
        .await?
    {
        return Ok(c.metadata.resource_version.unwrap_or_default());
    }
    let mut s = DynamicObject::new(NAME, &crate::k8s::secrets()).within(NAMESPACE);
    s.metadata.labels = Some(
        [(
            "app.kubernetes.io/managed-by".to_string(),
            "kmsctl".to_string(),
        )]
        .into(),
    );
    s.metadata.annotations = Some(
        [(
            "kmsctl.io/purpose".to_string(),
            "proves a KMS key switch before re-encryption".to_string(),
        )]
        .into(),
    );
    s.data = json!({ "type": "Opaque", "data": { "canary": "a21zY3RsIGNhbmFyeQ==" } });
    let created = retry
        .run("create the canary", || async {
            api.create(&PostParams::default(), &s)
                .await
                .map_err(KubeError::from)
        })
        .await?;
    Ok(created.metadata.resource_version.unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
pub enum BarrierError {
    #[error(
        "the API server still writes with the previous key {waited}s after the change (the canary Secret {NAMESPACE}/{NAME} was not rewritten). Re-encrypting now would rewrite nothing. Wait a few minutes and run `kmsctl resume`; if it persists, check the KMS plugin in AKS diagnostics"
    )]
    Timeout { waited: u64 },
    #[error(transparent)]
    Api(#[from] KubeError),
}

/// Waits until the canary is rewritten under a new key (its resourceVersion moves on from `planted`).
pub async fn prove_switch(
    client: &kube::Client,
    planted: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<Duration, BarrierError> {
    let api = api(client);
    let retry = RetryPolicy::default();
    let start = Instant::now();
    loop {
        let current = retry
            .run("read the canary", || async {
                api.get(NAME).await.map_err(KubeError::from)
            })
            .await?;
        if current.metadata.resource_version.as_deref() != Some(planted) {
            return Ok(start.elapsed());
        }
        let after = match api
            .replace(NAME, &PostParams::default(), &current)
            .await
            .map_err(KubeError::from)
        {
            Ok(a) => a,
            Err(e)
                if matches!(e.retry_hint(), crate::retry::RetryHint::After(_))
                    || e.code() == Some(409) =>
            {
                tokio::time::sleep(poll).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if after.metadata.resource_version.as_deref() != Some(planted) {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(BarrierError::Timeout {
                waited: start.elapsed().as_secs(),
            });
        }
        tokio::time::sleep(poll).await;
    }
}
