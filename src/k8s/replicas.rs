//! The API server replicas behind the cluster's one address, and what each says about its KMS
//! key. Every kube-apiserver announces itself with an identity Lease in kube-system; where
//! /metrics is readable, each reports the key id hash its plugin's status calls returned
//! (`apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds`). Each sample is
//! taken over a fresh connection, since a balancer sends each connection to one replica.

use super::KubeError;
use kube::api::{Api, DynamicObject, ListParams};
use std::collections::BTreeMap;

const IDENTITY_LABEL: &str = "apiserver.kubernetes.io/identity=kube-apiserver";
/// An identity Lease renewed within this long belongs to a live replica.
const LIVE_WITHIN: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
const STATUS_METRIC: &str =
    "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds";

/// How many API server replicas announce themselves (None: none do, so the count is unknown).
pub async fn count(client: &kube::Client) -> Result<Option<usize>, KubeError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "kube-system", &super::lease::resource());
    let list = crate::retry::RetryPolicy::default()
        .run("list the API server identity leases", || async {
            api.list(&ListParams::default().labels(IDENTITY_LABEL))
                .await
                .map_err(KubeError::from)
        })
        .await?;
    // A replica that went away leaves its Lease for up to an hour; a live one renews it every
    // 10 s. Only those renewed lately are counted.
    let now = chrono::Utc::now();
    let live = list
        .items
        .iter()
        .filter(|l| {
            l.data["spec"]["renewTime"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| now - t.with_timezone(&chrono::Utc) < LIVE_WITHIN)
        })
        .count();
    Ok((live > 0).then_some(live))
}

/// The newest key id hash each replica's plugin reported, and when (seconds since the epoch).
pub type KeyHashes = BTreeMap<String, (String, f64)>;

/// Parses the status metric: per replica (`apiserver_id_hash`), the series with the newest timestamp.
pub fn parse_status_metric(text: &str) -> KeyHashes {
    let mut out: KeyHashes = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(STATUS_METRIC) else {
            continue;
        };
        let Some((labels, value)) = rest
            .strip_prefix('{')
            .and_then(|r| r.rsplit_once('}'))
            .map(|(l, v)| (l, v.trim()))
        else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
            })
        };
        let (Some(apiserver), Some(key), Ok(at)) = (
            label("apiserver_id_hash"),
            label("key_id_hash"),
            value.split_whitespace().next().unwrap_or("").parse::<f64>(),
        ) else {
            continue;
        };
        match out.get(&apiserver) {
            Some((_, t)) if *t >= at => {}
            _ => {
                out.insert(apiserver, (key, at));
            }
        }
    }
    out
}

/// Samples /metrics over fresh connections until `replicas` distinct replicas answered (or
/// `attempts` ran out). None when /metrics is not readable for this user.
pub async fn sample_key_hashes(
    config: &kube::Config,
    replicas: usize,
    attempts: usize,
) -> Result<Option<KeyHashes>, KubeError> {
    let mut seen: KeyHashes = BTreeMap::new();
    for _ in 0..attempts.max(1) {
        let client = super::client::fresh(config)?;
        let request = http::Request::get("/metrics")
            .body(Vec::new())
            .map_err(|e| KubeError::Other(e.to_string()))?;
        let text = match client.request_text(request).await.map_err(KubeError::from) {
            Ok(t) => t,
            Err(e) if matches!(e.code(), Some(401 | 403 | 404)) => return Ok(None),
            Err(e) if matches!(e.code(), Some(429 | 500..=599)) || e.code().is_none() => {
                tracing::debug!(error = %e, "sampling /metrics failed; trying again");
                continue;
            }
            Err(e) => return Err(e),
        };
        // A replica without KMS v2 (KMS off, or v1) reports no series at all.
        seen.extend(parse_status_metric(&text));
        if seen.len() >= replicas {
            break;
        }
    }
    Ok(Some(seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_series_per_replica() {
        let text = "# HELP x\n\
            apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{apiserver_id_hash=\"sha256:a\",key_id_hash=\"sha256:old\",provider_name=\"p\"} 100\n\
            apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{apiserver_id_hash=\"sha256:a\",key_id_hash=\"sha256:new\",provider_name=\"p\"} 160.5\n\
            apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{apiserver_id_hash=\"sha256:b\",key_id_hash=\"sha256:old\",provider_name=\"p\"} 130\n\
            apiserver_envelope_encryption_key_id_hash_total{apiserver_id_hash=\"sha256:b\",key_id_hash=\"sha256:x\"} 9\n";
        let h = parse_status_metric(text);
        assert_eq!(h["sha256:a"], ("sha256:new".to_string(), 160.5));
        assert_eq!(h["sha256:b"].0, "sha256:old");
        assert_eq!(h.len(), 2);
    }
}
