//! Running a journaled run to its end (or to SIGINT/SIGTERM), `resume` (same cluster only) and
//! `runs` (the table, and `--abandon`).

use super::lifecycle::{Launched, Ready, confirm, refusal};
use super::{Refusal, setup};
use crate::cli::{ResumeArgs, RunsArgs, StateArgs};
use crate::engine::context::Context;
use crate::engine::journal::{self, ClusterIdentity, Entry, Journal, Record, RunStatus, Target};
use crate::engine::preflight;
use crate::engine::session::{self, Ended};
use crate::engine::session::{Begun, identity};
use crate::exit_codes;
use crate::k8s::lease::Lease;
use crate::output::run::render_report;
use crate::output::{Format, out, print_json};
use crate::playbook::Intent;

pub fn state_dir(s: &StateArgs) -> std::path::PathBuf {
    s.state_dir
        .clone()
        .unwrap_or_else(journal::default_state_dir)
}

pub use crate::engine::session::{INTERRUPTED, signalled};

/// Runs the engine with the reporter `--progress` asks for, then prints the report (text with
/// its closing summary, or JSON).
pub async fn execute(
    ctx: &Context,
    j: Journal,
    record: Record,
    lease: Lease,
    format: Format,
) -> anyhow::Result<i32> {
    let reporter = crate::output::events::reporter(crate::output::events::mode());
    let ended = session::execute(ctx, j, record, lease, &*reporter).await;
    let (report, result) = match ended {
        Ended::Interrupted { .. } => {
            reporter.finish();
            return Ok(INTERRUPTED);
        }
        Ended::Finished(report, result) => (report, result),
    };
    // With -o json the error is not in the text report: it goes to stderr, as an event where
    // stderr is JSON lines.
    if let Err(e) = &result
        && format == Format::Json
    {
        match crate::output::events::mode() {
            crate::output::events::Progress::Json => {
                reporter.emit(&crate::engine::events::Event::Note {
                    message: format!("error: {e}"),
                })
            }
            _ => crate::say!("error: {e}"),
        }
    }
    reporter.finish();
    match format {
        Format::Json => print_json(&report),
        Format::Text | Format::Prometheus | Format::Html => out(&render_report(&report)),
    }
    Ok(match result {
        Ok(()) => exit_codes::OK,
        Err(e) => e.exit_code(),
    })
}

fn same(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

fn names(t: &Target) -> String {
    format!(
        "{}/{}/{}",
        t.subscription.as_deref().unwrap_or("?"),
        t.resource_group.as_deref().unwrap_or("?"),
        t.cluster.as_deref().unwrap_or("?")
    )
}

/// A run belongs to the cluster the environment names when subscription, resource group and
/// name match (ARM compares them case-insensitively); a re-encryption-only run, by its API server.
fn for_cluster(r: &Record, env: &Target, api_server: Option<&str>) -> bool {
    let t = &r.header.target;
    if r.header.procedure.intent == Intent::Reencrypt {
        return r
            .header
            .cluster
            .as_ref()
            .is_some_and(|c| Some(c.api_server.as_str()) == api_server);
    }
    same(t.subscription.as_deref(), env.subscription.as_deref())
        && same(t.resource_group.as_deref(), env.resource_group.as_deref())
        && same(t.cluster.as_deref(), env.cluster.as_deref())
}

/// Whether the state dir holds an unfinished run of the lifecycle of the cluster `env` names.
pub fn has_unfinished(dir: &std::path::Path, env: &Target) -> bool {
    journal::list_all(dir)
        .0
        .iter()
        .any(|r| unfinished(r) && for_cluster(r, env, None))
}

/// A run `resume` may continue: not ended, and asked for (a run stopped at or before its
/// prompt, with nothing begun, is not: its command is to be run again).
fn unfinished(r: &Record) -> bool {
    !matches!(r.state(), "succeeded" | "abandoned" | "unconfirmed")
}

/// The cluster the environment reaches must be the one the run acted on: same ARM id, same API
/// server (host and port), same kube-system namespace.
fn check_identity(recorded: &ClusterIdentity, now: &ClusterIdentity) -> Result<(), Refusal> {
    let mut diffs = Vec::new();
    if !same(recorded.arm_id.as_deref(), now.arm_id.as_deref())
        && (recorded.arm_id.is_some() || now.arm_id.is_some())
    {
        diffs.push(format!(
            "cluster {} (run) vs {} (now)",
            recorded.arm_id.as_deref().unwrap_or("-"),
            now.arm_id.as_deref().unwrap_or("-")
        ));
    }
    if recorded.api_server != now.api_server {
        diffs.push(format!(
            "API server {} (run) vs {} (now)",
            recorded.api_server, now.api_server
        ));
    }
    if recorded.kube_system_uid != now.kube_system_uid {
        diffs.push("the kube-system namespace's uid differs: another cluster".into());
    }
    if diffs.is_empty() {
        return Ok(());
    }
    Err(Refusal(format!(
        "the environment reaches another cluster than the one this run acted on: {}. Nothing was changed. Point KUBECONFIG (or --kubeconfig/--context) and the Azure target at the run's cluster ({}{}), then resume",
        diffs.join("; "),
        recorded
            .kubeconfig
            .as_ref()
            .map(|k| format!("kubeconfig {}", k.display()))
            .unwrap_or_default(),
        recorded
            .context
            .as_ref()
            .map(|c| format!(", context {c}"))
            .unwrap_or_default()
    )))
}

pub async fn resume(a: ResumeArgs, format: Format) -> anyhow::Result<i32> {
    let dir = state_dir(&a.target.state);
    let (runs, damaged) = journal::list_all(&dir);
    for (p, why) in &damaged {
        crate::say!(
            "warning: the journal {} is damaged and was skipped: {why}",
            p.display()
        );
    }
    let env = setup::target(&a.target);
    let chosen = match &a.run_id {
        Some(id) => runs
            .into_iter()
            .find(|r| &r.header.run_id == id)
            .ok_or_else(|| Refusal(format!("no run {id} in {}", dir.display())))?,
        None => {
            let named =
                env.subscription.is_some() && env.resource_group.is_some() && env.cluster.is_some();
            if !named {
                return Err(Refusal("name the cluster whose run to continue: --subscription (or AZURE_SUBSCRIPTION_ID), -g (or KMSCTL_RESOURCE_GROUP), -n (or KMSCTL_CLUSTER), or pass --run ID".into()).into());
            }
            let newest = runs
                .iter()
                .find(|r| for_cluster(r, &env, None) && !r.unconfirmed());
            let open: Vec<&Record> = runs
                .iter()
                .filter(|r| unfinished(r) && for_cluster(r, &env, None))
                .collect();
            // A run that began (it may have changed the cluster) before one that never did: a
            // later run killed before it read anything must not jump ahead of a half-done one.
            match open.iter().find(|r| r.began()).or(open.first()) {
                Some(r) => (*r).clone(),
                // The run finished on its own (it recovered, say, from a deleted canary): there
                // is nothing to continue, and nothing is wrong.
                None if newest.is_some_and(|r| r.state() == "succeeded") => {
                    let r = newest.expect("checked");
                    crate::say!(
                        "nothing to resume: the newest run of cluster {}, {} ({}), succeeded",
                        names(&env),
                        r.header.run_id,
                        r.header.procedure.name
                    );
                    return Ok(0);
                }
                None => {
                    return Err(Refusal(format!(
                        "no unfinished run of cluster {} in {}",
                        names(&env),
                        dir.display()
                    ))
                    .into());
                }
            }
        }
    };
    if chosen.unconfirmed() {
        return Err(Refusal(format!(
            "run {} ({}) was stopped before it was confirmed (at its prompt or before it) and never began: nothing was changed and there is nothing to continue. Run the command again",
            chosen.header.run_id, chosen.header.procedure.name
        ))
        .into());
    }
    if !unfinished(&chosen) {
        return Err(Refusal(format!(
            "run {} already {}",
            chosen.header.run_id,
            chosen.state()
        ))
        .into());
    }
    let h = chosen.header.clone();
    let need_azure = h.procedure.intent != Intent::Reencrypt;
    if need_azure && !for_cluster(&chosen, &env, None) {
        return Err(Refusal(format!(
            "run {} is for cluster {}, but the environment names {}; nothing was changed. Point the environment at the run's cluster",
            h.run_id,
            names(&h.target),
            names(&env)
        ))
        .into());
    }
    let target = if need_azure {
        // Reached as the run was (its journal says how), unless the command line says otherwise.
        Target {
            kube_credentials: a
                .target
                .kube_credentials
                .unwrap_or(h.target.kube_credentials),
            ..env.clone()
        }
    } else {
        Target {
            kubeconfig: env.kubeconfig.clone().or(h.target.kubeconfig.clone()),
            context: env.context.clone().or(h.target.context.clone()),
            ..Default::default()
        }
    };
    let go = Continue {
        target,
        auth: a.target.auth,
        aks_api: a.target.aks_api_version.clone(),
        yes: a.yes,
        switch_timeout_seconds: a.switch_timeout_seconds,
    };
    match continue_run(&chosen, go).await? {
        Launched::Ready(r) => {
            let r = *r;
            execute(&r.ctx, r.journal, r.record, r.lease, format).await
        }
        Launched::Stopped(code) => Ok(code),
        Launched::Done(_) => Ok(exit_codes::OK),
        Launched::Interrupted => Ok(INTERRUPTED),
    }
}

/// How to continue a run: where its cluster is, and whether to ask first.
pub struct Continue {
    pub target: Target,
    pub auth: crate::azure::credential::AuthMode,
    pub aks_api: String,
    pub yes: bool,
    pub switch_timeout_seconds: Option<u64>,
}

/// Everything before the engine of a resumed run: the context, the same-cluster guard, the
/// read-only preflight, the journal's lock, the lease and the confirmation.
pub async fn continue_run(chosen: &Record, go: Continue) -> anyhow::Result<Launched> {
    let h = chosen.header.clone();
    let need_azure = h.procedure.intent != Intent::Reencrypt;
    let mut ctx = setup::context(&go.target, go.auth, &go.aks_api, need_azure).await?;
    // A re-encryption run that named its cluster compares with it again.
    if !need_azure && h.target.subscription.is_some() && h.target.cluster.is_some() {
        ctx.azure = Some(super::lifecycle::named_azure(&h.target)?);
    }
    let now = identity(&ctx).await?;
    if let Some(recorded) = &h.cluster {
        check_identity(recorded, &now)?;
    }
    // The read-only preflight again: the wrong-cluster guard refuses, the rest informs (a run
    // that already changed the cluster would fail checks meant for its start).
    if need_azure {
        let pre = preflight::run(&ctx, h.procedure.intent, &h.params, false).await?;
        if let Some(f) = pre
            .findings
            .iter()
            .find(|f| f.level == crate::checks::Level::Refuse && f.check == "kubeconfig-cluster")
        {
            return Err(Refusal(f.message.clone()).into());
        }
    }
    // The journal's lock first: a process executing this run right now holds it.
    let (mut j, mut record) = Journal::open(&chosen.path).map_err(|e| Refusal(format!("{e:#}")))?;
    // A run killed before it had read its cluster: this one is its cluster from now on, so a
    // later resume checks against it.
    if record.header.cluster.is_none() && need_azure {
        j.append(&journal::Entry::Identity(Box::new(now.clone())))?;
        record.header.cluster = Some(now.clone());
    }
    // A run resumed because its proof timed out would time out again at once with the same
    // short timeout: without the flag, resume waits at least the default.
    let params = &mut record.header.params;
    params.barrier_timeout_seconds = go.switch_timeout_seconds.unwrap_or(
        params
            .barrier_timeout_seconds
            .max(journal::RunParams::default().barrier_timeout_seconds),
    );
    let next = record
        .next_step()
        .map(|i| h.procedure.steps[i].name())
        .unwrap_or("the end");
    let question = format!("Continue run {}?", h.run_id);
    let never_began = record
        .steps
        .iter()
        .all(|s| s.started.is_none() && !s.skipped);
    let ask = async {
        if never_began {
            crate::say!(
                "run {} ({}) was stopped before it began, so nothing was changed: continuing it runs {} from its first step, preflight and all",
                h.run_id,
                h.procedure.name,
                h.procedure.name
            );
        } else {
            crate::say!(
                "resuming run {} ({}) at step {next}",
                h.run_id,
                h.procedure.name
            );
        }
        if go.yes {
            return Ok(true);
        }
        let yes = confirm(&question).await?;
        if !yes {
            crate::say!("{}", super::lifecycle::NOT_CONFIRMED);
        }
        Ok(yes)
    };
    match session::begin(&ctx, &h.run_id, true, ask)
        .await
        .map_err(refusal)?
    {
        Begun::Ready(true, Some(lease)) => Ok(Launched::Ready(Box::new(Ready {
            ctx,
            journal: j,
            record,
            lease,
        }))),
        Begun::Ready(_, lease) => {
            if let Some(l) = lease {
                l.release().await;
            }
            Ok(Launched::Stopped(exit_codes::REFUSED))
        }
        Begun::Interrupted(s) => {
            crate::say!("\n{s}: nothing was changed");
            Ok(Launched::Interrupted)
        }
    }
}

/// Why `run` must not be abandoned: it changed the KMS write key and the key ledger shows that
/// switch unproven. Abandoned, nobody would prove it, and every later change refuses until
/// someone does (a dead end); `resume` is the way to finish it.
async fn unproven_switch_of(r: &Record) -> Option<String> {
    let step = r.switch_maybe_unproven()?;
    let id = &r.header.run_id;
    let finish = format!(
        "Nothing was changed. Finish it with `kmsctl resume --run {id}`: it proves the switch, then re-encrypts every Secret"
    );
    let (kubeconfig, context) = match &r.header.cluster {
        Some(c) => (c.kubeconfig.clone(), c.context.clone()),
        None => (
            r.header.target.kubeconfig.clone(),
            r.header.target.context.clone(),
        ),
    };
    let read = async {
        let c = match r.header.target.kube_credentials {
            crate::engine::journal::KubeCredentials::Kubeconfig => {
                crate::k8s::client::connect(kubeconfig.as_deref(), context.as_deref()).await?
            }
            _ => {
                let api = std::env::var("KMSCTL_AKS_API_VERSION")
                    .unwrap_or_else(|_| crate::cli::DEFAULT_AKS_API.to_string());
                let az = setup::azure(
                    &r.header.target,
                    crate::azure::credential::AuthMode::Auto,
                    &api,
                )?;
                super::kube_from_azure::cluster_for(&r.header.target, &az).await?
            }
        };
        anyhow::Ok(crate::k8s::ledger::load(&c.client).await?.0)
    };
    match read.await {
        Ok(l) => {
            let s = l
                .switch
                .filter(|s| &s.run_id == id && s.proven_at.is_none())?;
            Some(format!(
                "run {id} changed (or was changing) the KMS write key to {} at {}, and the API servers have not been shown to follow it yet. Abandoned, nobody would prove that switch, and every later enable, disable or rotate would refuse until someone did. {finish}",
                s.to.as_deref().unwrap_or("none (KMS off)"),
                s.requested_at.to_rfc3339()
            ))
        }
        Err(e) => Some(format!(
            "run {id} started update-kms (step {}) and no proof of the key switch followed; the key ledger, which says whether that switch is still unproven, could not be read ({e:#}). {finish}, or try again once the cluster can be reached",
            step + 1
        )),
    }
}

pub async fn runs(a: RunsArgs, format: Format) -> anyhow::Result<i32> {
    let dir = state_dir(&a.state);
    if let Some(id) = &a.abandon {
        let (runs, _) = journal::list_all(&dir);
        let r = runs
            .into_iter()
            .find(|r| &r.header.run_id == id)
            .ok_or_else(|| Refusal(format!("no run {id} in {}", dir.display())))?;
        if !unfinished(&r) {
            return Err(Refusal(format!("run {id} already {}", r.state())).into());
        }
        if let Some(why) = unproven_switch_of(&r).await {
            return Err(Refusal(why).into());
        }
        let (mut j, _) = Journal::open(&r.path).map_err(|e| Refusal(format!("{e:#}")))?;
        j.append(&Entry::Finished {
            at: chrono::Utc::now(),
            status: RunStatus::Abandoned,
            message: Some("abandoned with `kmsctl runs --abandon`".into()),
        })?;
        crate::say!(
            "run {id} abandoned: `kmsctl resume` will no longer pick it. It left no key switch unproven."
        );
        return Ok(exit_codes::OK);
    }
    let (runs, damaged) = journal::list_all(&dir);
    let rows: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            let running = r.finished.is_none() && journal::is_running(&r.path);
            serde_json::json!({
                "runId": r.header.run_id,
                "procedure": r.header.procedure.name,
                "cluster": r.header.target.cluster,
                "state": if running { "running" } else { r.state() },
                "nextStep": r.next_step().map(|i| r.header.procedure.steps[i].name()),
                "createdAt": r.header.created_at,
                "message": r.finished.as_ref().and_then(|f| f.1.clone()),
            })
        })
        .collect();
    match format {
        Format::Json => print_json(&serde_json::json!({
            "runs": rows,
            "damaged": damaged.iter().map(|(p, why)| serde_json::json!({ "journal": p, "error": why })).collect::<Vec<_>>(),
        })),
        Format::Text | Format::Prometheus | Format::Html => out(&render_runs(&rows, &damaged)),
    }
    Ok(exit_codes::OK)
}

fn render_runs(rows: &[serde_json::Value], damaged: &[(std::path::PathBuf, String)]) -> String {
    let cell = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or("-").to_string();
    let cols = ["runId", "procedure", "cluster", "state", "nextStep"];
    let heads = ["RUN", "PROCEDURE", "CLUSTER", "STATE", "NEXT STEP"];
    let widths: Vec<usize> = cols
        .iter()
        .zip(heads)
        .map(|(c, h)| {
            rows.iter()
                .map(|r| cell(r, c).len())
                .max()
                .unwrap_or(0)
                .max(h.len())
        })
        .collect();
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut text = line(heads.iter().map(|h| h.to_string()).collect());
    for r in rows {
        text.push_str(&line(cols.iter().map(|c| cell(r, c)).collect()));
    }
    for (p, why) in damaged {
        text.push_str(&format!("damaged journal {}: {why}\n", p.display()));
    }
    text
}
