//! `kmsctl fleet plan|rotate|resume|status`: select the clusters, cut them into waves, journal
//! the fleet run, roll it out (src/fleet/rollout.rs) and report it.

use super::{Refusal, runs};
use crate::cli::fleet::{
    AccessArgs, FleetCommand, FleetResumeArgs, FleetRotateArgs, FleetStatusArgs,
};
use crate::engine::journal::{ReencryptParams, RunParams};
use crate::exit_codes;
use crate::fleet::journal::{
    self, Entry, FleetHeader, FleetJournal, FleetParams, FleetRecord, FleetStatus, Outcome,
};
use crate::fleet::rollout::Rollout;
use crate::fleet::select::{self, Cluster, Filter};
use crate::fleet::waves;
use crate::output::fleet as view;
use crate::output::{Format, out};
use std::sync::Arc;

pub async fn run(c: FleetCommand, format: Format) -> anyhow::Result<i32> {
    match c {
        FleetCommand::Plan(a) => rotate(a, format, true).await,
        FleetCommand::Rotate(a) => rotate(a, format, false).await,
        FleetCommand::Resume(a) => resume(a, format).await,
        FleetCommand::Status(a) => status(a, format),
    }
}

fn filter(a: &FleetRotateArgs) -> anyhow::Result<Filter> {
    let s = &a.select;
    let ids = match &s.clusters {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Refusal(format!("--clusters {}: {e}", p.display())))?;
            let ids = select::read_ids(&text)
                .map_err(|e| Refusal(format!("--clusters {}: {e}", p.display())))?;
            if ids.is_empty() {
                return Err(
                    Refusal(format!("--clusters {}: no cluster id in it", p.display())).into(),
                );
            }
            ids
        }
        None => Vec::new(),
    };
    Ok(Filter {
        subscriptions: s.subscriptions.clone(),
        resource_groups: s.resource_groups.clone(),
        tags: s.tags.clone(),
        where_: s.where_.clone(),
        ids,
    })
}

/// The clusters selected (skipped ones included, marked), this shard's only.
async fn selection(a: &FleetRotateArgs, f: &Filter) -> anyhow::Result<Vec<Cluster>> {
    let az = super::setup::azure_any(a.access.auth, &a.access.aks_api_version)?;
    let rows = select::kms_clusters_where(&az.arm, &f.subscriptions, &f.kql())
        .await
        .map_err(|e| {
            Refusal(format!(
                "the clusters could not be listed through Azure Resource Graph: {e}. kmsctl needs Microsoft.ResourceGraph/resources/read and read on the clusters (see `kmsctl rbac`)"
            ))
        })?;
    let mut cs = select::clusters(&rows, f);
    let missing: Vec<&String> = f
        .ids
        .iter()
        .filter(|i| !cs.iter().any(|c| c.id.eq_ignore_ascii_case(i)))
        .collect();
    if !missing.is_empty() {
        return Err(Refusal(format!(
            "--clusters names cluster(s) Resource Graph does not list with KMS on for this credential: {}. Nothing was changed; remove them or grant read on them",
            missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ))
        .into());
    }
    if let Some(s) = a.select.shard {
        cs.retain(|c| s.owns(&c.id));
    }
    Ok(cs)
}

fn run_params(a: &FleetRotateArgs) -> RunParams {
    RunParams {
        margin_days: a.margin_days,
        barrier_timeout_seconds: a.switch_timeout_seconds,
        kms_status_period_seconds: a.kms_status_period_seconds,
        barrier_poll_millis: a.barrier_poll_millis.max(50),
        retire_old: a.retire_old,
        reencrypt: ReencryptParams {
            namespaces: Vec::new(),
            batch_size: a.reencrypt.batch_size,
            concurrency: a.reencrypt.concurrency.max(1),
            max_qps: a.reencrypt.max_qps,
        },
        ..Default::default()
    }
}

/// The fleet run's header: the selection in rollout order, cut into waves.
pub fn header(
    procedure: &str,
    params: FleetParams,
    selection: Vec<Cluster>,
) -> Result<FleetHeader, String> {
    let spec = waves::parse_waves(&params.waves)?;
    let active: Vec<Cluster> = selection
        .iter()
        .filter(|c| c.skip.is_none())
        .cloned()
        .collect();
    let ordered = waves::order(active, &params.order);
    let ids: Vec<String> = ordered.into_iter().map(|c| c.id).collect();
    Ok(FleetHeader {
        format: journal::FORMAT_VERSION,
        fleet_run_id: journal::new_fleet_run_id(procedure),
        procedure: procedure.into(),
        params,
        selection,
        waves: waves::cut(&ids, &spec),
        started_at: chrono::Utc::now(),
    })
}

fn record_of(header: FleetHeader) -> FleetRecord {
    FleetRecord {
        path: Default::default(),
        header,
        clusters: Default::default(),
        waves_finished: Default::default(),
        finished: None,
    }
}

async fn rotate(a: FleetRotateArgs, format: Format, plan_only: bool) -> anyhow::Result<i32> {
    let f = filter(&a)?;
    let selection = selection(&a, &f).await?;
    let params = FleetParams {
        waves: a.waves.clone(),
        order: a.order.clone(),
        max_parallel: a
            .max_parallel
            .unwrap_or_else(|| waves::default_parallel(waves::mem_available())),
        max_failures: a.max_failures,
        admin: a.admin,
        shard: a.select.shard,
        filter: f,
        run: run_params(&a),
    };
    let procedure = if a.twice { "rotate-twice" } else { "rotate" };
    let h = header(procedure, params, selection).map_err(Refusal)?;
    if plan_only {
        let r = record_of(h);
        match format {
            Format::Json => out(&format!("{}\n", view::plan_json(&r))),
            _ => out(&view::plan_text(&r, &|_| None)),
        }
        return Ok(exit_codes::OK);
    }
    let n: usize = h.waves.iter().map(Vec::len).sum();
    // An empty shard is no mistake (an Indexed Job's share can be empty): it ends at once.
    if n == 0 && a.select.shard.is_none() {
        return Err(Refusal(format!(
            "no cluster to rotate: the selection holds {} cluster(s) with KMS, none kmsctl can rotate (see `kmsctl fleet plan`). Nothing was changed",
            h.selection.len()
        ))
        .into());
    }
    if !a.yes && n > 0 {
        super::lifecycle::confirm_or_refuse(&format!(
            "{}Go ahead: {procedure} on {n} cluster(s) in {} wave(s)?",
            view::plan_text(&record_of(h.clone()), &|_| None),
            h.waves.len()
        ))
        .await?;
    }
    let state_dir = runs::state_dir(&a.access.state);
    let (earlier, _) = journal::list_all(&state_dir);
    if let Some(e) = earlier
        .iter()
        .find(|r| r.unfinished() && r.header.params.shard == a.select.shard)
    {
        crate::say!(
            "note: fleet run {} is unfinished ({}); this starts another. `kmsctl fleet resume` would continue that one",
            e.header.fleet_run_id,
            e.state()
        );
    }
    let j = FleetJournal::create(&state_dir, h).map_err(|e| Refusal(format!("{e:#}")))?;
    let record = journal::replay(&j.path)?;
    roll(j, record, &a.access, format).await
}

async fn roll(
    mut j: FleetJournal,
    record: FleetRecord,
    access: &AccessArgs,
    format: Format,
) -> anyhow::Result<i32> {
    use std::io::IsTerminal;
    let terminal = crate::output::events::mode() == crate::output::events::Progress::Auto
        && std::io::stderr().is_terminal();
    let textfile = access.textfile.clone().map(|t| (t, j.path.clone()));
    let v = Arc::new(view::FleetView::new(
        terminal,
        format == Format::Json,
        textfile,
    ));
    crate::say!(
        "fleet run {} ({}): journal {}",
        record.header.fleet_run_id,
        record.header.procedure,
        j.path.display()
    );
    let rollout = Rollout {
        state_dir: runs::state_dir(&access.state),
        auth: access.auth,
        aks_api: access.aks_api_version.clone(),
        view: v.clone(),
    };
    let status = rollout.run(&mut j, record).await;
    v.finish();
    let status = status?;
    let r = journal::replay(&j.path)?;
    drop(j);
    report(&r, format, access.textfile.as_deref())?;
    Ok(exit_code(&r, status))
}

fn exit_code(r: &FleetRecord, status: FleetStatus) -> i32 {
    match status {
        FleetStatus::Succeeded => exit_codes::OK,
        FleetStatus::Interrupted => runs::INTERRUPTED,
        FleetStatus::Stopped => {
            // Refused everywhere it went, before any change: as a single run's refusal.
            let outcomes: Vec<Option<Outcome>> = r
                .header
                .waves
                .iter()
                .flatten()
                .map(|id| r.cluster(id).result.map(|x| x.outcome))
                .collect();
            let refused_only = outcomes.contains(&Some(Outcome::Refused))
                && outcomes
                    .iter()
                    .all(|o| matches!(o, None | Some(Outcome::Refused)));
            if refused_only {
                exit_codes::REFUSED
            } else {
                exit_codes::FAILED
            }
        }
    }
}

fn report(
    r: &FleetRecord,
    format: Format,
    textfile: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    match format {
        Format::Json => out(&format!("{}\n", view::fleet_json(r))),
        Format::Html => out(&view::page(r)),
        Format::Prometheus => out(&view::prometheus(r)),
        Format::Text => out(&format!(
            "{}state: {}{}\n",
            view::plan_text(r, &|_| None),
            r.state(),
            r.finished
                .as_ref()
                .map(|f| format!(" ({})", f.1))
                .unwrap_or_default()
        )),
    }
    if let Some(p) = textfile {
        super::expiry::write_atomic(p, &view::prometheus(r))?;
    }
    Ok(())
}

async fn resume(a: FleetResumeArgs, format: Format) -> anyhow::Result<i32> {
    let dir = runs::state_dir(&a.access.state);
    let (all, damaged) = journal::list_all(&dir);
    for (p, why) in &damaged {
        crate::say!(
            "warning: the fleet journal {} is damaged and was skipped: {why}",
            p.display()
        );
    }
    let chosen = match &a.run_id {
        Some(id) => all
            .iter()
            .find(|r| &r.header.fleet_run_id == id)
            .ok_or_else(|| {
                Refusal(format!(
                    "no fleet run {id} in {}",
                    journal::fleet_dir(&dir).display()
                ))
            })?,
        None => {
            let mine: Vec<&FleetRecord> = all
                .iter()
                .filter(|r| a.shard.is_none() || r.header.params.shard == a.shard)
                .collect();
            match mine.iter().copied().find(|r| r.unfinished()) {
                Some(r) => r,
                None if !mine.is_empty() => {
                    crate::say!(
                        "nothing to resume: the newest fleet run, {}, succeeded",
                        mine[0].header.fleet_run_id
                    );
                    return Ok(exit_codes::OK);
                }
                None => {
                    return Err(Refusal(format!(
                        "no fleet run in {}: start one with `kmsctl fleet rotate`",
                        journal::fleet_dir(&dir).display()
                    ))
                    .into());
                }
            }
        }
    };
    if !chosen.unfinished() {
        return Err(Refusal(format!(
            "fleet run {} already succeeded",
            chosen.header.fleet_run_id
        ))
        .into());
    }
    let (mut j, mut record) =
        FleetJournal::open(&chosen.path).map_err(|e| Refusal(format!("{e:#}")))?;
    if let Some(n) = a.max_parallel {
        record.header.params.max_parallel = n;
    }
    if !a.yes {
        super::lifecycle::confirm_or_refuse(&format!(
            "{}Continue fleet run {}?",
            view::plan_text(&record, &|_| None),
            record.header.fleet_run_id
        ))
        .await?;
    }
    j.append(&Entry::Resumed {
        at: chrono::Utc::now(),
    })?;
    roll(j, record, &a.access, format).await
}

/// A cluster run's state, from its own journal.
fn run_state(dir: &std::path::Path, run_id: &str) -> Option<String> {
    let path = crate::engine::journal::runs_dir(dir).join(format!("{run_id}.jsonl"));
    let r = crate::engine::journal::replay(&path).ok()?;
    let running = r.finished.is_none() && crate::engine::journal::is_running(&path);
    let next = r
        .next_step()
        .map(|i| format!(", next step {}", r.header.procedure.steps[i].name()))
        .unwrap_or_default();
    Some(format!(
        "run {run_id} {}{next}",
        if running { "running" } else { r.state() }
    ))
}

fn status(a: FleetStatusArgs, format: Format) -> anyhow::Result<i32> {
    let dir = runs::state_dir(&a.state);
    let (all, _) = journal::list_all(&dir);
    let r = match &a.run_id {
        Some(id) => all.iter().find(|r| &r.header.fleet_run_id == id),
        None => all.first(),
    }
    .ok_or_else(|| {
        Refusal(format!(
            "no fleet run in {}",
            journal::fleet_dir(&dir).display()
        ))
    })?;
    let running = journal::is_running(&r.path);
    let state = |id: &str| run_state(&dir, id);
    match format {
        Format::Json => {
            let clusters: Vec<serde_json::Value> = r
                .header
                .waves
                .iter()
                .enumerate()
                .flat_map(|(w, ids)| ids.iter().map(move |id| (w, id)))
                .map(|(w, id)| {
                    let c = r.cluster(id);
                    serde_json::json!({
                        "cluster": id, "wave": w + 1, "runId": c.run_id,
                        "outcome": c.result.as_ref().map(|x| x.outcome.label()),
                        "result": c.result, "run": c.run_id.as_deref().and_then(state),
                    })
                })
                .collect();
            let mut v: serde_json::Value = serde_json::from_str(&view::fleet_json(r))?;
            v["running"] = serde_json::json!(running);
            v["clusterRuns"] = serde_json::json!(clusters);
            out(&format!("{v}\n"));
        }
        Format::Html => out(&view::page(r)),
        Format::Prometheus => out(&view::prometheus(r)),
        Format::Text => {
            out(&view::plan_text(r, &state));
            out(&format!(
                "state: {}{}\n",
                if running { "running" } else { r.state() },
                r.finished
                    .as_ref()
                    .filter(|_| !running)
                    .map(|f| format!(" ({})", f.1))
                    .unwrap_or_default()
            ));
        }
    }
    Ok(exit_codes::OK)
}
