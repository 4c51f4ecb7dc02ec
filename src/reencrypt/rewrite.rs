//! Rewrites one Secret: PUT it back unchanged with its resourceVersion, and read the answer's
//! resourceVersion as the proof. Conflicts re-read the object; 404 means deleted meanwhile;
//! 429 slows the whole engine down; 5xx and dropped connections back off and retry.

use super::adapt::Controller;
use crate::k8s::KubeError;
use crate::retry::{RetryHint, RetryPolicy, Retryable};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DynamicObject, PostParams};

/// Only the metadata of the answer: the resourceVersion is the proof, and skipping the rest saves
/// allocating every Secret's data a second time.
#[derive(serde::Deserialize)]
struct Written {
    metadata: ObjectMeta,
}

/// Where a namespace's Secrets are, for requests built by hand.
pub struct Target<'a> {
    pub api: &'a Api<DynamicObject>,
    pub client: &'a kube::Client,
    pub collection: &'a kube::core::Request,
    /// Slots for large Secrets, whose request and answer buffers dominate memory.
    pub large: &'a tokio::sync::Semaphore,
}

async fn put(t: &Target<'_>, name: &str, body: Vec<u8>) -> Result<Option<String>, KubeError> {
    let request = t
        .collection
        .replace(name, &PostParams::default(), body)
        .map_err(|e| KubeError::Other(e.to_string()))?;
    let written: Written = t.client.request(request).await?;
    Ok(written.metadata.resource_version)
}

pub enum Outcome {
    Rewritten,
    Unchanged,
    Deleted,
    Failed(String),
    /// The KMS plugin refuses: stop everything.
    Fatal(KubeError),
}

pub struct Stats {
    pub conflicts: u64,
    pub throttled: u64,
    pub requests: u64,
}

const MAX_CONFLICTS: u32 = 5;

/// The size of a Secret's data, without encoding it.
fn data_bytes(obj: &DynamicObject) -> usize {
    obj.data["data"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_str()).map(str::len).sum())
        .unwrap_or(0)
}

pub async fn rewrite(
    target: &Target<'_>,
    ctl: &Controller,
    retry: &RetryPolicy,
    mut obj: DynamicObject,
) -> (Outcome, Stats) {
    let mut stats = Stats {
        conflicts: 0,
        throttled: 0,
        requests: 0,
    };
    let name = obj.metadata.name.clone().unwrap_or_default();
    let mut attempt = 0u32;
    let mut conflicts = 0u32;
    loop {
        let before = obj.metadata.resource_version.clone();
        // Slots first, then the request body: a page's Secrets waiting for a slot are held once.
        let result = {
            let _large = if data_bytes(&obj) >= super::budget::LARGE_SECRET_BYTES {
                target.large.acquire().await.ok()
            } else {
                None
            };
            let _permit = ctl.acquire().await;
            stats.requests += 1;
            match serde_json::to_vec(&obj) {
                Ok(body) => put(target, &name, body).await,
                Err(e) => return (Outcome::Failed(format!("encoding: {e}")), stats),
            }
        };
        let err = match result {
            Ok(after) => {
                ctl.on_success();
                let same = after == before;
                return (
                    if same {
                        Outcome::Unchanged
                    } else {
                        Outcome::Rewritten
                    },
                    stats,
                );
            }
            Err(e) => e,
        };
        match err.code() {
            Some(404) => return (Outcome::Deleted, stats),
            Some(409) if conflicts < MAX_CONFLICTS => {
                conflicts += 1;
                stats.conflicts += 1;
                match target.api.get_opt(&name).await {
                    Ok(Some(fresh)) => obj = fresh,
                    Ok(None) => return (Outcome::Deleted, stats),
                    Err(e) => {
                        return (
                            Outcome::Failed(format!(
                                "re-reading after a conflict: {}",
                                KubeError::from(e)
                            )),
                            stats,
                        );
                    }
                }
                continue;
            }
            Some(429) => {
                stats.throttled += 1;
                ctl.on_throttle();
            }
            _ => {}
        }
        if err.is_kms_failure() {
            return (Outcome::Fatal(err), stats);
        }
        let RetryHint::After(server) = err.retry_hint() else {
            return (Outcome::Failed(err.to_string()), stats);
        };
        // Throttling is not a failure: it does not use up the attempts kept for errors.
        if err.code() != Some(429) {
            attempt += 1;
            if attempt >= retry.max_attempts {
                return (Outcome::Failed(err.to_string()), stats);
            }
        }
        tokio::time::sleep(retry.delay(attempt, server)).await;
    }
}
