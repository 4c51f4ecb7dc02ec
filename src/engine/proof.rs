//! The steps that prove: that the canary is current before a change, that every API server
//! replica writes with the new key after it, and that a re-encryption left nothing behind (a
//! verification pass over fresh connections that rewrites nothing). Only what the API servers
//! showed counts; Azure's configuration never decides that no switch is needed. A standalone
//! re-encryption checks, before and after, that every replica writes with one key.

use super::StepError;
use super::context::Context;
use super::events::{Event, PassEvents, PassKind, PassLabel, Sink};
use super::journal::RunParams;
use super::state::RunState;
use crate::k8s::canary::{self, Agreement, Barrier, Proof};
use crate::k8s::ledger;
use crate::reencrypt::{self, Checkpoint, Observer};
use serde_json::{Value, json};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Refuses while another run's key switch is unproven: re-encrypting or changing the key again
/// before it is proven is how Secrets end up under a key that is then retired.
pub fn refuse_unproven(l: &ledger::Ledger, run_id: &str) -> Result<(), StepError> {
    match l.unproven_switch(run_id) {
        None => Ok(()),
        Some(s) => Err(StepError::Refused(format!(
            "run {} changed the KMS write key to {} at {} and the API servers have not been shown to follow it yet; finish that run first with `kmsctl resume --run {}` (it proves the switch and re-encrypts), then run this command again",
            s.run_id,
            s.to.as_deref().unwrap_or("none (KMS off)"),
            s.requested_at.to_rfc3339(),
            s.run_id
        ))),
    }
}

/// Before any change: the key in service goes into the ledger, the canary is made current on
/// every replica, and each replica's key id hash is noted where /metrics is readable.
pub async fn plant(
    ctx: &Context,
    run_id: &str,
    kms_at_plant: Value,
    sink: &dyn Sink,
) -> Result<Value, StepError> {
    let (l, _) = ledger::load(&ctx.kube).await?;
    refuse_unproven(&l, run_id)?;
    let in_service = (kms_at_plant["enabled"].as_bool() == Some(true))
        .then(|| kms_at_plant["keyId"].as_str().map(str::to_string))
        .flatten();
    let now = chrono::Utc::now();
    ledger::update(&ctx.kube, |l| l.put_in_service(in_service.as_deref(), now)).await?;
    canary::plant(&ctx.kube).await?;
    let agreement = canary::agree(&ctx.kube_config, &ctx.kube, AGREE_WITHIN, sink).await?;
    // The replicas must write with what the cluster reports before anything changes: if not, an
    // earlier change (by anyone) has not reached them yet, and what the proof would see after
    // this change could be that one arriving.
    if let Some(key) = &agreement.key
        && !kms_at_plant.is_null()
        && let Some(reported) = not_as_reported(key, &kms_at_plant, &l)
    {
        return Err(StepError::Refused(format!(
            "the cluster reports {reported} but every API server replica still writes with {key}: an earlier change has not reached the API servers yet. Nothing was changed; wait a few minutes (a replica learns a new key at its next KMS status call) and run again"
        )));
    }
    let canary = canary::snapshot(&ctx.kube_config).await?;
    Ok(
        json!({ "kmsAtPlant": kms_at_plant, "replicas": agreement.replicas, "agreement": agreement, "canary": canary }),
    )
}

/// What the cluster reports (`KMS off`, `key ID`) when the key every replica writes with is not
/// it (None: it is, as far as can be told). `kms`: its azureKeyVaultKms (`enabled`, `keyId`).
fn not_as_reported(
    key: &crate::k8s::probe::WriteKey,
    kms: &Value,
    l: &ledger::Ledger,
) -> Option<String> {
    let reported = (kms["enabled"].as_bool() == Some(true))
        .then(|| kms["keyId"].as_str().map(str::to_string))
        .flatten();
    let known: Vec<String> = l.entries.iter().map(|e| e.key_id.clone()).collect();
    (!crate::k8s::evidence::Expected::new(Some(reported.clone()), &known).accepts(key))
        .then(|| reported.map_or("KMS off".to_string(), |k| format!("key {k}")))
}

/// How long the replicas may take to agree on the canary when nothing is being changed.
const AGREE_WITHIN: Duration = Duration::from_secs(180);

#[expect(
    clippy::too_many_arguments,
    reason = "the barrier's run, evidence, lease flag and reporting"
)]
fn barrier<'a>(
    ctx: &'a Context,
    state: &RunState,
    params: &RunParams,
    need_flip: bool,
    known: &[String],
    run_id: &'a str,
    lease_lost: &'a AtomicBool,
    sink: &'a dyn Sink,
) -> Barrier<'a> {
    let to = state
        .desired
        .as_ref()
        .map(|d| d.enabled.then(|| d.key_id.clone()).flatten());
    let writes = match &to {
        Some(Some(k)) => format!("writes with {k}"),
        Some(None) => "writes without KMS".to_string(),
        None => "writes with one key".to_string(),
    };
    let (what, why) = if need_flip {
        (
            format!("proof that every API server replica {writes}"),
            "each replica switches at its own next KMS status call; Secrets rewritten by one that has not would stay under the old key".to_string(),
        )
    } else {
        (
            format!("every API server replica to be shown settled ({writes})"),
            "no Secret is rewritten while a replica may still write with another key".to_string(),
        )
    };
    Barrier {
        config: &ctx.kube_config,
        client: &ctx.kube,
        old: state.canary_key.clone(),
        need_flip,
        expected: crate::k8s::evidence::Expected::new(to, known),
        run_id,
        status_period: Duration::from_secs(params.kms_status_period_seconds),
        planted: state.canary.clone(),
        timeout: Duration::from_secs(params.barrier_timeout_seconds),
        poll: Duration::from_millis(params.barrier_poll_millis),
        lease_lost,
        sink,
        what,
        why,
    }
}

/// Every key id kmsctl knows this cluster to have used: a write with one of them (other than the
/// one asked for) is not the switch.
fn known_keys(l: &ledger::Ledger, state: &RunState) -> Vec<String> {
    l.entries
        .iter()
        .map(|e| e.key_id.clone())
        .chain(state.kms_at_plant.as_ref().and_then(|k| k.key_id.clone()))
        .chain(state.original_key_id.clone())
        .collect()
}

async fn record_proof(ctx: &Context, run_id: &str, proof: &Proof) -> Result<(), StepError> {
    let now = chrono::Utc::now();
    let evidence = proof.evidence.clone();
    ledger::update(&ctx.kube, |l| {
        if let Some(s) = l.switch.as_mut().filter(|s| s.run_id == run_id) {
            s.proven_at.get_or_insert(now);
            s.evidence = Some(evidence.clone());
        }
    })
    .await?;
    Ok(())
}

pub async fn prove_key_switch(
    ctx: &Context,
    state: &RunState,
    params: &RunParams,
    run_id: &str,
    lease_lost: &AtomicBool,
    sink: &dyn Sink,
) -> Result<Value, StepError> {
    let desired = state.desired.clone().ok_or_else(|| {
        StepError::Failed(anyhow::anyhow!(
            "prove-key-switch needs an update-kms step before it"
        ))
    })?;
    let to = desired.enabled.then(|| desired.key_id.clone()).flatten();
    let changed = state.key_switch_expected();
    let (l, _) = ledger::load(&ctx.kube).await?;
    let ours = l.switch.as_ref().is_some_and(|s| s.run_id == run_id);
    let proof = match l.switch.as_ref() {
        Some(s) if !changed && !ours && l.switch_proven_to(to.as_deref()) => Proof {
            evidence: "ledger".into(),
            replicas: state.replicas,
            flips: 0,
            waited_seconds: 0.0,
            detail: format!(
                "the key did not change, and the switch to it was proven by run {} ({})",
                s.run_id,
                s.evidence.as_deref().unwrap_or("proof")
            ),
            probes: 0,
            writes_with_key: None,
            replica_count_note: None,
        },
        _ => {
            let proof = barrier(
                ctx,
                state,
                params,
                changed,
                &known_keys(&l, state),
                run_id,
                lease_lost,
                sink,
            )
            .prove()
            .await?;
            record_proof(ctx, run_id, &proof).await?;
            proof
        }
    };
    let mut out = serde_json::to_value(proof).unwrap_or_default();
    out["writesWith"] = json!(to.as_deref().unwrap_or("no KMS"));
    Ok(out)
}

/// Re-encrypts every Secret, then verifies with a second pass over fresh connections that must
/// rewrite nothing. A pass that rewrites something shows a replica that still wrote with another
/// key: wait for the replicas to settle again and start over.
#[expect(
    clippy::too_many_arguments,
    reason = "the step needs the run, its journal, its reporting and its lease flag"
)]
pub async fn reencrypt_verified(
    ctx: &Context,
    state: &RunState,
    params: &RunParams,
    options: &reencrypt::Options,
    checkpoint: Checkpoint,
    journaled: &dyn Observer,
    sink: &dyn Sink,
    label: &str,
    lease_lost: &AtomicBool,
) -> Result<(Value, reencrypt::Summary), StepError> {
    const ROUNDS: usize = 5;
    let mut checkpoint = Some(checkpoint);
    let mut first: Option<reencrypt::Summary> = None;
    let pass = |kind, round: usize| PassLabel {
        kind,
        label: label.to_string(),
        round: round as u32,
    };
    for round in 1..=ROUNDS {
        let events = PassEvents::new(sink, pass(PassKind::Reencryption, round));
        // Only the first round continues from (and keeps) the journal's checkpoints: a later
        // round starts over, as it must rewrite every Secret again.
        let both = super::events::Both(journaled, &events);
        let observer: &dyn Observer = if round == 1 { &both } else { &events };
        let done = reencrypt::run(
            ctx.kube.clone(),
            options,
            checkpoint.take().unwrap_or_default(),
            observer,
        )
        .await?;
        events.finished(&done);
        if !done.ok() {
            return Err(StepError::Incomplete(Box::new(done)));
        }
        first.get_or_insert(done);
        let fresh = crate::k8s::client::fresh(&ctx.kube_config)?;
        let events = PassEvents::new(sink, pass(PassKind::Verification, round));
        let check = reencrypt::run(fresh, options, Checkpoint::default(), &events).await?;
        events.finished(&check);
        if !check.ok() {
            return Err(StepError::Incomplete(Box::new(check)));
        }
        if check.totals.rewritten == 0 {
            let summary = first.expect("a first pass");
            let mut out = serde_json::to_value(&summary).unwrap_or_default();
            out["verification"] =
                json!({ "rounds": round, "unchanged": check.totals.unchanged, "rewritten": 0 });
            // The key this pass ran under: the run's own change (None: KMS off). Without one
            // the ledger's current entry stands in, and its switch must still be proven.
            let under = match &state.desired {
                Some(d) => d.enabled.then(|| d.key_id.clone()).flatten(),
                None => ledger::load(&ctx.kube)
                    .await?
                    .0
                    .current()
                    .map(|e| e.key_id.clone()),
            };
            let marked = std::sync::atomic::AtomicBool::new(false);
            ledger::update(&ctx.kube, |l| {
                let m = l.reencrypted(under.as_deref(), chrono::Utc::now());
                marked.store(m, std::sync::atomic::Ordering::SeqCst);
            })
            .await?;
            let marked = marked.load(std::sync::atomic::Ordering::SeqCst);
            if !marked {
                tracing::warn!(
                    "the switch to the write key is not proven: older key versions stay marked as possibly in use"
                );
            }
            out["olderVersionsReencryptedAway"] = json!(marked);
            return Ok((out, summary));
        }
        tracing::warn!(
            rewritten = check.totals.rewritten,
            "the verification pass rewrote Secrets: an API server replica still wrote with another key"
        );
        sink.emit(&Event::Note {
            message: format!(
                "the verification pass rewrote {} Secrets: an API server replica still writes with another key; waiting for every replica to settle, then re-encrypting again",
                check.totals.rewritten
            ),
        });
        let (l, _) = ledger::load(&ctx.kube).await?;
        barrier(
            ctx,
            state,
            params,
            false,
            &known_keys(&l, state),
            // No switch of its own to record: only agreement is needed here.
            "",
            lease_lost,
            sink,
        )
        .prove()
        .await?;
    }
    Err(StepError::Failed(anyhow::anyhow!(
        "after {ROUNDS} rounds a verification pass still rewrote Secrets: the API server replicas keep disagreeing about the write key. Nothing was marked re-encrypted away; check the KMS plugin in AKS diagnostics and run `kmsctl resume`"
    )))
}

/// Before or after a standalone re-encryption: no switch kmsctl made may be unproven (else the
/// replicas may still write with the key being left), and every replica writes with one key.
pub async fn standalone_check(ctx: &Context, sink: &dyn Sink) -> Result<Agreement, StepError> {
    let (l, _) = ledger::load(&ctx.kube).await?;
    refuse_unproven(&l, "")?;
    canary::plant(&ctx.kube).await?;
    let agreement = canary::agree(&ctx.kube_config, &ctx.kube, AGREE_WITHIN, sink)
        .await
        .map_err(|e| match e {
            canary::BarrierError::NotCurrent => StepError::Refused(format!(
                "{e} Nothing was rewritten: re-encrypting while replicas disagree would write some Secrets back under the key being left"
            )),
            other => other.into(),
        })?;
    // With the cluster named, what the API servers agree on must be what it reports: else a
    // key change is still on its way to them, and rewriting now keeps Secrets on the old key.
    let Some(az) = &ctx.azure else {
        return Ok(agreement);
    };
    let kms = super::steps::kms_of(&az.arm.get(&az.cluster_path, &az.arm.api.aks).await?.body);
    match &agreement.key {
        Some(key) => {
            if let Some(reported) = not_as_reported(key, &kms, &l) {
                return Err(StepError::Refused(format!(
                    "the cluster reports {reported} but every API server replica still writes with {key}: a key change has not reached the API servers yet. Wait a few minutes (a replica learns a new key at its next KMS status call) and run `kmsctl reencrypt` again"
                )));
            }
        }
        // Agreement on a key nobody identified says nothing about which key: only a switch to
        // the reported key that kmsctl proved (the replicas never go back) lets it stand for it.
        None => {
            if let Some(reported) = unproven_report(&kms, &l) {
                return Err(StepError::Refused(format!(
                    "every API server replica writes with one key, but kmsctl could not tell which ({}), and the cluster reports {reported}, which no proof of kmsctl's shows the replicas using: a key change may not have reached them yet, and rewriting now could keep Secrets under the key being left. Nothing was rewritten. Let kmsctl read /metrics (`kmsctl rbac --kubernetes` grants it) so it can identify each replica's key, or wait a few minutes after a key change and run `kmsctl reencrypt` again",
                    agreement.detail
                )));
            }
        }
    }
    Ok(agreement)
}

/// What the cluster reports (`KMS off`, `key ID`) unless the ledger holds kmsctl's proof that
/// the replicas switched to exactly that (None: proven).
fn unproven_report(kms: &Value, l: &ledger::Ledger) -> Option<String> {
    let reported = (kms["enabled"].as_bool() == Some(true))
        .then(|| kms["keyId"].as_str().map(str::to_string))
        .flatten();
    let proven = l.switch.as_ref().is_some_and(|s| {
        s.proven_at.is_some()
            && match (&s.to, &reported) {
                (Some(a), Some(b)) => ledger::same_key_id(a, b),
                (None, None) => true,
                _ => false,
            }
    });
    (!proven).then(|| reported.map_or("KMS off".to_string(), |k| format!("key {k}")))
}
