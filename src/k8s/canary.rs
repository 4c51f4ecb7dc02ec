//! The key-switch barrier. After AKS reports a new KMS configuration, each API server replica
//! keeps writing with its previous key until its own next status call to its plugin (about a
//! minute apart), and a replica that has not switched rewrites a Secret BACK to the old key on
//! an unchanged PUT. So kmsctl proves, before re-encrypting, that every replica writes with the
//! new key:
//! - before the change, a Secret it owns (the canary) is PUT back unchanged over fresh
//!   connections until every such PUT is a no-op: it is then current on the replicas;
//! - after the change, either /metrics of every replica (counted from their identity Leases)
//!   shows a new key id hash, or kmsctl's own unchanged PUT rewrote the canary (a flip) and then,
//!   over fresh connections, no PUT rewrote it for longer than a status period plus margin.
//!   A change to the canary that kmsctl did not make (a 409 on its PUT) voids what was seen.

use super::KubeError;
use super::replicas::{self, KeyHashes};
use crate::retry::{RetryHint, RetryPolicy, Retryable};
use kube::api::{Api, DynamicObject, PostParams};
use serde::Serialize;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const NAME: &str = "kmsctl-canary";
const NAMESPACE: &str = "kube-system";

fn api(client: &kube::Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NAMESPACE, &crate::k8s::secrets())
}

/// Makes sure the canary exists.
pub async fn plant(client: &kube::Client) -> Result<(), KubeError> {
    let api = api(client);
    let retry = RetryPolicy::default();
    if retry
        .run("get the canary", || async {
            api.get_opt(NAME).await.map_err(KubeError::from)
        })
        .await?
        .is_some()
    {
        return Ok(());
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
    retry
        .run("create the canary", || async {
            match api.create(&PostParams::default(), &s).await {
                Ok(_) => Ok(()),
                // Created meanwhile (by another attempt or a resumed run): it exists.
                Err(e) => match KubeError::from(e) {
                    e if e.code() == Some(409) => Ok(()),
                    e => Err(e),
                },
            }
        })
        .await
}

/// What one unchanged PUT of the canary showed.
enum Put {
    /// Not written: the serving replica already writes with the key the canary is under.
    NoOp(String),
    /// Written by kmsctl's own unchanged PUT: the serving replica writes with another key.
    Rewritten(String),
    /// Someone else changed the canary since kmsctl last saw it (409): carries its new version.
    ChangedByOthers(String),
    /// Throttled, a 5xx or a dropped connection: try again.
    Retry,
}

/// GETs (when `rv` is None) and PUTs the canary back unchanged, on a fresh connection.
async fn put_unchanged(config: &kube::Config, rv: Option<&str>) -> Result<Put, KubeError> {
    let api = api(&super::client::fresh(config)?);
    let transient = |e: &KubeError| matches!(e.retry_hint(), RetryHint::After(_));
    let mut current = match api.get(NAME).await.map_err(KubeError::from) {
        Ok(c) => c,
        Err(e) if transient(&e) => return Ok(Put::Retry),
        Err(e) => return Err(e),
    };
    let seen = current
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    if let Some(rv) = rv
        && rv != seen
    {
        return Ok(Put::ChangedByOthers(seen));
    }
    current.metadata.managed_fields = None;
    match api
        .replace(NAME, &PostParams::default(), &current)
        .await
        .map_err(KubeError::from)
    {
        Ok(after) => {
            let after = after.metadata.resource_version.unwrap_or_default();
            Ok(if after == seen {
                Put::NoOp(after)
            } else {
                Put::Rewritten(after)
            })
        }
        Err(e) if e.code() == Some(409) => {
            let fresh = api.get(NAME).await.map_err(KubeError::from)?;
            Ok(Put::ChangedByOthers(
                fresh.metadata.resource_version.unwrap_or_default(),
            ))
        }
        Err(e) if transient(&e) => Ok(Put::Retry),
        Err(e) => Err(e),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BarrierError {
    #[error(
        "the API server replicas still disagree about the write key after {waited}s ({detail}). Re-encrypting now could leave Secrets under the old key. Wait a few minutes and run `kmsctl resume` (--switch-timeout-seconds N waits longer); if it persists, check the KMS plugin in AKS diagnostics"
    )]
    Timeout { waited: u64, detail: String },
    #[error(
        "the canary Secret {NAMESPACE}/{NAME} kept being rewritten by unchanged PUTs: the API server replicas do not agree on the write key, so a key switch is still under way. Wait a few minutes (a replica learns a new key at its next KMS status call) and run again"
    )]
    NotCurrent,
    #[error(
        "lost the cluster's lease while waiting for the key switch; another kmsctl may act on this cluster. Run `kmsctl resume` once no other run is active"
    )]
    LeaseLost,
    #[error(transparent)]
    Api(#[from] KubeError),
}

/// Before a change: PUTs the canary back unchanged over fresh connections until `replicas` PUTs
/// in a row were no-ops, so a flip after the change can only come from the change.
pub async fn make_current(config: &kube::Config, replicas: usize) -> Result<(), BarrierError> {
    let mut no_ops = 0;
    for attempt in 0..(12 + 4 * replicas) {
        match put_unchanged(config, None).await? {
            Put::NoOp(_) => no_ops += 1,
            Put::Retry => tokio::time::sleep(Duration::from_millis(500)).await,
            Put::Rewritten(_) | Put::ChangedByOthers(_) => {
                no_ops = 0;
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        if no_ops >= replicas.max(1) {
            return Ok(());
        }
    }
    Err(BarrierError::NotCurrent)
}

/// The canary as planted: its resourceVersion and a hash of what it holds (data, labels,
/// annotations). A later rv with the same content means an unchanged PUT rewrote it, which only a
/// replica writing with another key does.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Planted {
    pub rv: String,
    pub content: String,
}

fn content_hash(o: &DynamicObject) -> String {
    use sha2::Digest;
    let doc = serde_json::json!({
        "data": o.data.get("data"),
        "labels": o.metadata.labels,
        "annotations": o.metadata.annotations,
    });
    let digest = sha2::Sha256::digest(doc.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The canary now, as `Planted` records it.
pub async fn snapshot(config: &kube::Config) -> Result<Planted, KubeError> {
    let o = api(&super::client::fresh(config)?)
        .get(NAME)
        .await
        .map_err(KubeError::from)?;
    Ok(Planted {
        rv: o.metadata.resource_version.clone().unwrap_or_default(),
        content: content_hash(&o),
    })
}

/// What the barrier needs to know.
pub struct Barrier<'a> {
    pub config: &'a kube::Config,
    /// Replicas counted from their identity Leases (None: unknown).
    pub replicas: Option<usize>,
    /// Each replica's newest key id hash before the change (None: /metrics not readable).
    pub metrics_before: Option<KeyHashes>,
    /// The change goes to a KMS v2 key, which /metrics can show.
    pub to_kms_v2: bool,
    /// A flip of the canary must be seen (the write key changed); otherwise only settling.
    pub need_flip: bool,
    /// How often a replica asks its plugin for the key id (about 60 s on a real one).
    pub status_period: Duration,
    /// The canary as planted before the change (None: an older journal without it).
    pub planted: Option<Planted>,
    pub timeout: Duration,
    pub poll: Duration,
    pub lease_lost: &'a AtomicBool,
}

/// What proved the switch, for the journal and the run's output.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Proof {
    /// `metrics`, or `canary` (a flip then quiet), or `settled` (quiet, no flip needed).
    pub evidence: String,
    pub replicas: Option<usize>,
    pub flips: u32,
    pub waited_seconds: f64,
    pub detail: String,
}

impl Barrier<'_> {
    /// Quiet time that shows every replica has had a status call since the last rewrite: one
    /// and a half status periods (replicas call at their own moments) plus 2 s of network.
    pub fn settle(&self) -> Duration {
        self.status_period.mul_f64(1.5) + Duration::from_secs(2)
    }

    /// Every replica reports a key id hash that differs from the one it had before, all the same.
    fn metrics_prove(&self, now: &KeyHashes) -> bool {
        let (Some(before), Some(n)) = (&self.metrics_before, self.replicas) else {
            return false;
        };
        // A rotation is judged per replica: each must have been seen before the change.
        if !before.is_empty() && before.len() < n {
            return false;
        }
        if now.len() < n {
            return false;
        }
        let mut hashes = now.values().map(|(h, _)| h);
        let first = hashes.next();
        now.iter()
            .all(|(replica, (hash, _))| before.get(replica).is_none_or(|(old, _)| old != hash))
            && hashes.all(|h| Some(h) == first)
    }

    pub async fn prove(&self) -> Result<Proof, BarrierError> {
        let start = Instant::now();
        let settle = self.settle();
        let mut rv: Option<String> = None;
        let mut flips = 0u32;
        let mut last_change = Instant::now();
        // A run resumed after a kill: the killed process may have seen (and caused) the flip
        // already. An unchanged canary with a new rv was rewritten by a switched replica; it
        // counts as the flip, and the quiet time starts now.
        if let Some(p) = &self.planted {
            let now = snapshot(self.config).await?;
            if now.rv != p.rv {
                if now.content == p.content {
                    tracing::info!(
                        "the canary was rewritten unchanged since it was planted: a replica writes with the new key"
                    );
                    flips = 1;
                } else {
                    tracing::warn!(
                        "the canary was changed by another writer since it was planted; waiting for a flip of its own"
                    );
                }
                rv = Some(now.rv);
            }
        }
        let mut metrics_readable = self.to_kms_v2 && self.metrics_before.is_some();
        loop {
            if self.lease_lost.load(Ordering::SeqCst) {
                return Err(BarrierError::LeaseLost);
            }
            if metrics_readable && let Some(n) = self.replicas {
                match replicas::sample_key_hashes(self.config, n, 4 * n).await? {
                    Some(now) if self.metrics_prove(&now) => {
                        return Ok(Proof {
                            evidence: "metrics".into(),
                            replicas: Some(n),
                            flips,
                            waited_seconds: start.elapsed().as_secs_f64(),
                            detail: format!(
                                "/metrics of all {n} API server replicas show the new key id hash"
                            ),
                        });
                    }
                    Some(_) => {}
                    None => metrics_readable = false,
                }
            }
            match put_unchanged(self.config, rv.as_deref()).await? {
                Put::NoOp(v) => rv = Some(v),
                Put::Rewritten(v) => {
                    rv = Some(v);
                    flips += 1;
                    last_change = Instant::now();
                }
                Put::ChangedByOthers(v) => {
                    tracing::warn!(
                        "the canary {NAMESPACE}/{NAME} was changed by another writer: what was seen so far no longer counts; waiting again"
                    );
                    rv = Some(v);
                    flips = 0;
                    last_change = Instant::now();
                }
                Put::Retry => {}
            }
            let quiet = last_change.elapsed();
            if (flips > 0 || !self.need_flip) && quiet >= settle {
                let replicas = self.replicas.map_or("the API server".to_string(), |n| {
                    format!("{n} API server replica(s)")
                });
                return Ok(Proof {
                    evidence: if flips > 0 { "canary" } else { "settled" }.into(),
                    replicas: self.replicas,
                    flips,
                    waited_seconds: start.elapsed().as_secs_f64(),
                    detail: format!(
                        "{} then no unchanged PUT over fresh connections to {replicas} rewrote the canary for {:.0}s (status period {:.0}s plus margin)",
                        if flips > 0 {
                            "kmsctl's own unchanged PUT rewrote the canary under the new key,"
                        } else {
                            "no key change was expected, and"
                        },
                        quiet.as_secs_f64(),
                        self.status_period.as_secs_f64()
                    ),
                });
            }
            if start.elapsed() >= self.timeout {
                return Err(BarrierError::Timeout {
                    waited: start.elapsed().as_secs(),
                    detail: if flips == 0 {
                        "the canary was never rewritten by kmsctl's unchanged PUT".into()
                    } else {
                        format!(
                            "the canary was last rewritten {:.0}s ago",
                            quiet.as_secs_f64()
                        )
                    },
                });
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}
