//! Rewrites one Secret: PUT back exactly the bytes the server listed (with its resourceVersion),
//! and read the answer's resourceVersion as the proof. Conflicts re-read the object; 404 means
//! deleted meanwhile; 429 slows the whole engine down; 5xx and dropped connections back off and
//! retry. The Secret is never decoded into a model, so no field is lost and its data is never
//! parsed, copied into a tree, or printed.

use super::adapt::Controller;
use crate::k8s::KubeError;
use crate::retry::{RetryHint, RetryPolicy, Retryable};
use kube::api::PostParams;
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
}

/// Only what kmsctl reads of a Secret: serde skips the data without allocating it.
#[derive(Deserialize)]
struct Head {
    metadata: Meta,
    #[serde(default)]
    kind: Option<String>,
}

/// A Secret as the server sent it.
pub struct Listed {
    pub name: String,
    pub resource_version: Option<String>,
    /// The JSON to PUT back: the listed object, with `apiVersion`/`kind` added when the list left
    /// them out (list items carry no type).
    pub body: Vec<u8>,
}

impl Listed {
    /// Takes the listed JSON over without copying it when it already names its type.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Listed, String> {
        let head: Head = serde_json::from_str(raw.get())
            .map_err(|e| format!("a listed Secret is not valid: {e}"))?;
        let body = if head.kind.is_some() {
            Box::<str>::from(raw).into_string().into_bytes()
        } else {
            let text = raw.get().trim_start();
            let rest = text
                .strip_prefix('{')
                .ok_or("a listed Secret is not an object")?;
            let sep = if rest.trim_start().starts_with('}') {
                ""
            } else {
                ","
            };
            format!("{{\"apiVersion\":\"v1\",\"kind\":\"Secret\"{sep}{rest}").into_bytes()
        };
        Ok(Listed {
            name: head.metadata.name,
            resource_version: head.metadata.resource_version,
            body,
        })
    }
}

/// Only the metadata of the answer: the resourceVersion is the proof.
#[derive(Deserialize)]
struct Written {
    metadata: Meta,
}

/// Where a namespace's Secrets are, for requests built by hand.
pub struct Target<'a> {
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

/// The Secret as it is now, or None when it was deleted.
async fn reread(t: &Target<'_>, name: &str) -> Result<Option<Listed>, KubeError> {
    let request = t
        .collection
        .get(name, &Default::default())
        .map_err(|e| KubeError::Other(e.to_string()))?;
    match t
        .client
        .request::<Box<RawValue>>(request)
        .await
        .map_err(KubeError::from)
    {
        Ok(raw) => Listed::from_raw(raw).map(Some).map_err(KubeError::Other),
        Err(e) if e.code() == Some(404) => Ok(None),
        Err(e) => Err(e),
    }
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
/// How long one Secret may keep being answered 429 before it counts as failed (and is redone
/// on resume): the API server's own request timeout is a minute; this is ten.
const THROTTLED_FOR_AT_MOST: std::time::Duration = std::time::Duration::from_secs(600);

pub async fn rewrite(
    target: &Target<'_>,
    ctl: &Controller,
    retry: &RetryPolicy,
    mut secret: Listed,
) -> (Outcome, Stats) {
    let mut stats = Stats {
        conflicts: 0,
        throttled: 0,
        requests: 0,
    };
    let mut attempt = 0u32;
    let mut conflicts = 0u32;
    let began = std::time::Instant::now();
    loop {
        let result = {
            let _large = if secret.body.len() >= super::budget::LARGE_SECRET_BYTES {
                target.large.acquire().await.ok()
            } else {
                None
            };
            let _permit = ctl.acquire().await;
            stats.requests += 1;
            put(target, &secret.name, secret.body.clone()).await
        };
        let err = match result {
            Ok(after) => {
                ctl.on_success();
                let same = after == secret.resource_version;
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
                match reread(target, &secret.name).await {
                    Ok(Some(fresh)) => secret = fresh,
                    Ok(None) => return (Outcome::Deleted, stats),
                    Err(e) => {
                        return (
                            Outcome::Failed(format!("re-reading after a conflict: {e}")),
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
        // Throttling is not a failure: it does not use up the attempts kept for errors, but
        // it is bounded in time, so a server that never admits the write ends the wait.
        if err.code() == Some(429) && began.elapsed() >= THROTTLED_FOR_AT_MOST {
            return (
                Outcome::Failed(format!(
                    "still throttled (429) after {} s: {err}",
                    THROTTLED_FOR_AT_MOST.as_secs()
                )),
                stats,
            );
        }
        if err.code() != Some(429) {
            attempt += 1;
            if attempt >= retry.max_attempts {
                return (Outcome::Failed(err.to_string()), stats);
            }
        }
        tokio::time::sleep(retry.delay(attempt, server)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_secrets_are_put_back_as_sent_with_their_type() {
        let raw: Box<RawValue> = serde_json::from_str(
            r#"{"metadata":{"name":"a","resourceVersion":"7","future":1},"data":{"k":"eA=="}}"#,
        )
        .unwrap();
        let l = Listed::from_raw(raw).unwrap();
        assert_eq!(
            (l.name.as_str(), l.resource_version.as_deref()),
            ("a", Some("7"))
        );
        let v: serde_json::Value = serde_json::from_slice(&l.body).unwrap();
        assert_eq!(
            (
                v["kind"].as_str(),
                v["apiVersion"].as_str(),
                v["metadata"]["future"].as_i64()
            ),
            (Some("Secret"), Some("v1"), Some(1))
        );
        let typed: Box<RawValue> =
            serde_json::from_str(r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"b"}}"#)
                .unwrap();
        let text = typed.get().as_bytes().to_vec();
        assert_eq!(Listed::from_raw(typed).unwrap().body, text);
    }
}
