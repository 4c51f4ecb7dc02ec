//! The key-switch barrier. After AKS reports a new KMS configuration, each API server replica
//! keeps writing with its previous key until its own next status call to its plugin (about a
//! minute apart), and a replica that has not switched rewrites a Secret BACK to the old key on
//! an unchanged PUT. So kmsctl proves, before re-encrypting, that every replica writes with the
//! new key, from probes of a Secret it owns (the canary; see `probe` and `evidence`):
//! - before the change, the canary is touched and PUT back unchanged over fresh connections until
//!   every replica leaves it as it is: they all write with the key it is under;
//! - after the change, the canary was rewritten with another key, and every replica, each
//!   identified by its own /metrics on the probe's connection, then left it as it is (attributed
//!   evidence, no waiting on a period); or, where some replica cannot be identified, an unchanged
//!   PUT rewrote it and then no fresh-connection PUT did for a full upstream status period and
//!   margin (time-based evidence). A change to the canary that kmsctl did not make voids what
//!   was seen; a deleted canary is planted again and the proof starts over from it.

use super::KubeError;
use super::evidence::{self, Chain, Expected, ReplicaSet};
use super::probe::{self, Metrics, Outcome, Write, WriteKey};
use super::replicas;
use crate::engine::events::{Replicas, Sink, Wait, WaitKind};
use crate::retry::RetryPolicy;
use kube::api::{Api, DynamicObject, PostParams};
use serde::Serialize;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const NAME: &str = "kmsctl-canary";
const NAMESPACE: &str = "kube-system";

fn api(client: &kube::Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NAMESPACE, &crate::k8s::secrets())
}

/// Makes sure the canary exists.
pub async fn plant(client: &kube::Client) -> Result<(), KubeError> {
    let api = api(client);
    let retry = RetryPolicy::default();
    if retry
        .run("get the canary", || async {
            api.get_opt(NAME).await.map_err(KubeError::from)
        })
        .await?
        .is_some()
    {
        return Ok(());
    }
    let mut s = DynamicObject::new(NAME, &crate::k8s::secrets()).within(NAMESPACE);
    s.metadata.labels = Some(
        [(
            "app.kubernetes.io/managed-by".to_string(),
            "kmsctl".to_string(),
        )]
        .into(),
    );
    s.metadata.annotations = Some(
        [(
            "kmsctl.io/purpose".to_string(),
            "proves a KMS key switch before re-encryption".to_string(),
        )]
        .into(),
    );
    s.data = json!({ "type": "Opaque", "data": { "canary": "a21zY3RsIGNhbmFyeQ==" } });
    retry
        .run("create the canary", || async {
            match api.create(&PostParams::default(), &s).await {
                Ok(_) => Ok(()),
                // Created meanwhile (by another attempt or a resumed run): it exists.
                Err(e) => match KubeError::from(e) {
                    e if e.code() == Some(409) => Ok(()),
                    e => Err(e),
                },
            }
        })
        .await
}

#[derive(Debug, thiserror::Error)]
pub enum BarrierError {
    #[error(
        "the API server replicas still disagree about the write key after {waited}s ({detail}). Re-encrypting now could leave Secrets under the old key. Wait a few minutes and run `kmsctl resume` (--switch-timeout-seconds N waits longer); if it persists, check the KMS plugin in AKS diagnostics"
    )]
    Timeout { waited: u64, detail: String },
    #[error(
        "the canary Secret {NAMESPACE}/{NAME} kept being rewritten by unchanged PUTs: the API server replicas do not agree on the write key, so a key switch is still under way. Wait a few minutes (a replica learns a new key at its next KMS status call) and run again"
    )]
    NotCurrent,
    #[error(
        "/metrics kept failing ({failed} reads in a row answered an error or dropped the connection), so the API server replicas could not be told apart and their agreement on the canary not shown. Nothing was changed. Check the API servers' health (AKS diagnostics) and run again; kmsctl relies on time-based evidence alone only where /metrics is forbidden (401/403)"
    )]
    MetricsFailing { failed: usize },
    #[error(
        "lost the cluster's lease while waiting for the key switch; another kmsctl may act on this cluster. Run `kmsctl resume` once no other run is active"
    )]
    LeaseLost,
    #[error(transparent)]
    Api(#[from] KubeError),
}

/// How the replicas stand on the canary: that they all write with one key, and which.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Agreement {
    /// The key they all write with, where attributed (None: not attributed).
    pub key: Option<WriteKey>,
    /// Every replica was identified on /metrics and shown agreeing.
    pub attributed: bool,
    pub replicas: usize,
    pub leases: usize,
    pub probes: u32,
    pub detail: String,
}

/// Touches the canary, then probes it over fresh connections until every replica leaves it as
/// it is (attributed), or, where replicas cannot be identified, until enough fresh-connection
/// probes in a row left it as it is that a replica that disagrees would have been met. A write
/// in between (a replica with another key) starts over; `timeout` bounds it.
pub async fn agree(
    config: &kube::Config,
    client: &kube::Client,
    timeout: Duration,
    sink: &dyn Sink,
) -> Result<Agreement, BarrierError> {
    let start = Instant::now();
    let report = Wait::start(
        sink,
        WaitKind::ReplicaAgreement,
        "every API server replica to agree on the canary",
        "before anything changes, the replicas must be shown writing with one key (each probe is a PUT over a fresh connection)",
        timeout,
    );
    let mut chain = Chain::new(None, start);
    let mut set = ReplicaSet::default();
    set.leases_read(replicas::live_leases(client).await?);
    let mut ask_metrics = true;
    let mut write = Write::Touch;
    let mut rv: Option<String> = None;
    let mut leases_at = start;
    let mut touches = 0;
    let mut failed_reads = 0;
    loop {
        let size = if write == Write::Touch { 1 } else { WAVE };
        let wave = wave(config, rv.as_deref(), write, ask_metrics, size).await?;
        let now = Instant::now();
        ask_metrics &= wave.iter().all(|p| p.metrics != Metrics::Forbidden);
        for r in wave.iter().filter_map(|p| p.replica.as_ref()) {
            set.answered(r, now);
        }
        if chain.observe_wave(&wave, now).missing {
            plant(client).await?;
            rv = None;
            write = Write::Touch;
            continue;
        }
        if wave.iter().all(|p| p.outcome == Outcome::Retry) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        } else {
            rv = Chain::version_after(&wave, rv);
            write = Write::Unchanged;
        }
        let disagreed = wave
            .iter()
            .any(|p| p.outcome == Outcome::Written && !p.touched);
        if wave.iter().any(|p| p.outcome == Outcome::Written) {
            failed_reads = 0;
        }
        // A /metrics read that failed (not one that is forbidden) leaves that probe's replica
        // unknown: such a window can never stand for unattributed agreement.
        failed_reads += wave
            .iter()
            .filter(|p| p.metrics == Metrics::Failed && p.outcome != Outcome::Retry)
            .count();
        if now.duration_since(leases_at) >= Duration::from_secs(5) {
            set.leases_read(replicas::live_leases(client).await?);
            leases_at = now;
        }
        let members = set.members(now);
        report.progress(
            None,
            shown(&members, &chain, ask_metrics),
            Some(format!(
                "{} fresh-connection probes since the canary's last write",
                chain.probes
            )),
        );
        let attributed = ask_metrics && chain.attributed(&members, false, &Expected::default());
        touches += usize::from(wave.iter().any(|p| p.touched));
        if attributed && chain.current.is_none() && touches < MAX_TOUCHES {
            // Agreement, but on a key no attributed write has shown: a touch shows it.
            write = Write::Touch;
            continue;
        }
        let known = members.len().max(set.most_leases).max(1);
        let unattributed =
            chain.probes >= evidence::probes_needed(known) && (failed_reads == 0 || !ask_metrics);
        if attributed || unattributed {
            let key = chain.current.clone().filter(|_| attributed);
            report.finish(
                true,
                match &key {
                    Some(k) => format!("every replica writes with {k}"),
                    None => "the replicas agree".into(),
                },
            );
            return Ok(Agreement {
                detail: format!(
                    "{} over {} fresh connections{}",
                    match (&key, attributed) {
                        (Some(k), _) => format!("every one of {} replica(s) identified on its /metrics writes with {k}", members.len()),
                        (None, true) => format!("every one of {} replica(s) identified on its /metrics agrees", members.len()),
                        (None, false) => "no fresh-connection PUT rewrote the canary (the replicas could not be identified on /metrics)".into(),
                    },
                    chain.probes,
                    set.disagreement(now).map(|d| format!("; {d}")).unwrap_or_default()
                ),
                key,
                attributed,
                replicas: members.len(),
                leases: set.leases(),
                probes: chain.probes,
            });
        }
        if start.elapsed() >= timeout {
            return Err(if failed_reads > 0 {
                BarrierError::MetricsFailing {
                    failed: failed_reads,
                }
            } else {
                BarrierError::NotCurrent
            });
        }
        let reads_failed = wave
            .iter()
            .any(|p| p.metrics == Metrics::Failed && ask_metrics);
        // Replicas that disagree (a switch under way) or a /metrics that fails need time; a
        // wave never follows the last one at once (each probe is a PUT on the API server).
        let pause = if disagreed || reads_failed { 300 } else { 20 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Replicas identified on /metrics and shown agreeing since the canary's last write, of those
/// known (None where they cannot be identified).
fn shown(
    members: &std::collections::BTreeSet<String>,
    chain: &Chain,
    ask_metrics: bool,
) -> Option<Replicas> {
    (ask_metrics && !members.is_empty()).then(|| Replicas {
        switched: members.intersection(&chain.agree).count(),
        of: members.len(),
    })
}

/// Touches that may try to show a key before kmsctl stops trying (a replica that exports no
/// write counters never shows one, and each touch restarts the quiet time).
const MAX_TOUCHES: usize = 3;

/// Probes sent at once while kmsctl only needs to meet replicas (each on its own connection).
const WAVE: usize = 8;

/// `size` probes at once, all expecting the canary at version `rv`.
async fn wave(
    config: &kube::Config,
    rv: Option<&str>,
    write: Write,
    ask_metrics: bool,
    size: usize,
) -> Result<Vec<probe::Probe>, KubeError> {
    futures::future::join_all(
        (0..size.max(1)).map(|_| probe::probe(config, NAME, NAMESPACE, rv, write, ask_metrics)),
    )
    .await
    .into_iter()
    .collect()
}

/// The canary as planted: its resourceVersion and a hash of what it holds (data, labels,
/// annotations). A later rv with the same content means an unchanged PUT rewrote it, which only a
/// replica writing with another key does.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Planted {
    pub rv: String,
    pub content: String,
}

fn content_hash(o: &DynamicObject) -> String {
    use sha2::Digest;
    let doc = serde_json::json!({
        "data": o.data.get("data"),
        "labels": o.metadata.labels,
        "annotations": o.metadata.annotations,
    });
    let digest = sha2::Sha256::digest(doc.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The canary now, as `Planted` records it.
pub async fn snapshot(config: &kube::Config) -> Result<Planted, KubeError> {
    snapshot_opt(config).await?.ok_or_else(|| {
        KubeError::Other(format!(
            "the canary {NAMESPACE}/{NAME} disappeared right after it was planted"
        ))
    })
}

/// The canary now (None: it does not exist).
pub async fn snapshot_opt(config: &kube::Config) -> Result<Option<Planted>, KubeError> {
    let o = RetryPolicy::default()
        .run("read the canary", || async {
            api(&super::client::fresh(config)?)
                .get_opt(NAME)
                .await
                .map_err(KubeError::from)
        })
        .await?;
    Ok(o.map(|o| Planted {
        rv: o.metadata.resource_version.clone().unwrap_or_default(),
        content: content_hash(&o),
    }))
}

/// What the barrier needs to know.
pub struct Barrier<'a> {
    pub config: &'a kube::Config,
    pub client: &'a kube::Client,
    /// The key the canary was made current under before the change (None: not attributed).
    pub old: Option<WriteKey>,
    /// A write with another key must be seen (the write key changed); otherwise only agreement.
    pub need_flip: bool,
    /// The key the replicas must be shown writing with, where writes are attributed.
    pub expected: Expected,
    /// The run whose switch this proves: its own rewrites of the canary are recorded in the key
    /// ledger, so a resumed proof can tell them from someone else's.
    pub run_id: &'a str,
    /// How often a replica asks its plugin for the key id. Never shortens time-based evidence
    /// below upstream's 60 s; attributed evidence does not wait on it at all.
    pub status_period: Duration,
    /// The canary as planted before the change (None: an older journal without it).
    pub planted: Option<Planted>,
    pub timeout: Duration,
    pub poll: Duration,
    pub lease_lost: &'a AtomicBool,
    /// Where the wait is reported, and what it is for.
    pub sink: &'a dyn Sink,
    pub what: String,
    pub why: String,
}

/// What proved the switch, for the journal and the run's output.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Proof {
    /// `attributed` (every replica shown writing with the key), `time` (a flip, then quiet for a
    /// status period and margin), `settled` (no change expected: the replicas agree), `ledger`.
    pub evidence: String,
    pub replicas: Option<usize>,
    pub flips: u32,
    pub waited_seconds: f64,
    pub detail: String,
    /// Fresh-connection probes since the canary's last write.
    #[serde(default)]
    pub probes: u32,
    /// The key every replica writes with, where attributed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes_with_key: Option<WriteKey>,
    /// Identity Leases and replicas that answered on /metrics, when they disagree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_count_note: Option<String>,
}

impl Barrier<'_> {
    pub fn settle(&self) -> Duration {
        evidence::settle(self.status_period)
    }

    pub async fn prove(&self) -> Result<Proof, BarrierError> {
        let start = Instant::now();
        let settle = self.settle();
        let report = Wait::start(
            self.sink,
            WaitKind::KeySwitchProof,
            self.what.clone(),
            self.why.clone(),
            self.timeout,
        );
        let mut chain = Chain::new(self.old.clone(), start);
        let mut set = ReplicaSet::default();
        let mut rv: Option<String> = None;
        let mut write = Write::Unchanged;
        // A run resumed after a kill: the killed process may have seen (and caused) the flip
        // already. An unchanged canary at the version the ledger recorded for kmsctl's own
        // rewrite counts as the flip, and the quiet time starts now; any other change (someone
        // may have changed it and changed it back) counts as nothing. A touch (where /metrics
        // answers) then shows which key the replicas write with.
        if let Some(p) = &self.planted
            && let Some(now) = snapshot_opt(self.config).await?
            && now.rv != p.rv
        {
            let (l, _) = super::ledger::load(self.client).await?;
            let ours = l
                .switch
                .as_ref()
                .filter(|s| s.run_id == self.run_id)
                .and_then(|s| s.canary_flip_rv.as_deref())
                == Some(now.rv.as_str());
            if now.content == p.content && ours {
                tracing::info!(
                    "the canary was rewritten unchanged by kmsctl's own PUT before the interruption: a replica writes with another key"
                );
                chain.flips = 1;
            } else {
                tracing::warn!(
                    "the canary was changed since it was planted; what was seen before does not count"
                );
            }
            rv = Some(now.rv);
            write = Write::Touch;
        }
        let mut ask_metrics = true;
        let mut leases_at: Option<Instant> = None;
        let mut touches = 0;
        loop {
            if self.lease_lost.load(Ordering::SeqCst) {
                return Err(BarrierError::LeaseLost);
            }
            if leases_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                match replicas::live_leases(self.client).await {
                    Ok(l) => set.leases_read(l),
                    Err(e) => {
                        tracing::debug!(error = %e, "could not list the identity Leases this time")
                    }
                }
                leases_at = Some(Instant::now());
            }
            // Many at once only while a switch is being confirmed; one per poll while waiting
            // for it (each probe is a PUT on the API server).
            let size = if write == Write::Unchanged && self.confirming(&chain, ask_metrics) {
                WAVE
            } else {
                1
            };
            let wave = wave(self.config, rv.as_deref(), write, ask_metrics, size).await?;
            let now = Instant::now();
            ask_metrics &= wave.iter().all(|p| p.metrics != Metrics::Forbidden);
            for r in wave.iter().filter_map(|p| p.replica.as_ref()) {
                set.answered(r, now);
            }
            let seen = chain.observe_wave(&wave, now);
            if seen.missing {
                tracing::warn!(
                    "the canary {NAMESPACE}/{NAME} was deleted; planting it again and starting the proof over from it"
                );
                plant(self.client).await?;
                chain.void(now);
                rv = None;
                write = Write::Touch;
                continue;
            }
            if seen.voided {
                tracing::debug!(wave = ?wave.iter().map(|p| (&p.outcome, &p.rv, &p.replica)).collect::<Vec<_>>(), expected = ?rv, "voided");
                tracing::warn!(
                    "the canary {NAMESPACE}/{NAME} was changed by another writer: what was seen so far no longer counts; waiting again"
                );
            }
            if let Some(flip) = wave
                .iter()
                .find(|p| p.outcome == Outcome::Written && !p.touched)
                .and_then(|p| p.rv.clone())
            {
                self.record_flip(flip).await?;
            }
            if !wave.iter().all(|p| p.outcome == Outcome::Retry) {
                rv = Chain::version_after(&wave, rv);
                touches += usize::from(wave.iter().any(|p| p.touched));
                write = if chain.needs_touch(ask_metrics) && touches < MAX_TOUCHES {
                    // The canary flipped, but the write was not attributed (its /metrics read
                    // failed): a touch shows which key the replicas now write with.
                    Write::Touch
                } else {
                    Write::Unchanged
                };
            }
            let members = set.members(now);
            let note = set.disagreement(now);
            let known = members.len().max(set.most_leases).max(1);
            let needed = evidence::probes_needed(known);
            report.progress(
                None,
                shown(&members, &chain, ask_metrics),
                Some(self.so_far(&chain, now, settle, needed)),
            );
            if ask_metrics && chain.attributed(&members, self.need_flip, &self.expected) {
                let key = chain.current.clone();
                report.finish(
                    true,
                    format!(
                        "proven ({}: each replica identified on its /metrics)",
                        if self.need_flip {
                            "attributed"
                        } else {
                            "settled"
                        }
                    ),
                );
                return Ok(Proof {
                    evidence: if self.need_flip {
                        "attributed"
                    } else {
                        "settled"
                    }
                    .into(),
                    replicas: Some(members.len()),
                    flips: chain.flips,
                    waited_seconds: start.elapsed().as_secs_f64(),
                    detail: format!(
                        "{}each of the {} API server replica(s), identified on its own /metrics over the probe's connection, then left it as it was, over {} fresh connections{}",
                        match &key {
                            Some(k) if self.need_flip => format!(
                                "the canary was written with {k} (its write counter moved), "
                            ),
                            Some(k) => format!("the canary is under {k}; "),
                            None => String::new(),
                        },
                        members.len(),
                        chain.probes,
                        note.as_deref()
                            .map(|n| format!("; {n}"))
                            .unwrap_or_default()
                    ),
                    probes: chain.probes,
                    writes_with_key: key,
                    replica_count_note: note,
                });
            }
            if chain.timed(self.need_flip, settle, needed, now) {
                let quiet = now.duration_since(chain.last_write);
                report.finish(
                    true,
                    format!(
                        "proven ({}: quiet for {:.0}s over {} fresh connections)",
                        if chain.flips > 0 { "time" } else { "settled" },
                        quiet.as_secs_f64(),
                        chain.probes
                    ),
                );
                return Ok(Proof {
                    evidence: if chain.flips > 0 { "time" } else { "settled" }.into(),
                    replicas: Some(known),
                    flips: chain.flips,
                    waited_seconds: start.elapsed().as_secs_f64(),
                    detail: format!(
                        "{} then {} unchanged PUTs over fresh connections (enough to meet each of {known} replica(s), and one more nobody announced, with probability above 1 - 1e-6) left it as it was for {:.0}s (1.5 x the status period of {:.0}s, never less than upstream's 60 s, plus margin){}",
                        if chain.flips > 0 {
                            "kmsctl's own unchanged PUT rewrote the canary under another key,"
                        } else {
                            "no key change was expected, and"
                        },
                        chain.probes,
                        quiet.as_secs_f64(),
                        self.status_period
                            .max(evidence::UPSTREAM_STATUS_PERIOD)
                            .as_secs_f64(),
                        note.as_deref()
                            .map(|n| format!("; {n}"))
                            .unwrap_or_default()
                    ),
                    probes: chain.probes,
                    writes_with_key: None,
                    replica_count_note: note,
                });
            }
            if start.elapsed() >= self.timeout {
                report.finish(false, "timed out");
                return Err(BarrierError::Timeout {
                    waited: start.elapsed().as_secs(),
                    detail: if chain.flips == 0 {
                        "the canary was never rewritten with another key by kmsctl's unchanged PUT"
                            .into()
                    } else {
                        format!(
                            "the canary was last written {:.0}s ago; {} of {} replica(s) shown agreeing since",
                            now.duration_since(chain.last_write).as_secs_f64(),
                            members.intersection(&chain.agree).count(),
                            members.len()
                        )
                    },
                });
            }
            tokio::time::sleep(self.pace(&chain, ask_metrics, &members, settle, needed)).await;
        }
    }

    /// What the proof has seen so far, in a few words.
    fn so_far(&self, chain: &Chain, now: Instant, settle: Duration, needed: u32) -> String {
        if self.need_flip && chain.flips == 0 {
            return format!(
                "no replica has written the canary with another key yet ({} probes)",
                chain.probes
            );
        }
        format!(
            "{}quiet for {:.0}s (time-based evidence needs {:.0}s), {}/{needed} probes since the last write",
            if chain.flips > 0 {
                format!("canary rewritten with another key {}x; ", chain.flips)
            } else {
                String::new()
            },
            now.duration_since(chain.last_write).as_secs_f64(),
            settle.as_secs_f64(),
            chain.probes
        )
    }

    async fn record_flip(&self, rv: String) -> Result<(), KubeError> {
        let run_id = self.run_id.to_string();
        super::ledger::update(self.client, |l| {
            if let Some(s) = l.switch.as_mut().filter(|s| s.run_id == run_id) {
                s.canary_flip_rv = Some(rv.clone());
            }
        })
        .await
        .map(|_| ())
    }

    /// A write with another key was seen (or none is needed) and its key attributed: what is
    /// left is meeting every replica.
    fn confirming(&self, chain: &Chain, ask_metrics: bool) -> bool {
        (chain.flips > 0 || !self.need_flip) && ask_metrics && chain.current.is_some()
    }

    /// Between probes: quick while a switch is being confirmed (every replica to be met), often
    /// enough for the time-based count while waiting out the quiet time, `poll` otherwise.
    fn pace(
        &self,
        chain: &Chain,
        ask_metrics: bool,
        members: &std::collections::BTreeSet<String>,
        settle: Duration,
        needed: u32,
    ) -> Duration {
        let confirming = chain.flips > 0 || !self.need_flip;
        // Quick only while the last write was attributed: then every replica can be shown.
        let attributable = ask_metrics
            && chain.current.is_some()
            && !members.iter().any(|m| m.starts_with("lease:"));
        match (confirming, attributable) {
            (true, true) => Duration::from_millis(10),
            (true, false) => self.poll.min(settle.div_f64(f64::from(needed) * 1.5)),
            (false, _) => self.poll,
        }
    }
}
