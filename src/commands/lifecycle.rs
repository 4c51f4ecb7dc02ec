//! `enable`, `disable`, `rotate`, `reencrypt`, `resume`, `runs`: each starts (or continues) a run
//! of a built-in playbook on the one engine.

use super::{Refusal, setup};
use crate::checks;
use crate::cli::{
    ChangeArgs, EnableArgs, NetworkAccess, ReencryptArgs, ReencryptCommand, ResumeArgs, RotateArgs,
    StateArgs,
};
use crate::engine::context::Context;
use crate::engine::journal::{self, Entry, Journal, ReencryptParams, RunHeader, RunParams, Target};
use crate::engine::{preflight, runner};
use crate::exit_codes;
use crate::k8s::lease::Lease;
use crate::output::run::{RunDisplay, render_findings, render_plan, render_report};
use crate::output::{Format, print_json};
use crate::playbook::{self, Intent};
use std::io::IsTerminal;

fn reencrypt_params(r: &ReencryptArgs) -> ReencryptParams {
    ReencryptParams {
        namespaces: r.namespaces.clone(),
        batch_size: r.batch_size,
        concurrency: r.concurrency.max(1),
        max_qps: r.max_qps,
    }
}

fn params(c: &ChangeArgs) -> RunParams {
    RunParams {
        key_id: None,
        network_access: None,
        vault_resource_id: None,
        retire_old: false,
        margin_days: c.margin_days,
        barrier_timeout_seconds: c.switch_timeout_seconds,
        reencrypt: reencrypt_params(&c.reencrypt),
    }
}

fn state_dir(s: &StateArgs) -> std::path::PathBuf {
    s.state_dir
        .clone()
        .unwrap_or_else(journal::default_state_dir)
}

pub async fn enable(a: EnableArgs, format: Format) -> anyhow::Result<i32> {
    crate::azure::keys::KeyId::parse(&a.key_id).map_err(Refusal)?;
    let mut p = params(&a.change);
    p.key_id = Some(a.key_id.clone());
    p.network_access = Some(match a.network_access {
        NetworkAccess::Public => "Public".into(),
        NetworkAccess::Private => "Private".into(),
    });
    if a.network_access == NetworkAccess::Public && a.vault_resource_id.is_some() {
        return Err(Refusal(
            "--vault-resource-id must be empty with --network-access public".into(),
        )
        .into());
    }
    if a.network_access == NetworkAccess::Private && a.vault_resource_id.is_none() {
        return Err(Refusal("--network-access private needs --vault-resource-id".into()).into());
    }
    p.vault_resource_id = a.vault_resource_id.clone();
    start("enable", &a.change, p, format).await
}

pub async fn disable(a: ChangeArgs, format: Format) -> anyhow::Result<i32> {
    let p = params(&a);
    start("disable", &a, p, format).await
}

pub async fn rotate(a: RotateArgs, format: Format) -> anyhow::Result<i32> {
    let mut p = params(&a.change);
    p.retire_old = a.retire_old;
    start(
        if a.twice { "rotate-twice" } else { "rotate" },
        &a.change,
        p,
        format,
    )
    .await
}

pub async fn reencrypt(a: ReencryptCommand, format: Format) -> anyhow::Result<i32> {
    let target = Target {
        kubeconfig: a.kube.kubeconfig.clone(),
        context: a.kube.context.clone(),
        ..Default::default()
    };
    let p = RunParams {
        key_id: None,
        network_access: None,
        vault_resource_id: None,
        retire_old: false,
        margin_days: 0,
        barrier_timeout_seconds: 0,
        reencrypt: reencrypt_params(&a.reencrypt),
    };
    let ctx = setup::context(&target, crate::azure::credential::AuthMode::Auto, "", false).await?;
    let procedure = playbook::built_in("reencrypt")?;
    let header = RunHeader {
        format: journal::FORMAT_VERSION,
        run_id: journal::new_run_id("reencrypt"),
        procedure,
        params: p,
        target,
        created_at: chrono::Utc::now(),
    };
    let lease = Lease::acquire(ctx.kube.clone(), &header.run_id)
        .await
        .map_err(|e| Refusal(e.to_string()))?;
    let j = Journal::create(&state_dir(&a.state), header)?;
    let record = journal::replay(&j.path)?;
    finish_run(&ctx, j, record, lease, format).await
}

/// Preflight, plan, confirmation, journal, then the engine.
async fn start(name: &str, c: &ChangeArgs, p: RunParams, format: Format) -> anyhow::Result<i32> {
    let procedure = playbook::built_in(name)?;
    let target = setup::target(&c.target);
    let ctx = setup::context(&target, c.target.auth, &c.target.aks_api_version, true).await?;
    let run_id = journal::new_run_id(name);
    // The dry run only looks; a real run takes the cluster's lease before it reads anything.
    let lease = if c.dry_run {
        None
    } else {
        Some(
            Lease::acquire(ctx.kube.clone(), &run_id)
                .await
                .map_err(|e| Refusal(e.to_string()))?,
        )
    };
    let pre = preflight::run(&ctx, procedure.intent, &p).await;
    let pre = match pre {
        Ok(pre) => pre,
        Err(e) => {
            if let Some(l) = lease {
                l.release().await;
            }
            return Err(e);
        }
    };
    let refused = checks::refused(&pre.findings);
    match format {
        Format::Json => {
            if c.dry_run || refused {
                print_json(
                    &serde_json::json!({ "plan": procedure, "preflight": pre.findings, "refused": refused, "dryRun": c.dry_run }),
                );
            }
        }
        Format::Text => {
            let text = format!(
                "{}{}",
                render_plan(&procedure, |f| p.flag(f)),
                render_findings(&pre.findings)
            );
            if c.dry_run {
                print!("{text}")
            } else {
                eprint!("{text}")
            }
        }
    }
    if refused || c.dry_run {
        if let Some(l) = lease {
            l.release().await;
        }
        if refused {
            eprintln!(
                "refused: nothing was changed. Fix what is marked REFUSE above and run again."
            );
            return Ok(exit_codes::REFUSED);
        }
        return Ok(exit_codes::OK);
    }
    let lease = lease.expect("a real run holds the lease");
    if !c.yes
        && !confirm(&format!(
            "{} cluster {}?",
            procedure.description,
            c.target.cluster.as_deref().unwrap_or_default()
        ))?
    {
        lease.release().await;
        return Ok(exit_codes::REFUSED);
    }
    let header = RunHeader {
        format: journal::FORMAT_VERSION,
        run_id,
        procedure,
        params: p,
        target,
        created_at: chrono::Utc::now(),
    };
    let mut j = Journal::create(&state_dir(&c.target.state), header)?;
    let now = chrono::Utc::now();
    j.append(&Entry::StepStarted {
        index: 0,
        at: now,
        data: serde_json::Value::Null,
    })?;
    j.append(&Entry::StepFinished {
        index: 0,
        at: now,
        output: pre.output,
    })?;
    let record = journal::replay(&j.path)?;
    finish_run(&ctx, j, record, lease, format).await
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(Refusal("refusing to change the cluster without confirmation: stdin is not a terminal; pass --yes".into()).into());
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

async fn finish_run(
    ctx: &Context,
    j: Journal,
    record: journal::Record,
    lease: Lease,
    format: Format,
) -> anyhow::Result<i32> {
    let display = RunDisplay::default();
    let (report, result) = runner::execute(ctx, j, record, &display, &lease.lost).await;
    display.finish();
    lease.release().await;
    match format {
        Format::Json => print_json(&report),
        Format::Text => print!("{}", render_report(&report)),
    }
    Ok(match result {
        Ok(()) => exit_codes::OK,
        Err(e) => {
            if format == Format::Json {
                eprintln!("error: {e}");
            }
            e.exit_code()
        }
    })
}

pub async fn resume(a: ResumeArgs, format: Format) -> anyhow::Result<i32> {
    let dir = state_dir(&a.state);
    let runs = journal::list(&dir)?;
    let chosen = match &a.run_id {
        Some(id) => runs
            .into_iter()
            .find(|r| &r.header.run_id == id)
            .ok_or_else(|| Refusal(format!("no run {id} in {}", dir.display())))?,
        None => runs
            .into_iter()
            .find(|r| r.state() != "succeeded")
            .ok_or_else(|| Refusal(format!("no unfinished run in {}", dir.display())))?,
    };
    if chosen.state() == "succeeded" {
        return Err(Refusal(format!("run {} already succeeded", chosen.header.run_id)).into());
    }
    let h = &chosen.header;
    let need_azure = h.procedure.intent != Intent::Reencrypt;
    let ctx = setup::context(
        &h.target,
        a.auth,
        &crate::azure::arm::ApiVersions::default().aks,
        need_azure,
    )
    .await?;
    let lease = Lease::acquire(ctx.kube.clone(), &h.run_id)
        .await
        .map_err(|e| Refusal(e.to_string()))?;
    let next = chosen
        .next_step()
        .map(|i| h.procedure.steps[i].name())
        .unwrap_or("the end");
    eprintln!(
        "resuming run {} ({}) at step {next}",
        h.run_id, h.procedure.name
    );
    if !a.yes && !confirm(&format!("Continue run {}?", h.run_id))? {
        lease.release().await;
        return Ok(exit_codes::REFUSED);
    }
    let (j, record) = Journal::open(&chosen.path)?;
    finish_run(&ctx, j, record, lease, format).await
}

pub fn runs(a: StateArgs, format: Format) -> anyhow::Result<i32> {
    let runs = journal::list(&state_dir(&a))?;
    let rows: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            serde_json::json!({
                "runId": r.header.run_id,
                "procedure": r.header.procedure.name,
                "cluster": r.header.target.cluster,
                "state": r.state(),
                "nextStep": r.next_step().map(|i| r.header.procedure.steps[i].name()),
                "createdAt": r.header.created_at,
                "message": r.finished.as_ref().and_then(|f| f.1.clone()),
            })
        })
        .collect();
    match format {
        Format::Json => print_json(&rows),
        Format::Text => {
            println!(
                "{:<44} {:<13} {:<12} {:<12} NEXT STEP",
                "RUN", "PROCEDURE", "CLUSTER", "STATE"
            );
            for r in &rows {
                println!(
                    "{:<44} {:<13} {:<12} {:<12} {}",
                    r["runId"].as_str().unwrap_or_default(),
                    r["procedure"].as_str().unwrap_or_default(),
                    r["cluster"].as_str().unwrap_or("-"),
                    r["state"].as_str().unwrap_or_default(),
                    r["nextStep"].as_str().unwrap_or("-")
                );
            }
        }
    }
    Ok(exit_codes::OK)
}
