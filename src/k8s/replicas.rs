//! The API server replicas behind the cluster's one address, and what each says about its KMS
//! key. Every kube-apiserver announces itself with an identity Lease in kube-system, named by its
//! API server id; where /metrics is readable, every envelope-encryption series it exports carries
//! `apiserver_id_hash` (`sha256:` + hex of that id), the key id hash its plugin's status calls
//! returned (`..._status_last_timestamp_seconds`: what Status said, not what it writes with), and
//! how many objects it wrote per key id hash (`..._key_id_hash_total{transformation_type=
//! "to_storage"}`: what it actually writes with). A balancer sends each connection to one replica.

use super::KubeError;
use kube::api::{Api, DynamicObject, ListParams};
use std::collections::BTreeMap;

const IDENTITY_LABEL: &str = "apiserver.kubernetes.io/identity=kube-apiserver";
/// An identity Lease renewed within this long belongs to a live replica (a live kube-apiserver
/// renews its own every 10 s; a stopped one leaves it for an hour).
const LIVE_WITHIN: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
const WRITE_COUNTER: &str = "apiserver_envelope_encryption_key_id_hash_total";
const STATUS_METRIC: &str =
    "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds";

/// `sha256:<hex>`, as kube-apiserver labels an API server id or a key id on /metrics.
pub fn id_hash(text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A live replica as its identity Lease shows it: the hashes its /metrics may carry (the Lease is
/// named by the API server id; its holder is that id, or the id and `_<uuid>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseReplica {
    pub name: String,
    pub hashes: Vec<String>,
}

/// The API server replicas whose identity Lease was renewed lately.
pub async fn live_leases(client: &kube::Client) -> Result<Vec<LeaseReplica>, KubeError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "kube-system", &super::lease::resource());
    let list = crate::retry::RetryPolicy::default()
        .run("list the API server identity leases", || async {
            api.list(&ListParams::default().labels(IDENTITY_LABEL))
                .await
                .map_err(KubeError::from)
        })
        .await?;
    let now = chrono::Utc::now();
    Ok(list
        .items
        .iter()
        .filter(|l| {
            l.data["spec"]["renewTime"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| now - t.with_timezone(&chrono::Utc) < LIVE_WITHIN)
        })
        .map(|l| {
            let name = l.metadata.name.clone().unwrap_or_default();
            let holder = l.data["spec"]["holderIdentity"].as_str().unwrap_or("");
            let mut hashes = vec![id_hash(&name)];
            for id in [holder, holder.split('_').next().unwrap_or("")] {
                if !id.is_empty() && !hashes.contains(&id_hash(id)) {
                    hashes.push(id_hash(id));
                }
            }
            LeaseReplica { name, hashes }
        })
        .collect())
}

/// What one replica's /metrics says about that replica.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaMetrics {
    /// Its `apiserver_id_hash` (None: it exports no envelope-encryption series, e.g. KMS off or v1).
    pub replica: Option<String>,
    /// Objects it wrote to storage, per KMS v2 key id hash.
    pub writes: BTreeMap<String, f64>,
    /// It exports the write counters at all (an older kube-apiserver may export only Status).
    pub has_write_counters: bool,
}

/// One sample of the text exposition: its name, labels and value.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    value: f64,
}

/// `name{a="1",b="2"} value`; None for comments and other shapes.
fn sample(line: &str) -> Option<Sample<'_>> {
    let (name, rest) = line.split_once('{')?;
    let (labels, value) = rest.rsplit_once('}')?;
    let value = value.split_whitespace().next()?.parse::<f64>().ok()?;
    let labels = labels
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim(), v.trim().trim_matches('"')))
        })
        .collect();
    Some(Sample {
        name: name.trim(),
        labels,
        value,
    })
}

/// Reads one replica's /metrics text: who it is, and what it wrote with.
pub fn parse_replica(text: &str) -> ReplicaMetrics {
    let mut out = ReplicaMetrics {
        has_write_counters: text.lines().any(|l| {
            l.starts_with(WRITE_COUNTER) || l == format!("# TYPE {WRITE_COUNTER} counter")
        }),
        ..Default::default()
    };
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_envelope_encryption_"))
    {
        let Some(Sample {
            name,
            labels,
            value,
        }) = sample(line)
        else {
            continue;
        };
        let label = |n: &str| labels.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        if let Some(id) = label("apiserver_id_hash") {
            out.replica.get_or_insert_with(|| id.to_string());
        }
        if name == WRITE_COUNTER
            && label("transformation_type") == Some("to_storage")
            && let Some(key) = label("key_id_hash")
        {
            *out.writes.entry(key.to_string()).or_default() += value;
        }
    }
    out
}

/// How many API server replicas announce themselves (None: none do, so the count is unknown).
pub async fn count(client: &kube::Client) -> Result<Option<usize>, KubeError> {
    let live = live_leases(client).await?.len();
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

    #[test]
    fn a_replica_names_itself_and_counts_its_writes_per_key() {
        let text = "# TYPE apiserver_envelope_encryption_key_id_hash_total counter\n\
            apiserver_envelope_encryption_key_id_hash_total{apiserver_id_hash=\"sha256:a\",key_id_hash=\"sha256:old\",provider_name=\"p\",transformation_type=\"to_storage\"} 7\n\
            apiserver_envelope_encryption_key_id_hash_total{transformation_type=\"from_storage\",provider_name=\"p\",key_id_hash=\"sha256:new\",apiserver_id_hash=\"sha256:a\"} 40\n\
            apiserver_envelope_encryption_key_id_hash_total{transformation_type=\"to_storage\",provider_name=\"p\",key_id_hash=\"sha256:new\",apiserver_id_hash=\"sha256:a\"} 2\n\
            apiserver_request_total{code=\"200\"} 5\n";
        let m = parse_replica(text);
        assert_eq!(m.replica.as_deref(), Some("sha256:a"));
        assert_eq!(m.writes["sha256:old"], 7.0);
        assert_eq!(m.writes["sha256:new"], 2.0);
        assert_eq!(m.writes.len(), 2, "reads are not writes");
        assert!(m.has_write_counters);
        assert_eq!(
            parse_replica("apiserver_request_total{code=\"200\"} 5\n"),
            ReplicaMetrics::default()
        );
    }

    #[test]
    fn ids_hash_as_kube_apiserver_labels_them() {
        assert_eq!(
            id_hash("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
