//! `enable`, `disable`, `rotate`, `reencrypt`: each starts a run of a built-in playbook on the
//! one engine. Whatever ends a run (success, refusal, error, SIGINT), its lease is released.

use super::{Refusal, runs, setup};
use crate::checks;
use crate::cli::{
    ChangeArgs, EnableArgs, NetworkAccess, ReencryptArgs, ReencryptCommand, RotateArgs,
};
use crate::engine::context::Context;
use crate::engine::journal::{self, Journal, ReencryptParams, RunParams, Target};
use crate::engine::session::{self, Begun};
use crate::engine::{preflight, proof};
use crate::exit_codes;
use crate::k8s::ledger;
use crate::output::run::{render_findings, render_plan};
use crate::output::{Format, out, print_json};
use crate::playbook::{self, Procedure};
use std::io::IsTerminal;

fn reencrypt_params(r: &ReencryptArgs, namespaces: &[String]) -> ReencryptParams {
    ReencryptParams {
        namespaces: namespaces.to_vec(),
        batch_size: r.batch_size,
        concurrency: r.concurrency.max(1),
        max_qps: r.max_qps,
    }
}

pub fn params(c: &ChangeArgs) -> RunParams {
    RunParams {
        margin_days: c.margin_days,
        barrier_timeout_seconds: c.switch_timeout_seconds,
        kms_status_period_seconds: c.kms_status_period_seconds,
        barrier_poll_millis: c.barrier_poll_millis.max(50),
        reencrypt: reencrypt_params(&c.reencrypt, &c.namespaces),
        ..Default::default()
    }
}

/// Lifecycle commands change the key of the whole cluster: a partial re-encryption cannot be
/// the proof that lets the old key go.
pub fn refuse_scoped(c: &ChangeArgs) -> anyhow::Result<()> {
    if c.namespaces.is_empty() {
        return Ok(());
    }
    Err(Refusal(format!(
        "--namespace {}: enable, disable and rotate act on the whole cluster, since every Secret must move to the new key before the old one may be called re-encrypted away. Run without --namespace; to rewrite some namespaces only, use `kmsctl reencrypt --namespace NS` (which never counts as proof for the key ledger)",
        c.namespaces.join(",")
    ))
    .into())
}

pub async fn enable(a: EnableArgs, format: Format) -> anyhow::Result<i32> {
    refuse_scoped(&a.change)?;
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
    if let Some(id) = &a.vault_resource_id {
        playbook::params::set(&mut p.clone(), "vaultResourceId", id).map_err(Refusal)?;
    }
    p.vault_resource_id = a.vault_resource_id.clone();
    start(playbook::built_in("enable")?, &a.change, p, format).await
}

pub async fn disable(a: ChangeArgs, format: Format) -> anyhow::Result<i32> {
    refuse_scoped(&a)?;
    let p = params(&a);
    start(playbook::built_in("disable")?, &a, p, format).await
}

pub async fn rotate(a: RotateArgs, format: Format) -> anyhow::Result<i32> {
    refuse_scoped(&a.change)?;
    let mut p = params(&a.change);
    p.retire_old = a.retire_old;
    start(
        playbook::built_in(if a.twice { "rotate-twice" } else { "rotate" })?,
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
        margin_days: 0,
        barrier_timeout_seconds: 0,
        reencrypt: reencrypt_params(&a.reencrypt, &a.namespaces),
        ..Default::default()
    };
    let mut ctx =
        setup::context(&target, crate::azure::credential::AuthMode::Auto, "", false).await?;
    // Where the environment names the cluster, its reported KMS configuration is checked
    // against what the API servers write with; a kubeconfig alone is enough without it.
    // The journal keeps the name, so a resumed run compares as this one does.
    let named = named_cluster(&target);
    if let Some(named) = &named {
        ctx.azure = Some(named_azure(named)?);
    }
    let target = named.unwrap_or(target);
    let procedure = playbook::built_in("reencrypt")?;
    let run_id = journal::new_run_id("reencrypt");
    let prepare = async {
        // AKS's API server guard means the API server is struggling: go gently.
        let mut p = p;
        if crate::checks::facts::apiserver_guard(&ctx.kube).await {
            crate::say!(
                "AKS's API server guard (FlowSchema aks-managed-apiserver-guard) is in place: at most 4 requests in flight"
            );
            p.reencrypt.concurrency = p.reencrypt.concurrency.min(4);
        }
        session::create_journal(
            &ctx,
            &runs::state_dir(&a.state),
            &target,
            run_id.clone(),
            procedure,
            p,
            &[],
        )
        .await
    };
    match session::begin(&ctx, &run_id, true, prepare)
        .await
        .map_err(refusal)?
    {
        Begun::Ready((j, record), Some(lease)) => {
            runs::execute(&ctx, j, record, lease, format).await
        }
        Begun::Ready(_, None) => Ok(exit_codes::OK),
        Begun::Interrupted(s) => {
            crate::say!("\n{s}: stopped before any change; nothing was changed");
            Ok(runs::INTERRUPTED)
        }
    }
}

/// The Azure side of the cluster a re-encryption names. A cluster named but not readable is a
/// refusal: going on would skip the comparison of its KMS key with the API servers' own.
pub fn named_azure(named: &Target) -> anyhow::Result<crate::engine::context::Azure> {
    let api = std::env::var("KMSCTL_AKS_API_VERSION")
        .unwrap_or_else(|_| crate::cli::DEFAULT_AKS_API.to_string());
    setup::azure(named, crate::azure::credential::AuthMode::Auto, &api).map_err(|e| {
        Refusal(format!(
            "the environment names cluster {} (AZURE_SUBSCRIPTION_ID, KMSCTL_RESOURCE_GROUP, KMSCTL_CLUSTER), but it cannot be read: {e:#}. Nothing was rewritten: its KMS key is what the API servers must be shown writing with. Fix the Azure credential, or unset those variables to re-encrypt with whatever key the API servers agree on",
            named.cluster.as_deref().unwrap_or("?")
        ))
        .into()
    })
}

/// A run that could not begin (the lease is held, the cluster cannot be read) is a refusal.
pub fn refusal(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<session::BeginError>() {
        Ok(b) => Refusal(b.to_string()).into(),
        Err(e) => e,
    }
}

/// The target with the cluster AZURE_SUBSCRIPTION_ID, KMSCTL_RESOURCE_GROUP and KMSCTL_CLUSTER
/// name, when all three are set.
fn named_cluster(target: &Target) -> Option<Target> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    Some(Target {
        subscription: Some(var("AZURE_SUBSCRIPTION_ID")?),
        resource_group: Some(var("KMSCTL_RESOURCE_GROUP")?),
        cluster: Some(var("KMSCTL_CLUSTER")?),
        ..target.clone()
    })
}

/// How a run's preparation ended: a journal to execute, or an exit code (nothing changed).
enum Prepared {
    Run(Box<(Journal, journal::Record)>),
    Stop(i32),
    /// A fleet's cluster whose key ledger shows the rotation done already (why).
    Done(String),
}

/// What starting a run needs, however it was asked for: a command line, or a fleet (which
/// confirmed once for all its clusters and shows their runs itself).
pub struct Start {
    pub procedure: Procedure,
    pub target: Target,
    pub params: RunParams,
    pub auth: crate::azure::credential::AuthMode,
    pub aks_api: String,
    pub state_dir: std::path::PathBuf,
    pub run_id: String,
    pub dry_run: bool,
    pub yes: bool,
    /// Started by a fleet: the plan and findings are not printed, a refusal comes back as a
    /// `Refusal` error saying what was refused.
    pub unattended: bool,
    /// A fleet's rotation: the cluster is done when its key ledger shows this many proven
    /// versions put in service since this instant.
    pub done_since: Option<DoneSince>,
}

impl Start {
    pub fn from_args(procedure: Procedure, c: &ChangeArgs, params: RunParams) -> Start {
        Start {
            run_id: journal::new_run_id(&procedure.name),
            procedure,
            target: setup::target(&c.target),
            params,
            auth: c.target.auth,
            aks_api: c.target.aks_api_version.clone(),
            state_dir: runs::state_dir(&c.target.state),
            dry_run: c.dry_run,
            yes: c.yes,
            unattended: false,
            done_since: None,
        }
    }
}

/// A fleet's rotation asked for at `since`: done on a cluster when its key ledger shows
/// `versions` proven new versions other than `from` (the key it had when the fleet selected it),
/// and Azure reports the ledger's current one.
#[derive(Clone, Debug)]
pub struct DoneSince {
    pub since: chrono::DateTime<chrono::Utc>,
    pub versions: usize,
    pub from: Option<String>,
}

/// What Azure reports now agrees with the ledger's current key: KMS on with that key id, the
/// cluster's last operation succeeded. A ledger alone (writable by anyone who may update a
/// ConfigMap in kube-system, and blind to a key put back by hand) cannot call a cluster done.
async fn reported_as_ledger(ctx: &Context, l: &ledger::Ledger) -> anyhow::Result<bool> {
    let (Some(az), Some(current)) = (&ctx.azure, l.current()) else {
        return Ok(false);
    };
    let c = az.arm.get(&az.cluster_path, &az.arm.api.aks).await?.body;
    let kms = c
        .pointer("/properties/securityProfile/azureKeyVaultKms")
        .cloned()
        .unwrap_or_default();
    Ok(kms["enabled"] == true
        && c["properties"]["provisioningState"] == "Succeeded"
        && kms["keyId"]
            .as_str()
            .is_some_and(|k| ledger::same_key_id(k, &current.key_id)))
}

/// A run ready for the engine: its context, journal and lease.
pub struct Ready {
    pub ctx: Context,
    pub journal: Journal,
    pub record: journal::Record,
    pub lease: crate::k8s::lease::Lease,
}

/// How launching a run ended.
pub enum Launched {
    Ready(Box<Ready>),
    /// Ended before any change with this exit code (refused, not confirmed, a dry run).
    Stopped(i32),
    /// The key ledger shows the work done already (`Start::done_since`).
    Done(String),
    /// A signal arrived before any change.
    Interrupted,
}

/// Preflight, plan, confirmation, journal, then the engine.
pub async fn start(
    procedure: Procedure,
    c: &ChangeArgs,
    p: RunParams,
    format: Format,
) -> anyhow::Result<i32> {
    match launch(Start::from_args(procedure, c, p), format).await? {
        Launched::Ready(r) => {
            let r = *r;
            runs::execute(&r.ctx, r.journal, r.record, r.lease, format).await
        }
        Launched::Stopped(code) => Ok(code),
        Launched::Done(_) => Ok(exit_codes::OK),
        Launched::Interrupted => Ok(runs::INTERRUPTED),
    }
}

/// Everything before the engine: the journal (before anything is read), the context, the
/// lease, preflight, plan and confirmation.
pub async fn launch(s: Start, format: Format) -> anyhow::Result<Launched> {
    // Journaled before anything is read, so `resume` finds a run killed at any moment; the
    // dry run only looks and leaves no journal.
    let pending = match s.dry_run {
        true => None,
        false => Some(session::PendingRun::create(
            &s.state_dir,
            &s.target,
            s.run_id.clone(),
            s.procedure.clone(),
            s.params.clone(),
            s.yes,
        )?),
    };
    let ctx = setup::context(&s.target, s.auth, &s.aks_api, true).await?;
    // A real run takes the cluster's lease before it reads anything else.
    let prepare = prepare(&ctx, &s, pending, format);
    match session::begin(&ctx, &s.run_id, !s.dry_run, prepare)
        .await
        .map_err(refusal)?
    {
        Begun::Ready(Prepared::Run(run), Some(lease)) => {
            let (journal, record) = *run;
            Ok(Launched::Ready(Box::new(Ready {
                ctx,
                journal,
                record,
                lease,
            })))
        }
        Begun::Ready(prepared, lease) => {
            if let Some(l) = lease {
                l.release().await;
            }
            Ok(match prepared {
                Prepared::Stop(code) => Launched::Stopped(code),
                Prepared::Done(why) => Launched::Done(why),
                Prepared::Run(..) => Launched::Stopped(exit_codes::OK),
            })
        }
        Begun::Interrupted(sig) => {
            crate::say!("\n{sig}: stopped before any change; nothing was changed");
            Ok(Launched::Interrupted)
        }
    }
}

async fn prepare(
    ctx: &Context,
    s: &Start,
    mut pending: Option<session::PendingRun>,
    format: Format,
) -> anyhow::Result<Prepared> {
    let (procedure, p, run_id) = (&s.procedure, &s.params, &s.run_id);
    let l = ledger::load(&ctx.kube).await.map_err(|e| {
        Refusal(format!(
            "cannot read the key ledger kube-system/{}: {e}. kmsctl needs get, create and update on it (see README, Safety model)",
            ledger::NAME
        ))
    })?;
    if let Some(d) = &s.done_since
        && let Some(why) = ledger::done_since(&l.0, d.since, d.versions, d.from.as_deref())
    {
        if reported_as_ledger(ctx, &l.0).await? {
            return Ok(Prepared::Done(why));
        }
        tracing::info!(
            "the key ledger shows the rotation done, but Azure reports another KMS key or state: rotating"
        );
    }
    if let Err(e) = proof::refuse_unproven(&l.0, run_id) {
        return Err(Refusal(e.to_string()).into());
    }
    if let Some(why) = super::playbooks::nothing_to_do(ctx, procedure.intent, p).await? {
        match format {
            _ if s.unattended => crate::say!("nothing to do: {why}"),
            Format::Json => {
                print_json(&serde_json::json!({ "plan": procedure, "nothingToDo": why }))
            }
            Format::Text | Format::Prometheus | Format::Html => {
                out(&format!("nothing to do: {why}\n"))
            }
        }
        return Ok(Prepared::Stop(exit_codes::OK));
    }
    // Nothing has changed yet: a check that cannot be made (403 listing Secrets, a credential
    // Entra ID refuses) is a refusal, with the service's own message.
    let pre = preflight::run(ctx, procedure.intent, p, procedure.uses_data_plane())
        .await
        .map_err(|e| {
            Refusal(format!(
                "the preflight checks could not be completed, so nothing was changed: {e:#}"
            ))
        })?;
    let refused = checks::refused(&pre.findings);
    if s.unattended {
        if refused {
            let why: Vec<String> = pre
                .findings
                .iter()
                .filter(|f| f.level == checks::Level::Refuse)
                .map(|f| match &f.fix {
                    Some(fix) => format!("{}: {} (fix: {fix})", f.check, f.message),
                    None => format!("{}: {}", f.check, f.message),
                })
                .collect();
            return Err(Refusal(format!("preflight refused: {}", why.join("; "))).into());
        }
    } else {
        match format {
            Format::Json => {
                if s.dry_run || refused {
                    print_json(
                        &serde_json::json!({ "plan": procedure, "preflight": pre.findings, "refused": refused, "dryRun": s.dry_run }),
                    );
                }
            }
            Format::Text | Format::Prometheus | Format::Html => {
                let text = format!(
                    "{}{}",
                    render_plan(procedure, |f| p.flag(f)),
                    render_findings(&pre.findings)
                );
                if s.dry_run {
                    out(&text)
                } else {
                    crate::output::ask(&text)
                }
            }
        }
    }
    if refused {
        crate::say!("refused: nothing was changed. Fix what is marked REFUSE above and run again.");
        return Ok(Prepared::Stop(exit_codes::REFUSED));
    }
    if s.dry_run {
        return Ok(Prepared::Stop(exit_codes::OK));
    }
    if !s.yes
        && !confirm(&format!(
            "{}: {}.\nGo ahead on cluster {}?",
            procedure.name,
            procedure.description,
            s.target
                .cluster
                .as_deref()
                .unwrap_or("(the one the environment names)")
        ))
        .await?
    {
        crate::say!("{NOT_CONFIRMED}");
        return Ok(Prepared::Stop(exit_codes::REFUSED));
    }
    if !s.yes
        && let Some(p) = pending.as_mut()
    {
        p.confirm()?;
    }
    let seed = crate::engine::runner::preflight_entries(procedure, pre.output);
    let Some(pending) = pending else {
        return Ok(Prepared::Stop(exit_codes::OK));
    };
    let run = pending.commit(ctx, &seed).await?;
    Ok(Prepared::Run(Box::new(run)))
}

/// What an answer other than yes at the prompt says (exit 2, as any refusal before a change).
pub const NOT_CONFIRMED: &str =
    "not confirmed: nothing was changed (run again and answer y, or pass --yes)";

/// Asks; anything but yes is a refusal (exit 2) saying how to go ahead.
pub async fn confirm_or_refuse(question: &str) -> anyhow::Result<()> {
    if confirm(question).await? {
        Ok(())
    } else {
        Err(Refusal(NOT_CONFIRMED.into()).into())
    }
}

/// Asks on the terminal. The read runs off the async threads, so a Ctrl-C at the prompt is
/// still seen (and the lease given back).
pub async fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(Refusal("refusing to change the cluster without confirmation: stdin is not a terminal; pass --yes".into()).into());
    }
    crate::output::ask(&format!("{question} [y/N] "));
    let answer = tokio::task::spawn_blocking(|| {
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).map(|_| answer)
    })
    .await??;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
