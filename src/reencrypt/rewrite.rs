//! Rewrites one Secret: PUT it back unchanged with its resourceVersion, and read the answer's
//! resourceVersion as the proof. Conflicts re-read the object; 404 means deleted meanwhile;
//! 429 slows the whole engine down; 5xx and dropped connections back off and retry.

use super::adapt::Controller;
use crate::k8s::KubeError;
use crate::retry::{RetryHint, RetryPolicy, Retryable};
use kube::api::{Api, DynamicObject, PostParams};

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

pub async fn rewrite(api: &Api<DynamicObject>, ctl: &Controller, retry: &RetryPolicy, mut obj: DynamicObject) -> (Outcome, Stats) {
    let mut stats = Stats { conflicts: 0, throttled: 0, requests: 0 };
    let name = obj.metadata.name.clone().unwrap_or_default();
    let mut attempt = 0u32;
    let mut conflicts = 0u32;
    loop {
        let before = obj.metadata.resource_version.clone();
        let result = {
            let _permit = ctl.acquire().await;
            stats.requests += 1;
            api.replace(&name, &PostParams::default(), &obj).await.map_err(KubeError::from)
        };
        let err = match result {
            Ok(after) => {
                ctl.on_success();
                let same = after.metadata.resource_version == before;
                return (if same { Outcome::Unchanged } else { Outcome::Rewritten }, stats);
            }
            Err(e) => e,
        };
        match err.code() {
            Some(404) => return (Outcome::Deleted, stats),
            Some(409) if conflicts < MAX_CONFLICTS => {
                conflicts += 1;
                stats.conflicts += 1;
                match api.get_opt(&name).await {
                    Ok(Some(fresh)) => obj = fresh,
                    Ok(None) => return (Outcome::Deleted, stats),
                    Err(e) => return (Outcome::Failed(format!("re-reading after a conflict: {}", KubeError::from(e))), stats),
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
        let RetryHint::After(server) = err.retry_hint() else { return (Outcome::Failed(err.to_string()), stats) };
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
