//! Changing the managed cluster the way `az aks update` does: GET, change one part, PUT the whole
//! resource back with If-Match (every other field kept byte for byte), follow the long-running
//! operation. Idempotent, so a resumed step neither repeats nor skips a change.

use super::events::{Event, Sink, Wait, WaitKind};
use crate::azure::RemoteError;
use crate::azure::arm::{ArmClient, OPERATION_DEADLINE};
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// One change to the cluster resource.
pub trait ClusterChange: Send + Sync {
    /// True when the resource already says what is desired.
    fn matches(&self, resource: &Value) -> bool;
    /// Changes only what this change is about.
    fn apply_to(&self, resource: &mut Value);
    /// What is changed, for progress messages.
    fn what(&self) -> &'static str;
    /// Why the run waits for Azure's operation on it, for progress messages.
    fn why(&self) -> String {
        "the cluster is changed only once Azure's operation on it succeeds".into()
    }
}

fn terminal(state: &str) -> bool {
    matches!(state, "Succeeded" | "Failed" | "Canceled")
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("the cluster update operation ended {status}: {error}")]
    OperationFailed { status: String, error: String },
    #[error(
        "the cluster kept changing under kmsctl (412 PreconditionFailed {0} times): someone else is updating it; try again later"
    )]
    KeptChanging(u32),
    /// A fresh read of the cluster showed the change should not be made any more (someone else
    /// changed what it is about since the run looked): nothing was PUT.
    #[error("{0}")]
    Refused(String),
    #[error(
        "the cluster stayed busy with other operations for {0} minutes; nothing was changed by kmsctl. Check `az aks show --query provisioningState` and run `kmsctl resume` once it is Succeeded"
    )]
    Busy(u64),
}

/// What happened, for the journal and the user.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateReport {
    pub changed: bool,
    pub replans: u32,
    pub waited_for_other_operations: u32,
}

/// The cluster once no operation runs on it (waiting as long as the deadline allows, counted
/// from `began`).
async fn settled(
    arm: &ArmClient,
    path: &str,
    began: std::time::Instant,
    report: &mut UpdateReport,
    sink: &dyn Sink,
) -> Result<crate::azure::arm::Answer, UpdateError> {
    let mut wait: Option<Wait> = None;
    loop {
        if began.elapsed() >= OPERATION_DEADLINE {
            return Err(UpdateError::Busy(OPERATION_DEADLINE.as_secs() / 60));
        }
        let current = arm.get(path, &arm.api.aks).await?;
        let state = current.body["properties"]["provisioningState"]
            .as_str()
            .unwrap_or("Unknown")
            .to_string();
        if terminal(&state) {
            if let Some(w) = wait {
                w.finish(true, format!("provisioningState {state}"));
            }
            return Ok(current);
        }
        let w = wait.get_or_insert_with(|| {
            Wait::start(
                sink,
                WaitKind::OtherOperation,
                "the operation already running on the cluster",
                "Azure accepts one operation at a time on a cluster: a change is made only once none runs",
                OPERATION_DEADLINE.saturating_sub(began.elapsed()),
            )
        });
        w.progress(Some(&state), None, None);
        report.waited_for_other_operations += 1;
        tokio::time::sleep(
            current
                .retry_after
                .unwrap_or(Duration::from_secs(5))
                .max(Duration::from_secs(1)),
        )
        .await;
    }
}

/// The cluster resource once no operation runs on it (a resumed step first lets a running
/// upgrade or update finish).
pub async fn when_idle(arm: &ArmClient, path: &str, sink: &dyn Sink) -> Result<Value, UpdateError> {
    let mut report = UpdateReport::default();
    Ok(
        settled(arm, path, std::time::Instant::now(), &mut report, sink)
            .await?
            .body,
    )
}

/// Brings the cluster to `desired`. Idempotent: an already-matching Succeeded cluster is left
/// alone; a running operation is waited for; a 412 (someone changed the cluster since it was read)
/// is re-read and re-planned, never overwritten.
pub async fn update(
    arm: &ArmClient,
    path: &str,
    change: &dyn ClusterChange,
    sink: &dyn Sink,
) -> Result<UpdateReport, UpdateError> {
    update_checked(arm, path, change, &|_| None, sink).await
}

/// `update`, with `recheck` asked about every read of the cluster it would change (the first,
/// and each re-read after a 412 or a 409): a 412 means someone else changed the cluster, and
/// what they changed may be what this change is about. `recheck` returns why not to go on.
pub async fn update_checked(
    arm: &ArmClient,
    path: &str,
    change: &dyn ClusterChange,
    recheck: &(dyn Fn(&Value) -> Option<String> + Sync),
    sink: &dyn Sink,
) -> Result<UpdateReport, UpdateError> {
    let mut report = UpdateReport::default();
    const MAX_REPLANS: u32 = 5;
    let began = std::time::Instant::now();
    loop {
        let current = settled(arm, path, began, &mut report, sink).await?;
        let state = current.body["properties"]["provisioningState"]
            .as_str()
            .unwrap_or("Unknown")
            .to_string();
        if state == "Succeeded" && change.matches(&current.body) {
            return Ok(report);
        }
        if let Some(why) = recheck(&current.body) {
            return Err(UpdateError::Refused(why));
        }
        let mut body = current.body.clone();
        change.apply_to(&mut body);
        let etag = current.etag.clone().unwrap_or_else(|| "*".into());
        let started = match arm.put_if_match(path, &arm.api.aks, &body, &etag).await {
            Ok(a) => a,
            Err(e) if e.status() == Some(412) && report.replans < MAX_REPLANS => {
                report.replans += 1;
                tracing::warn!(
                    "the cluster changed since it was read (412 PreconditionFailed): re-reading and re-planning"
                );
                sink.emit(&Event::Note {
                    message:
                        "the cluster changed since it was read (412): re-reading and re-planning"
                            .into(),
                });
                continue;
            }
            Err(e) if e.status() == Some(412) => {
                return Err(UpdateError::KeptChanging(report.replans));
            }
            Err(e) if e.status() == Some(409) => {
                report.waited_for_other_operations += 1;
                // OperationNotAllowed says when to ask again; honour it.
                let pause = e
                    .retry_after()
                    .unwrap_or(Duration::from_secs(5))
                    .clamp(Duration::from_secs(1), Duration::from_secs(120));
                let w = Wait::start(
                    sink,
                    WaitKind::OtherOperation,
                    "another operation on the cluster (409 OperationNotAllowed)",
                    "Azure refused the change while another operation runs; it says when to ask again",
                    pause,
                );
                tokio::time::sleep(pause).await;
                w.finish(true, "asking again");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        report.changed = true;
        let w = Wait::start(
            sink,
            WaitKind::ClusterOperation,
            format!("Azure's operation changing {}", change.what()),
            change.why(),
            OPERATION_DEADLINE,
        );
        let outcome = arm
            .wait_operation(&started, |s| w.progress(Some(s), None, None))
            .await?;
        w.finish(
            outcome.status.eq_ignore_ascii_case("Succeeded"),
            format!("Azure says {}", outcome.status),
        );
        if !outcome.status.eq_ignore_ascii_case("Succeeded") {
            let error = outcome
                .error
                .map(|e| {
                    format!(
                        "{} {}",
                        e["code"].as_str().unwrap_or_default(),
                        e["message"].as_str().unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            return Err(UpdateError::OperationFailed {
                status: outcome.status,
                error,
            });
        }
        return Ok(report);
    }
}
