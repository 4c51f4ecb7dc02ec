//! A run's plumbing around the runner: the cluster's lease (released however the run ends),
//! SIGINT/SIGTERM (the run is journaled as interrupted), and the journal's last word on a
//! refusal after changes. Commands start runs through `execute`; reporters see its events.

use super::events::{Event, Sink};
use super::journal::{self, Entry, Journal, Record, RunStatus};
use super::runner::{self, RunReport};
use super::{StepError, context::Context};
use crate::k8s::lease::Lease;

/// Exit code of a run stopped by SIGINT or SIGTERM (128 + SIGINT, as shells report it).
pub const INTERRUPTED: i32 = 130;

/// Waits for SIGINT or SIGTERM (registering for them replaces the default of dying at once).
pub async fn signalled() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// How a run ended.
pub enum Ended {
    Finished(Box<RunReport>, Result<(), StepError>),
    /// Stopped by a signal; journaled as interrupted.
    Interrupted {
        signal: &'static str,
        run_id: String,
        journal: std::path::PathBuf,
    },
}

/// Runs the engine; on SIGINT/SIGTERM abandons the request in flight, journals the run as
/// interrupted and releases the lease.
pub async fn execute(
    ctx: &Context,
    j: Journal,
    record: Record,
    lease: Lease,
    sink: &dyn Sink,
) -> Ended {
    let path = j.path.clone();
    let run_id = record.header.run_id.clone();
    let outcome = tokio::select! {
        r = runner::execute(ctx, j, record, sink, &lease.lost) => Ok(r),
        s = signalled() => { tracing::warn!("{s} received"); Err(s) }
    };
    let (mut report, result) = match outcome {
        Ok(r) => r,
        Err(signal) => return interrupted(signal, run_id, path, lease, sink).await,
    };
    lease.release().await;
    let result = result.map_err(|e| honest_refusal(e, &path, &mut report));
    Ended::Finished(Box::new(report), result)
}

async fn interrupted(
    signal: &'static str,
    run_id: String,
    path: std::path::PathBuf,
    lease: Lease,
    sink: &dyn Sink,
) -> Ended {
    {
        // The engine's future (and with it the journal's lock) is gone: append the end by path.
        if let Ok((mut j, _)) = Journal::open(&path) {
            let _ = j.append(&Entry::Finished {
                at: chrono::Utc::now(),
                status: RunStatus::Interrupted,
                message: Some("interrupted by a signal".into()),
            });
        }
        lease.release().await;
        sink.emit(&Event::Note {
            message: format!(
                "interrupted: run {run_id} stopped; every step is idempotent, so nothing is lost. Continue it with `kmsctl resume --run {run_id}` (journal {})",
                path.display()
            ),
        });
        Ended::Interrupted {
            signal,
            run_id,
            journal: path,
        }
    }
}

/// A step's refusal says what the step did; whether the run had changed the cluster before it
/// is in the journal. With changes, the refusal becomes resumable (exit 1) and says what changed,
/// in the report and as the journal's last word on the run.
fn honest_refusal(e: StepError, path: &std::path::Path, report: &mut RunReport) -> StepError {
    if !matches!(e, StepError::Refused(_)) {
        return e;
    }
    let changes = journal::replay(path)
        .map(|r| r.changes())
        .unwrap_or_default();
    let e = e.after_changes(&changes);
    if changes.is_empty() {
        return e;
    }
    report.error = Some(e.to_string());
    match Journal::open(path) {
        Ok((mut j, _)) => {
            if let Err(err) = j.append(&Entry::Finished {
                at: chrono::Utc::now(),
                status: RunStatus::Failed,
                message: Some(e.to_string()),
            }) {
                tracing::warn!(error = %err, "could not journal what the run had changed");
            }
        }
        Err(err) => tracing::warn!(error = %err, "could not journal what the run had changed"),
    }
    e
}

/// What a run records about its cluster, so `resume` never continues it elsewhere.
pub async fn identity(ctx: &Context) -> anyhow::Result<journal::ClusterIdentity> {
    use k8s_openapi::api::core::v1::Namespace;
    let api: kube::Api<Namespace> = kube::Api::all(ctx.kube.clone());
    let ns = api.get("kube-system").await.map_err(|e| {
        BeginError::Refused(format!(
            "cannot read namespace kube-system: {}",
            crate::k8s::KubeError::from(e)
        ))
    })?;
    let arm_id = match &ctx.azure {
        Some(az) => az.arm.get(&az.cluster_path, &az.arm.api.aks).await?.body["id"]
            .as_str()
            .map(str::to_string)
            .or_else(|| Some(az.cluster_path.clone())),
        None => None,
    };
    Ok(journal::ClusterIdentity {
        arm_id,
        api_server: ctx.kube_server.clone(),
        kube_system_uid: ns.metadata.uid.unwrap_or_default(),
        kubeconfig: ctx.kubeconfig.clone(),
        context: ctx.kube_context.clone(),
    })
}

/// Why a run could not begin; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum BeginError {
    /// Another process holds the lease, or the cluster cannot be read: a refusal (exit 2).
    #[error("{0}")]
    Refused(String),
}

/// A run journaled before it reads anything, so a run killed at any moment (SIGKILL, a lost
/// machine) is there for `resume`, even one killed while Azure was still being asked about the
/// cluster. A run that ends before any change (refused, not confirmed, nothing to do, a
/// signal) drops it, which removes the journal: there is nothing to continue.
pub struct PendingRun {
    journal: Option<Journal>,
}

impl PendingRun {
    pub fn create(
        dir: &std::path::Path,
        target: &journal::Target,
        run_id: String,
        procedure: crate::playbook::Procedure,
        params: journal::RunParams,
    ) -> anyhow::Result<PendingRun> {
        let header = journal::RunHeader {
            format: journal::FORMAT_VERSION,
            run_id,
            procedure,
            params,
            target: target.clone(),
            // Read in `commit`, before any change; `resume` reads it if the run died first.
            cluster: None,
            created_at: chrono::Utc::now(),
        };
        Ok(PendingRun {
            journal: Some(Journal::create(dir, header)?),
        })
    }

    /// The run goes ahead: journals the cluster's identity and the entries already made (the
    /// preflight `start` ran before its prompt), and hands the journal to the engine.
    pub async fn commit(
        mut self,
        ctx: &Context,
        seed: &[Entry],
    ) -> anyhow::Result<(Journal, Record)> {
        let cluster = identity(ctx).await?;
        let mut j = self
            .journal
            .take()
            .expect("a pending run is committed once");
        let path = j.path.clone();
        let written = (|| {
            j.append(&Entry::Identity(Box::new(cluster)))?;
            for entry in seed {
                j.append(entry)?;
            }
            journal::replay(&j.path)
        })();
        match written {
            Ok(record) => Ok((j, record)),
            Err(e) => {
                drop(j);
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }
}

impl Drop for PendingRun {
    fn drop(&mut self) {
        if let Some(j) = self.journal.take() {
            let path = j.path.clone();
            drop(j);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove the journal of a run that changed nothing");
            }
        }
    }
}

/// A new run's journal, created and committed at once (a run whose preparation reads the
/// cluster before it knows its parameters).
pub async fn create_journal(
    ctx: &Context,
    dir: &std::path::Path,
    target: &journal::Target,
    run_id: String,
    procedure: crate::playbook::Procedure,
    params: journal::RunParams,
    seed: &[Entry],
) -> anyhow::Result<(Journal, Record)> {
    PendingRun::create(dir, target, run_id, procedure, params)?
        .commit(ctx, seed)
        .await
}

/// How the preparation of a run (preflight, plan, confirmation) ended.
#[expect(
    clippy::large_enum_variant,
    reason = "one per run, moved once into execute"
)]
pub enum Begun<T> {
    /// Prepared; the lease (None for a dry run) is the caller's to pass to `execute` or release.
    Ready(T, Option<Lease>),
    /// A signal arrived: the lease is released, nothing was changed.
    Interrupted(&'static str),
}

/// Takes the cluster's lease (unless `lease` is false: a dry run only looks), then prepares the
/// run; a signal meanwhile, or a failed preparation, gives the lease back rather than leaving it
/// to expire.
pub async fn begin<T>(
    ctx: &Context,
    run_id: &str,
    lease: bool,
    prepare: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<Begun<T>> {
    let lease = if lease {
        Some(
            Lease::acquire(ctx.kube.clone(), run_id)
                .await
                .map_err(|e| BeginError::Refused(e.to_string()))?,
        )
    } else {
        None
    };
    let prepared = tokio::select! {
        p = prepare => p,
        s = signalled() => {
            if let Some(l) = lease {
                l.release().await;
            }
            return Ok(Begun::Interrupted(s));
        }
    };
    match prepared {
        Ok(t) => Ok(Begun::Ready(t, lease)),
        Err(e) => {
            if let Some(l) = lease {
                l.release().await;
            }
            Err(e)
        }
    }
}
