//! Runs a procedure from wherever its journal says it stands. Each step is journaled as started
//! (with what it needs to resume safely) and as finished (with its output) around its execution.

use super::context::Context;
use super::events::Sink;
use super::journal::{Entry, Journal, Record, RunStatus};
use super::state::RunState;
use super::{StepError, steps};
use crate::engine::events::Event as RunEvent;
use crate::playbook::{Procedure, Step};
use crate::reencrypt::{Event, Observer, Summary};
use serde::Serialize;
use serde_json::Value;
use std::sync::Mutex;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub index: usize,
    pub step: String,
    pub status: String,
    pub output: Value,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    pub run_id: String,
    pub procedure: String,
    pub status: String,
    pub journal: String,
    pub steps: Vec<StepReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reencrypt: Vec<Summary>,
    /// What the run did, as its closing summary says it.
    pub summary: super::summary::Summary,
}

/// Journals the engine's checkpoint events.
struct JournalObserver<'a> {
    journal: &'a Mutex<Journal>,
    index: usize,
}

impl Observer for JournalObserver<'_> {
    fn event(&self, event: &Event) {
        if matches!(event, Event::PageDone { .. } | Event::NamespaceDone { .. }) {
            let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = j.append_checkpoint(&Entry::Reencrypt {
                index: self.index,
                event: event.clone(),
            }) {
                tracing::warn!(error = %e, "could not write a re-encryption checkpoint");
            }
        }
    }
}

fn append(journal: &Mutex<Journal>, entry: Entry) -> Result<(), StepError> {
    journal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .append(&entry)
        .map_err(StepError::Failed)
}

/// The journal entries that record the preflight `start` ran before its confirmation prompt as
/// the procedure's step 0, so it is not run twice. Only when step 0 is a preflight: a playbook
/// that changes nothing may start with anything (the built-in `reencrypt` starts with its only
/// step), and marking that step done with the preflight's output would skip it.
pub fn preflight_entries(procedure: &Procedure, output: Value) -> Vec<Entry> {
    if procedure.steps.first() != Some(&Step::Preflight) {
        return Vec::new();
    }
    let at = chrono::Utc::now();
    vec![
        Entry::StepStarted {
            index: 0,
            at,
            data: Value::Null,
        },
        Entry::StepFinished {
            index: 0,
            at,
            output,
        },
    ]
}

/// Runs the steps left to do. `lease_lost` is checked before each step: a run that no longer
/// holds the cluster's lease stops, as another kmsctl may be acting on the cluster.
pub async fn execute(
    ctx: &Context,
    journal: Journal,
    record: Record,
    sink: &dyn Sink,
    lease_lost: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (RunReport, Result<(), StepError>) {
    let began = std::time::Instant::now();
    let journal = Mutex::new(journal);
    let header = &record.header;
    let steps = &header.procedure.steps;
    sink.emit(&RunEvent::RunStarted {
        run_id: header.run_id.clone(),
        procedure: header.procedure.name.clone(),
        description: header.procedure.description.clone(),
        steps: steps.len(),
        from_step: if resumed(&record) {
            record.next_step().unwrap_or(0)
        } else {
            0
        },
    });
    let mut failed_pass = None;
    let mut state = RunState::default();
    let mut reports = Vec::new();
    let mut summaries = Vec::new();
    let mut result = Ok(());
    for (index, step) in steps.iter().enumerate() {
        let rec = &record.steps[index];
        if let Some(output) = &rec.finished {
            state.apply(step, output);
            reports.push(StepReport {
                index,
                step: step.name().into(),
                status: "done".into(),
                output: output.clone(),
            });
            continue;
        }
        if rec.skipped || step.condition().is_some_and(|c| !header.params.flag(c)) {
            if !rec.skipped
                && let Err(e) = append(
                    &journal,
                    Entry::StepSkipped {
                        index,
                        reason: "condition not set".into(),
                    },
                )
            {
                result = Err(e);
                break;
            }
            sink.emit(&RunEvent::StepSkipped {
                index,
                step: step.name().into(),
                reason: "not asked for".into(),
            });
            reports.push(StepReport {
                index,
                step: step.name().into(),
                status: "skipped".into(),
                output: Value::Null,
            });
            continue;
        }
        if lease_lost.load(std::sync::atomic::Ordering::SeqCst) {
            result = Err(StepError::Failed(anyhow::anyhow!(
                "lost the cluster's lease kube-system/{} (another kmsctl may be acting on this cluster); stopped before {}. Run `kmsctl resume` once no other run is active",
                crate::k8s::lease::NAME,
                step.name()
            )));
            break;
        }
        sink.emit(&RunEvent::StepStarted {
            index,
            total: steps.len(),
            step: step.name().into(),
        });
        let step_began = std::time::Instant::now();
        let outcome = run_step(
            ctx, &journal, &record, index, step, &state, sink, lease_lost,
        )
        .await;
        match outcome {
            Ok((output, summary)) => {
                summaries.extend(summary);
                if let Err(e) = append(
                    &journal,
                    Entry::StepFinished {
                        index,
                        at: chrono::Utc::now(),
                        output: output.clone(),
                    },
                ) {
                    result = Err(e);
                    break;
                }
                state.apply(step, &output);
                sink.emit(&RunEvent::StepFinished {
                    index,
                    step: step.name().into(),
                    detail: describe(step, &output),
                    seconds: step_began.elapsed().as_secs_f64(),
                });
                reports.push(StepReport {
                    index,
                    step: step.name().into(),
                    status: "done".into(),
                    output,
                });
            }
            Err(e) => {
                if let StepError::Incomplete(s) = &e {
                    summaries.push((**s).clone());
                    failed_pass = Some((index, (**s).clone()));
                }
                let _ = append(
                    &journal,
                    Entry::StepFailed {
                        index,
                        at: chrono::Utc::now(),
                        message: e.to_string(),
                    },
                );
                reports.push(StepReport {
                    index,
                    step: step.name().into(),
                    status: "failed".into(),
                    output: Value::Null,
                });
                result = Err(e);
                break;
            }
        }
    }
    let (status, message) = match &result {
        Ok(()) => (RunStatus::Succeeded, None),
        Err(e) => (RunStatus::Failed, Some(e.to_string())),
    };
    let _ = append(
        &journal,
        Entry::Finished {
            at: chrono::Utc::now(),
            status,
            message: message.clone(),
        },
    );
    let path = journal
        .into_inner()
        .map(|j| j.path)
        .unwrap_or_else(|e| e.into_inner().path.clone());
    // The summary reads the whole journal (steps an earlier process of a resumed run did
    // included) and the key ledger as the run leaves it.
    let done = super::journal::replay(&path).unwrap_or_else(|_| record.clone());
    let ledger = crate::k8s::ledger::load(&ctx.kube)
        .await
        .map(|(l, _)| l)
        .map_err(|e| e.to_string());
    let summary = super::summary::build(
        &done,
        result.is_ok(),
        began.elapsed().as_secs_f64(),
        ledger.as_ref().map_err(Clone::clone),
        failed_pass.as_ref().map(|(i, s)| (*i, s)),
    );
    sink.emit(&RunEvent::RunFinished {
        summary: Box::new(summary.clone()),
    });
    let report = RunReport {
        run_id: header.run_id.clone(),
        procedure: header.procedure.name.clone(),
        status: if result.is_ok() {
            "succeeded".into()
        } else {
            "failed".into()
        },
        journal: path.display().to_string(),
        steps: reports,
        error: message,
        reencrypt: summaries,
        summary,
    };
    (report, result)
}

#[expect(
    clippy::too_many_arguments,
    reason = "the step needs the run, its observers and its lease flag"
)]
async fn run_step(
    ctx: &Context,
    journal: &Mutex<Journal>,
    record: &Record,
    index: usize,
    step: &Step,
    state: &RunState,
    sink: &dyn Sink,
    lease_lost: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<(Value, Option<Summary>), StepError> {
    let params = &record.header.params;
    let run_id = record.header.run_id.as_str();
    // What a step needs to resume safely is read before it acts, and journaled with its start;
    // a resumed step reuses what the interrupted one journaled.
    let prepared = match (&record.steps[index].started, step) {
        (Some(data), _) => data.clone(),
        (None, Step::RotateKey) => steps::rotate_key_prepare(ctx, state).await?,
        (None, _) => Value::Null,
    };
    append(
        journal,
        Entry::StepStarted {
            index,
            at: chrono::Utc::now(),
            data: prepared.clone(),
        },
    )?;
    let output = match step {
        Step::Preflight => {
            let p = super::preflight::run(
                ctx,
                record.header.procedure.intent,
                params,
                record.header.procedure.uses_data_plane(),
            )
            .await?;
            if crate::checks::refused(&p.findings) {
                let why: Vec<String> = p
                    .findings
                    .iter()
                    .filter(|f| f.level == crate::checks::Level::Refuse)
                    .map(|f| f.message.clone())
                    .collect();
                return Err(StepError::Refused(why.join("; ")));
            }
            p.output
        }
        Step::PlantCanary => steps::plant_canary(ctx, run_id, sink).await?,
        Step::RotateKey => steps::rotate_key(ctx, state, &prepared).await?,
        Step::UpdateKms { enabled } => {
            steps::update_kms(ctx, state, *enabled, run_id, sink).await?
        }
        Step::VerifyKms { kms_version } => steps::verify_kms(ctx, state, *kms_version).await?,
        Step::SetVaultNetwork => super::vault_network::set_vault_network(ctx, state).await?,
        Step::UpgradeKubernetes => {
            super::upgrade::upgrade_kubernetes(ctx, params, sink, lease_lost).await?
        }
        Step::ProveKeySwitch => {
            super::proof::prove_key_switch(ctx, state, params, run_id, lease_lost, sink).await?
        }
        Step::Reencrypt => {
            let obs = JournalObserver { journal, index };
            let checkpoint = record.steps[index].checkpoint.clone();
            let lifecycle = record.header.procedure.intent != crate::playbook::Intent::Reencrypt;
            let (out, summary) = steps::reencrypt(
                ctx,
                state,
                params,
                lifecycle,
                checkpoint,
                &obs,
                sink,
                &super::summary::pass_label(&record.header.procedure, index),
                lease_lost,
            )
            .await?;
            return Ok((out, Some(summary)));
        }
        Step::CheckRotationWindow => steps::check_rotation_window(ctx, state, params).await?,
        Step::RetireOldest { .. } => steps::retire_oldest(ctx, state).await?,
    };
    Ok((output, None))
}

/// Whether an earlier process worked on this run (the preflight `start` journals before its
/// prompt does not count).
fn resumed(record: &Record) -> bool {
    let steps = &record.header.procedure.steps;
    record.steps.iter().enumerate().any(|(i, r)| {
        (r.started.is_some() || r.finished.is_some() || r.skipped)
            && !(i == 0 && steps.first() == Some(&Step::Preflight))
    })
}

fn describe(step: &Step, output: &Value) -> String {
    match step {
        Step::RotateKey => format!(
            "new version {}",
            output["keyId"].as_str().unwrap_or_default()
        ),
        Step::UpdateKms { .. } => {
            if output["report"]["changed"].as_bool() == Some(true) {
                "cluster updated".into()
            } else {
                "already as asked".into()
            }
        }
        Step::VerifyKms { .. } => format!(
            "securityProfile.azureKeyVaultKms is as asked{}{}",
            output["privateEndpoint"]["privateEndpoint"]
                .as_str()
                .map(|p| format!("; private endpoint {p} approved"))
                .unwrap_or_default(),
            output["kmsVersion"]
                .as_str()
                .map(|v| format!("; KMS {v}"))
                .unwrap_or_default()
        ),
        Step::SetVaultNetwork => format!(
            "vault public network access {}, firewall default {}{}",
            output["publicNetworkAccess"].as_str().unwrap_or("?"),
            output["defaultAction"].as_str().unwrap_or("?"),
            if output["changed"].as_bool() == Some(true) {
                ""
            } else {
                " (already so)"
            }
        ),
        Step::UpgradeKubernetes => format!(
            "Kubernetes {} -> {} in {} upgrade(s)",
            output["from"].as_str().unwrap_or("?"),
            output["to"].as_str().unwrap_or("?"),
            output["hops"].as_array().map_or(0, Vec::len)
        ),
        Step::ProveKeySwitch => format!(
            "{} (proven by {} after {:.0}s: {})",
            match output["writesWith"].as_str() {
                Some("no KMS") => "every API server replica writes without KMS".to_string(),
                Some(k) => format!("every API server replica writes with {k}"),
                None => "the switch is proven".to_string(),
            },
            match output["evidence"].as_str() {
                Some("attributed") => "each replica's own writes",
                Some("time") => "the canary's quiet time",
                Some("settled") => "the replicas' agreement",
                Some("ledger") => "the key ledger",
                _ => "?",
            },
            output["waitedSeconds"].as_f64().unwrap_or(0.0),
            output["detail"].as_str().unwrap_or_default()
        ),
        Step::Reencrypt => {
            let t = &output["totals"];
            let verified = match output["verification"]["rounds"].as_u64() {
                Some(r) => format!(
                    "; verification pass over fresh connections rewrote nothing ({} unchanged{})",
                    output["verification"]["unchanged"],
                    if r > 1 {
                        format!(", after {r} rounds")
                    } else {
                        String::new()
                    }
                ),
                None => String::new(),
            };
            let checked = match output["writeKey"]["checked"].as_bool() {
                Some(true) => {
                    "; every API server replica was shown writing with one key before and after"
                }
                Some(false) => {
                    "; whether every API server replica writes with one key could not be checked (/metrics does not identify them)"
                }
                None => "",
            };
            format!(
                "{} rewritten, {} unchanged by the replica that served them, {} deleted meanwhile{verified}{checked}",
                t["rewritten"], t["unchanged"], t["deleted"]
            )
        }
        Step::RetireOldest { .. } => format!(
            "disabled {}",
            output["disabled"].as_str().unwrap_or("nothing")
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_preflight_step_is_journaled_done_by_the_preflight_before_confirmation() {
        let output = serde_json::json!({ "keyId": "k" });
        let reencrypt = crate::playbook::built_in("reencrypt").unwrap();
        assert!(preflight_entries(&reencrypt, output.clone()).is_empty());
        let rotate = crate::playbook::built_in("rotate").unwrap();
        match preflight_entries(&rotate, output.clone()).as_slice() {
            [
                Entry::StepStarted { index: 0, .. },
                Entry::StepFinished {
                    index: 0,
                    output: o,
                    ..
                },
            ] => assert_eq!(*o, output),
            other => panic!("{other:?}"),
        }
    }
}
