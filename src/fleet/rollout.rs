//! Rolling a fleet run out: wave after wave, at most `max_parallel` clusters at once, each
//! cluster's run an ordinary kmsctl run (preflight, lease, journal, proofs, verification,
//! ledger) started in-process with the fleet's confirmation, its events sent to the fleet's
//! view and its lines kept off the terminal. A wave starts only once the one before it has
//! ended within the failure budget; `fleet resume` runs this again on the same journal:
//! clusters done are skipped, unfinished runs resumed, failed ones retried first.

use super::journal::{
    ClusterResult, ClusterState, Entry, FleetJournal, FleetRecord, FleetStatus, Outcome,
};
use super::select::Cluster;
use crate::commands::lifecycle::{self, Launched, Start};
use crate::commands::runs::{self, Continue};
use crate::commands::{Refusal, setup};
use crate::engine::events::{Event, Sink};
use crate::engine::journal::{self as run_journal, Target};
use crate::engine::session::{self, Ended};
use crate::engine::summary::Summary;
use crate::exit_codes;
use futures::StreamExt;
use std::sync::Arc;

/// What the fleet shows as it goes (the reporters are in `output::fleet`).
pub trait View: Send + Sync {
    fn wave_started(&self, wave: usize, waves: usize, members: &[Cluster]);
    fn cluster_started(&self, wave: usize, c: &Cluster, run_id: &str, how: &str);
    /// One of the cluster run's own events.
    fn cluster_event(&self, c: &Cluster, e: &Event);
    /// A line the cluster's run would have said on stderr.
    fn cluster_note(&self, c: &Cluster, line: &str);
    fn cluster_finished(&self, wave: usize, c: &Cluster, r: &ClusterResult, s: Option<&Summary>);
    fn wave_finished(&self, wave: usize, waves: usize, succeeded: usize, failed: usize);
    fn stopped(&self, why: &str);
}

/// Where the cluster runs go, and how they reach Azure.
pub struct Rollout {
    pub state_dir: std::path::PathBuf,
    pub auth: crate::azure::credential::AuthMode,
    pub aks_api: String,
    pub view: Arc<dyn View>,
}

struct ClusterSink {
    cluster: Cluster,
    view: Arc<dyn View>,
}

impl Sink for ClusterSink {
    fn emit(&self, e: &Event) {
        self.view.cluster_event(&self.cluster, e)
    }
}

/// How the fleet's part on one cluster goes next, decided from the two journals.
enum Plan {
    /// Its run is journaled succeeded (the fleet died before it wrote so).
    AlreadySucceeded(String),
    /// Continue its run (unfinished or failed), same run id.
    Resume(Box<run_journal::Record>),
    /// A new run with this id.
    Start(String),
}

fn plan(state_dir: &std::path::Path, procedure: &str, prior: &ClusterState) -> Plan {
    if let Some(id) = &prior.run_id {
        let path = run_journal::runs_dir(state_dir).join(format!("{id}.jsonl"));
        if let Ok(r) = run_journal::replay(&path) {
            match r.state() {
                "succeeded" => return Plan::AlreadySucceeded(id.clone()),
                "abandoned" => {}
                _ => return Plan::Resume(Box::new(r)),
            }
        }
    }
    Plan::Start(run_journal::new_run_id(procedure))
}

/// The target of a cluster's run: named by its ARM id, reached through Resource Manager.
pub fn target(c: &Cluster, admin: bool) -> Target {
    Target {
        subscription: Some(c.subscription.clone()),
        resource_group: Some(c.resource_group.clone()),
        cluster: Some(c.name.clone()),
        kube_credentials: if admin {
            run_journal::KubeCredentials::AzureAdmin
        } else {
            run_journal::KubeCredentials::Azure
        },
        ..Default::default()
    }
}

/// Whether an error says the cluster's API server cannot be reached from here.
fn unreachable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<setup::Unreachable>().is_some()
        || e.chain()
            .any(|c| c.downcast_ref::<setup::Unreachable>().is_some())
}

fn result(outcome: Outcome, run_id: Option<String>, message: Option<String>) -> ClusterResult {
    ClusterResult {
        outcome,
        run_id,
        key_before: None,
        key_after: None,
        message,
        seconds: 0.0,
    }
}

fn from_error(e: anyhow::Error, run_id: Option<String>) -> ClusterResult {
    let outcome = if unreachable(&e) {
        Outcome::Unreachable
    } else if e.downcast_ref::<Refusal>().is_some() {
        Outcome::Refused
    } else {
        Outcome::Failed
    };
    result(outcome, run_id, Some(format!("{e:#}")))
}

impl Rollout {
    /// One cluster's part: start or resume its run, execute it to its end.
    async fn cluster(
        &self,
        record: &FleetRecord,
        c: &Cluster,
        plan: Plan,
    ) -> (ClusterResult, Option<Summary>) {
        let h = &record.header;
        let target = target(c, h.params.admin);
        let began = std::time::Instant::now();
        let (launched, run_id) = match plan {
            Plan::AlreadySucceeded(id) => {
                let r = result(
                    Outcome::Succeeded,
                    Some(id),
                    Some("its run had already succeeded".into()),
                );
                return (r, None);
            }
            Plan::Resume(r) => {
                let go = Continue {
                    target,
                    auth: self.auth,
                    aks_api: self.aks_api.clone(),
                    yes: true,
                    switch_timeout_seconds: None,
                };
                let id = r.header.run_id.clone();
                (runs::continue_run(&r, go).await, id)
            }
            Plan::Start(id) => {
                let procedure = match crate::playbook::built_in(&h.procedure) {
                    Ok(p) => p,
                    Err(e) => return (from_error(e.into(), None), None),
                };
                let versions = if h.procedure == "rotate-twice" { 2 } else { 1 };
                let s = Start {
                    procedure,
                    target,
                    params: h.params.run.clone(),
                    auth: self.auth,
                    aks_api: self.aks_api.clone(),
                    state_dir: self.state_dir.clone(),
                    run_id: id.clone(),
                    dry_run: false,
                    yes: true,
                    unattended: true,
                    done_since: Some(lifecycle::DoneSince {
                        since: h.started_at,
                        versions,
                        from: c.key_id.clone(),
                    }),
                };
                (lifecycle::launch(s, crate::output::Format::Text).await, id)
            }
        };
        let mut out = match launched {
            Err(e) => (from_error(e, Some(run_id)), None),
            Ok(Launched::Done(why)) => (result(Outcome::Done, None, Some(why)), None),
            Ok(Launched::Interrupted) => (
                result(
                    Outcome::Interrupted,
                    None,
                    Some("stopped by a signal before any change".into()),
                ),
                None,
            ),
            Ok(Launched::Stopped(code)) => {
                let o = match code {
                    exit_codes::OK => Outcome::Done,
                    exit_codes::REFUSED => Outcome::Refused,
                    _ => Outcome::Failed,
                };
                (
                    result(
                        o,
                        None,
                        Some(format!("ended before any change (exit {code})")),
                    ),
                    None,
                )
            }
            Ok(Launched::Ready(r)) => {
                let r = *r;
                let sink = ClusterSink {
                    cluster: c.clone(),
                    view: self.view.clone(),
                };
                match session::execute(&r.ctx, r.journal, r.record, r.lease, &sink).await {
                    Ended::Interrupted { run_id, .. } => (
                        result(
                            Outcome::Interrupted,
                            Some(run_id),
                            Some("interrupted by a signal".into()),
                        ),
                        None,
                    ),
                    Ended::Finished(report, res) => {
                        let outcome = match &res {
                            Ok(()) => Outcome::Succeeded,
                            Err(e) if e.exit_code() == exit_codes::REFUSED => Outcome::Refused,
                            Err(_) => Outcome::Failed,
                        };
                        let mut cr = result(
                            outcome,
                            Some(report.run_id.clone()),
                            res.err().map(|e| e.to_string()),
                        );
                        cr.key_after = report.summary.keys.as_ref().and_then(|k| k.in_use.clone());
                        (cr, Some(report.summary))
                    }
                }
            }
        };
        out.0.key_before = c.key_id.clone();
        out.0.seconds = began.elapsed().as_secs_f64();
        out
    }

    /// Runs the fleet from where its journal stands to its end or its stop.
    pub async fn run(
        &self,
        j: &mut FleetJournal,
        mut record: FleetRecord,
    ) -> anyhow::Result<FleetStatus> {
        let waves = record.header.waves.clone();
        let by_id: std::collections::HashMap<String, Cluster> = record
            .header
            .selection
            .iter()
            .map(|c| (c.id.to_ascii_lowercase(), c.clone()))
            .collect();
        let budget = record.header.params.max_failures;
        let parallel = record.header.params.max_parallel.max(1);
        let mut failures = 0usize;
        let mut failed_ids: Vec<String> = Vec::new();
        let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watch = {
            let flag = interrupted.clone();
            tokio::spawn(async move {
                let s = session::signalled().await;
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                s
            })
        };
        for (w, ids) in waves.iter().enumerate() {
            let members: Vec<Cluster> = ids
                .iter()
                .filter_map(|i| by_id.get(&i.to_ascii_lowercase()).cloned())
                .collect();
            // Failed ones first (a resume after a stop retries them), then those not started.
            let mut todo: Vec<&Cluster> = members
                .iter()
                .filter(|c| !record.cluster(&c.id).result.is_some_and(|r| r.outcome.ok()))
                .collect();
            todo.sort_by_key(|c| record.cluster(&c.id).result.is_none());
            let mut succeeded = members.len() - todo.len();
            let mut failed = 0;
            if todo.is_empty() {
                if !record.waves_finished.contains_key(&w) {
                    j.append(&Entry::WaveFinished {
                        wave: w,
                        succeeded,
                        failed,
                        at: chrono::Utc::now(),
                    })?;
                }
                continue;
            }
            self.view.wave_started(w, waves.len(), &members);
            let mut queue = todo.into_iter();
            let mut running = futures::stream::FuturesUnordered::new();
            let stop = |failures: usize| {
                failures > budget || interrupted.load(std::sync::atomic::Ordering::SeqCst)
            };
            loop {
                while running.len() < parallel && !stop(failures) {
                    let Some(c) = queue.next() else { break };
                    let prior = record.cluster(&c.id);
                    let p = plan(&self.state_dir, &record.header.procedure, &prior);
                    let (run_id, how) = match &p {
                        Plan::AlreadySucceeded(id) => (id.clone(), "already succeeded"),
                        Plan::Resume(r) => (r.header.run_id.clone(), "resuming its run"),
                        Plan::Start(id) => (id.clone(), "starting"),
                    };
                    j.append(&Entry::ClusterStarted {
                        wave: w,
                        cluster: c.id.clone(),
                        run_id: run_id.clone(),
                        at: chrono::Utc::now(),
                    })?;
                    self.view.cluster_started(w, c, &run_id, how);
                    let view = self.view.clone();
                    let who = c.clone();
                    let route: crate::output::Route =
                        Arc::new(move |line: &str| view.cluster_note(&who, line));
                    let rec = &record;
                    running.push(async move {
                        let out = crate::output::ROUTE
                            .scope(route, self.cluster(rec, c, p))
                            .await;
                        (c, out)
                    });
                }
                let Some((c, (r, summary))) = running.next().await else {
                    break;
                };
                j.append(&Entry::ClusterFinished {
                    wave: w,
                    cluster: c.id.clone(),
                    result: r.clone(),
                    at: chrono::Utc::now(),
                })?;
                if r.outcome.ok() {
                    succeeded += 1;
                } else {
                    failed += 1;
                    failures += 1;
                    failed_ids.push(c.name.clone());
                }
                self.view.cluster_finished(w, c, &r, summary.as_ref());
            }
            drop(running);
            // What ran is journaled; the record reflects it for the next wave's decisions.
            record = super::journal::replay(&j.path)?;
            j.append(&Entry::WaveFinished {
                wave: w,
                succeeded,
                failed,
                at: chrono::Utc::now(),
            })?;
            self.view.wave_finished(w, waves.len(), succeeded, failed);
            if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
                let why = "interrupted by a signal: `kmsctl fleet resume` continues".to_string();
                j.append(&Entry::Finished {
                    status: FleetStatus::Interrupted,
                    reason: why.clone(),
                    at: chrono::Utc::now(),
                })?;
                self.view.stopped(&why);
                return Ok(FleetStatus::Interrupted);
            }
            if failures > budget {
                let why = format!(
                    "stopped after wave {} of {}: {failures} cluster(s) failed ({}), more than --max-failures {budget}; nothing of the next wave was started. Fix the cause and run `kmsctl fleet resume`: it retries the failed clusters first, then goes on",
                    w + 1,
                    waves.len(),
                    failed_ids.join(", ")
                );
                j.append(&Entry::Finished {
                    status: FleetStatus::Stopped,
                    reason: why.clone(),
                    at: chrono::Utc::now(),
                })?;
                self.view.stopped(&why);
                watch.abort();
                return Ok(FleetStatus::Stopped);
            }
        }
        watch.abort();
        let (status, why) = if failures == 0 {
            (FleetStatus::Succeeded, "every cluster done".to_string())
        } else {
            (
                FleetStatus::Stopped,
                format!(
                    "{failures} cluster(s) failed ({}), within --max-failures {budget}; `kmsctl fleet resume` retries them",
                    failed_ids.join(", ")
                ),
            )
        };
        j.append(&Entry::Finished {
            status,
            reason: why.clone(),
            at: chrono::Utc::now(),
        })?;
        if status != FleetStatus::Succeeded {
            self.view.stopped(&why);
        }
        Ok(status)
    }
}
