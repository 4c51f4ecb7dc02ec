//! One probe of the canary, attributed to the API server replica that served it. A probe opens a
//! fresh connection (a balancer gives it to one replica) and keeps to it: /metrics first (which
//! replica this is, and how many objects it has written per KMS key), then the canary PUT back
//! unchanged (or created, or touched), then /metrics again after a write, so the write counter
//! that moved names the key the replica wrote with. Without readable /metrics, or on a replica
//! that exports no envelope-encryption series, the probe still says what the PUT did, but not who
//! did it: such evidence counts only as time-based evidence.

use super::KubeError;
use super::replicas::{self, ReplicaMetrics};
use crate::retry::{RetryHint, Retryable};
use kube::api::{Api, DynamicObject, PostParams};
use serde::{Deserialize, Serialize};

/// The key a replica wrote an object with, as its write counters show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WriteKey {
    /// A KMS v2 key, by its key id hash.
    Kms(String),
    /// No KMS v2 key: identity (KMS off), KMS v1, or another provider without key ids.
    NotKmsV2,
}

impl std::fmt::Display for WriteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteKey::Kms(h) => write!(f, "KMS key id hash {}", short(h)),
            WriteKey::NotKmsV2 => f.write_str("no KMS v2 key"),
        }
    }
}

fn short(hash: &str) -> &str {
    hash.get(..19).unwrap_or(hash)
}

/// What the probe's write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not written: the replica already writes with the key the canary is under.
    NoOp,
    /// Written: by an unchanged PUT (the replica writes with another key than the canary's), or
    /// by the probe's own create or touch.
    Written,
    /// Someone else changed the canary since kmsctl last saw it (carries its new version).
    ChangedByOthers,
    /// The canary does not exist.
    Missing,
    /// Throttled, a 5xx, a dropped or closed connection: no evidence, try again.
    Retry,
}

/// How a probe writes the canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// PUT back exactly as read: written only by a replica with another write key.
    Unchanged,
    /// PUT with a new `kmsctl.io/touched` annotation: always written, so the counters show the
    /// serving replica's write key. Only where /metrics answered first (else unchanged): an
    /// unattributed touch would show nothing and hide a flip.
    Touch,
}

/// What /metrics allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metrics {
    Readable,
    /// 401/403/404: this user cannot read /metrics; no probe will be attributed.
    Forbidden,
    /// Read failed this time (a 5xx, 429, a drop) or was not asked.
    Failed,
}

#[derive(Clone, Debug)]
pub struct Probe {
    pub outcome: Outcome,
    /// The canary's resourceVersion after the probe.
    pub rv: Option<String>,
    /// The replica that served the probe (None: unattributed).
    pub replica: Option<String>,
    /// For `Written` with readable counters: the key the replica wrote with (None: unknown, e.g.
    /// counters of several keys moved, or the probe was unattributed).
    pub wrote_with: Option<WriteKey>,
    pub metrics: Metrics,
    /// The probe touched the canary (so a write shows the key used, not a key change).
    pub touched: bool,
}

impl Probe {
    fn retry(metrics: Metrics) -> Self {
        Probe {
            outcome: Outcome::Retry,
            rv: None,
            replica: None,
            wrote_with: None,
            metrics,
            touched: false,
        }
    }
}

const TOUCHED: &str = "kmsctl.io/touched";

fn transient(e: &KubeError) -> bool {
    matches!(e.retry_hint(), RetryHint::After(_)) || e.code().is_none()
}

async fn read_metrics(client: &kube::Client) -> (Metrics, Option<ReplicaMetrics>) {
    let Ok(request) = http::Request::get("/metrics").body(Vec::new()) else {
        return (Metrics::Failed, None);
    };
    match client.request_text(request).await.map_err(KubeError::from) {
        Ok(text) => (Metrics::Readable, Some(replicas::parse_replica(&text))),
        Err(e) if matches!(e.code(), Some(401 | 403 | 404)) => (Metrics::Forbidden, None),
        Err(e) => {
            tracing::debug!(error = %e, "reading /metrics failed; this probe is not attributed");
            (Metrics::Failed, None)
        }
    }
}

/// The one key whose write counter moved between two readings (None: several did, or the
/// replica exports no write counters, so a write that moved none proves nothing).
fn moved(before: &ReplicaMetrics, after: &ReplicaMetrics) -> Option<WriteKey> {
    if !after.has_write_counters {
        return None;
    }
    let up: Vec<&String> = after
        .writes
        .iter()
        .filter(|(k, n)| **n > before.writes.get(*k).copied().unwrap_or(0.0))
        .map(|(k, _)| k)
        .collect();
    match up.as_slice() {
        [] => Some(WriteKey::NotKmsV2),
        [one] => Some(WriteKey::Kms((*one).clone())),
        _ => None,
    }
}

/// Probes the canary over one fresh connection. `expect_rv`: the version kmsctl last saw (a
/// different one means someone else wrote it). `ask_metrics`: false once /metrics was forbidden.
pub async fn probe(
    config: &kube::Config,
    name: &str,
    namespace: &str,
    expect_rv: Option<&str>,
    write: Write,
    ask_metrics: bool,
) -> Result<Probe, KubeError> {
    let client = super::client::pinned(config)?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &super::secrets());
    let (metrics, before) = if ask_metrics {
        read_metrics(&client).await
    } else {
        (Metrics::Failed, None)
    };
    let mut current = match api.get_opt(name).await.map_err(KubeError::from) {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Ok(Probe {
                outcome: Outcome::Missing,
                ..Probe::retry(metrics)
            });
        }
        Err(e) if transient(&e) => return Ok(Probe::retry(metrics)),
        Err(e) => return Err(e),
    };
    let seen = current.metadata.resource_version.clone();
    if let Some(rv) = expect_rv
        && seen.as_deref() != Some(rv)
    {
        return Ok(Probe {
            outcome: Outcome::ChangedByOthers,
            rv: seen,
            ..Probe::retry(metrics)
        });
    }
    current.metadata.managed_fields = None;
    let touched = write == Write::Touch && before.as_ref().is_some_and(|b| b.replica.is_some());
    if touched {
        current
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(TOUCHED.into(), uuid::Uuid::new_v4().simple().to_string());
    }
    let after = match api
        .replace(name, &PostParams::default(), &current)
        .await
        .map_err(KubeError::from)
    {
        Ok(after) => after.metadata.resource_version,
        Err(e) if e.code() == Some(409) => {
            let rv = api
                .get(name)
                .await
                .ok()
                .and_then(|c| c.metadata.resource_version);
            // A conflict on a canary nobody changed (the version is still the one PUT against)
            // shows nothing: try again.
            if rv.is_none() || rv == seen {
                return Ok(Probe::retry(metrics));
            }
            return Ok(Probe {
                outcome: Outcome::ChangedByOthers,
                rv,
                ..Probe::retry(metrics)
            });
        }
        Err(e) if e.code() == Some(404) => {
            return Ok(Probe {
                outcome: Outcome::Missing,
                ..Probe::retry(metrics)
            });
        }
        Err(e) if transient(&e) => return Ok(Probe::retry(metrics)),
        Err(e) => return Err(e),
    };
    let written = after != seen;
    let (replica, wrote_with) = match (&before, written) {
        (Some(b), true) => match read_metrics(&client).await {
            // The same connection, so the same replica: only its counters could have moved.
            (Metrics::Readable, Some(a)) if a.replica.is_some() || b.replica.is_some() => {
                let replica = b.replica.clone().or(a.replica.clone());
                if a.replica.is_some() && b.replica.is_some() && a.replica != b.replica {
                    (None, None)
                } else {
                    (replica, moved(b, &a))
                }
            }
            _ => (None, None),
        },
        (Some(b), false) => (b.replica.clone(), None),
        (None, _) => (None, None),
    };
    Ok(Probe {
        outcome: if written {
            Outcome::Written
        } else {
            Outcome::NoOp
        },
        rv: after,
        replica,
        wrote_with,
        metrics,
        touched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(replica: &str, writes: &[(&str, f64)]) -> ReplicaMetrics {
        ReplicaMetrics {
            replica: Some(replica.into()),
            writes: writes.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            has_write_counters: true,
        }
    }

    #[test]
    fn the_counter_that_moved_names_the_write_key() {
        let before = m("a", &[("old", 5.0)]);
        assert_eq!(
            moved(&before, &m("a", &[("old", 5.0), ("new", 1.0)])),
            Some(WriteKey::Kms("new".into()))
        );
        assert_eq!(
            moved(&before, &m("a", &[("old", 6.0)])),
            Some(WriteKey::Kms("old".into()))
        );
        // Nothing moved: the write went to a provider without key ids (identity, KMS v1).
        assert_eq!(moved(&before, &before), Some(WriteKey::NotKmsV2));
        // Two moved (another writer meanwhile, during a switch): unknown.
        assert_eq!(moved(&before, &m("a", &[("old", 6.0), ("new", 1.0)])), None);
        // Status series only (an older kube-apiserver): nothing can be said of the write.
        let status_only = ReplicaMetrics {
            has_write_counters: false,
            ..m("a", &[])
        };
        assert_eq!(moved(&status_only, &status_only), None);
    }
}
