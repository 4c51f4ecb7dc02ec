//! What a run tells the world as it goes: its steps, each wait (what for, why, how long so far,
//! until when, and what the service or the proof says), each pass over the Secrets (a
//! re-encryption or its verification, per rotation), and its end with a summary. The engine only
//! emits these to a `Sink`; the reporters in `output::events` render them (terminal, plain
//! lines, JSON lines). The JSON form (`--progress json`) is documented in the README: field
//! names here are a stable interface.

use crate::reencrypt::{self, Counts};
use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum Event {
    #[serde(rename_all = "camelCase")]
    RunStarted {
        run_id: String,
        procedure: String,
        description: String,
        steps: usize,
        /// The step a resumed run starts at (0-based); 0 for a new run.
        from_step: usize,
    },
    #[serde(rename_all = "camelCase")]
    StepStarted {
        index: usize,
        total: usize,
        step: String,
    },
    #[serde(rename_all = "camelCase")]
    StepFinished {
        index: usize,
        step: String,
        detail: String,
        seconds: f64,
    },
    #[serde(rename_all = "camelCase")]
    StepSkipped {
        index: usize,
        step: String,
        reason: String,
    },
    /// A fact worth a line of its own (a 412 re-plan, the API server guard slowing the run).
    #[serde(rename_all = "camelCase")]
    Note { message: String },
    #[serde(rename_all = "camelCase")]
    WaitStarted {
        wait: u32,
        kind: WaitKind,
        what: String,
        why: String,
        deadline_seconds: u64,
    },
    #[serde(rename_all = "camelCase")]
    WaitProgress {
        wait: u32,
        elapsed_seconds: u64,
        deadline_seconds: u64,
        /// What the service says (Azure's operation status, provisioningState).
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        /// API server replicas shown writing with the key asked for, of those known.
        #[serde(skip_serializing_if = "Option::is_none")]
        replicas: Option<Replicas>,
        /// What the proof has seen so far.
        #[serde(skip_serializing_if = "Option::is_none")]
        evidence: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    WaitFinished {
        wait: u32,
        elapsed_seconds: u64,
        ok: bool,
        outcome: String,
    },
    #[serde(rename_all = "camelCase")]
    PassStarted {
        pass: u32,
        kind: PassKind,
        /// Which part of the run: `rotation 1 of 2`, `KMS off`; empty with only one.
        label: String,
        /// The round of re-encryption and verification (a verification that rewrote Secrets
        /// starts another round).
        round: u32,
        total: Option<u64>,
        already_done: u64,
    },
    #[serde(rename_all = "camelCase")]
    PassProgress {
        pass: u32,
        done: u64,
        total: Option<u64>,
        elapsed_seconds: f64,
        namespaces_in_flight: Vec<String>,
    },
    /// A Secret that could not be rewritten (its name, never its data).
    #[serde(rename_all = "camelCase")]
    SecretFailed {
        pass: u32,
        namespace: String,
        name: String,
        reason: String,
    },
    #[serde(rename_all = "camelCase")]
    PassFinished {
        pass: u32,
        counts: Counts,
        seconds: f64,
    },
    #[serde(rename_all = "camelCase")]
    RunFinished {
        summary: Box<super::summary::Summary>,
    },
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum WaitKind {
    /// Azure's long-running operation on the cluster (minutes to tens of minutes on AKS).
    ClusterOperation,
    /// Another operation already running on the cluster.
    OtherOperation,
    /// The proof that every API server replica writes with the key asked for.
    KeySwitchProof,
    /// The replicas agreeing on the canary before anything changes.
    ReplicaAgreement,
}

#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum PassKind {
    Reencryption,
    Verification,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Replicas {
    pub switched: usize,
    pub of: usize,
}

/// Where the engine sends its events.
pub trait Sink: Send + Sync {
    fn emit(&self, event: &Event);
}

/// For callers that show nothing (the benches, a unit test).
pub struct Silent;

impl Sink for Silent {
    fn emit(&self, _: &Event) {}
}

/// Keeps every event (tests, and the summary of the passes).
#[derive(Default)]
pub struct Collect(pub Mutex<Vec<Event>>);

impl Sink for Collect {
    fn emit(&self, event: &Event) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.clone());
    }
}

impl Collect {
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Ids for waits and passes, unique within the process.
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

fn next_id() -> u32 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Progress of a wait more often than this is folded into the next report, unless what it says
/// changed (a poll every 10 ms while the proof meets replicas would flood a log).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// When a wait's progress was last reported, and what it said.
type Reported = (Instant, Option<String>, Option<Replicas>);

/// One wait, from start to finish. A wait dropped without `finish` (an error left through `?`)
/// reports that it ended without its outcome.
pub struct Wait<'a> {
    sink: &'a dyn Sink,
    id: u32,
    started: Instant,
    deadline: Duration,
    last: Mutex<Option<Reported>>,
    finished: std::sync::atomic::AtomicBool,
}

impl<'a> Wait<'a> {
    pub fn start(
        sink: &'a dyn Sink,
        kind: WaitKind,
        what: impl Into<String>,
        why: impl Into<String>,
        deadline: Duration,
    ) -> Wait<'a> {
        let id = next_id();
        sink.emit(&Event::WaitStarted {
            wait: id,
            kind,
            what: what.into(),
            why: why.into(),
            deadline_seconds: deadline.as_secs(),
        });
        Wait {
            sink,
            id,
            started: Instant::now(),
            deadline,
            last: Mutex::new(None),
            finished: false.into(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Reports where the wait stands; throttled unless status or replicas changed.
    pub fn progress(
        &self,
        status: Option<&str>,
        replicas: Option<Replicas>,
        evidence: Option<String>,
    ) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let status = status.map(str::to_string);
        let changed = last.as_ref().is_none_or(|(at, s, r)| {
            *s != status || *r != replicas || at.elapsed() >= PROGRESS_EVERY
        });
        if !changed {
            return;
        }
        *last = Some((Instant::now(), status.clone(), replicas));
        self.sink.emit(&Event::WaitProgress {
            wait: self.id,
            elapsed_seconds: self.started.elapsed().as_secs(),
            deadline_seconds: self.deadline.as_secs(),
            status,
            replicas,
            evidence,
        });
    }

    pub fn finish(&self, ok: bool, outcome: impl Into<String>) {
        if self.finished.swap(true, Ordering::SeqCst) {
            return;
        }
        self.sink.emit(&Event::WaitFinished {
            wait: self.id,
            elapsed_seconds: self.started.elapsed().as_secs(),
            ok,
            outcome: outcome.into(),
        });
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        self.finish(false, "stopped");
    }
}

/// What a pass over the Secrets is, for its events.
#[derive(Clone, Debug)]
pub struct PassLabel {
    pub kind: PassKind,
    pub label: String,
    pub round: u32,
}

/// Turns one pass's engine events into pass events (the re-encryption engine reports pages; the
/// reporters want done/total). Progress is sent at most every 250 ms.
pub struct PassEvents<'a> {
    sink: &'a dyn Sink,
    pub id: u32,
    label: PassLabel,
    state: Mutex<PassState>,
}

struct PassState {
    done: u64,
    total: Option<u64>,
    in_flight: std::collections::BTreeSet<String>,
    started: Instant,
    sent: Option<Instant>,
}

const PASS_PROGRESS_EVERY: Duration = Duration::from_millis(250);

impl<'a> PassEvents<'a> {
    pub fn new(sink: &'a dyn Sink, label: PassLabel) -> PassEvents<'a> {
        PassEvents {
            sink,
            id: next_id(),
            label,
            state: Mutex::new(PassState {
                done: 0,
                total: None,
                in_flight: Default::default(),
                started: Instant::now(),
                sent: None,
            }),
        }
    }

    /// The pass ended with these counts (also when it could not rewrite everything).
    pub fn finished(&self, summary: &reencrypt::Summary) {
        self.sink.emit(&Event::PassFinished {
            pass: self.id,
            counts: summary.totals,
            seconds: summary.seconds,
        });
    }

    fn progress(&self, s: &mut PassState, force: bool) {
        if !force && s.sent.is_some_and(|t| t.elapsed() < PASS_PROGRESS_EVERY) {
            return;
        }
        s.sent = Some(Instant::now());
        self.sink.emit(&Event::PassProgress {
            pass: self.id,
            done: s.done,
            total: s.total,
            elapsed_seconds: s.started.elapsed().as_secs_f64(),
            namespaces_in_flight: s.in_flight.iter().take(6).cloned().collect(),
        });
    }
}

impl reencrypt::Observer for PassEvents<'_> {
    fn event(&self, event: &reencrypt::Event) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            reencrypt::Event::Started {
                total,
                already_done,
            } => {
                s.total = *total;
                s.done = *already_done;
                s.started = Instant::now();
                self.sink.emit(&Event::PassStarted {
                    pass: self.id,
                    kind: self.label.kind,
                    label: self.label.label.clone(),
                    round: self.label.round,
                    total: *total,
                    already_done: *already_done,
                });
            }
            reencrypt::Event::NamespaceStarted { namespace } => {
                s.in_flight.insert(namespace.clone());
            }
            reencrypt::Event::PageDone { counts, .. } => {
                s.done += counts.processed();
                if s.total.is_some_and(|t| s.done > t) {
                    // Secrets created during the pass: the total grows with them.
                    s.total = Some(s.done);
                }
                self.progress(&mut s, false);
            }
            reencrypt::Event::NamespaceDone { namespace } => {
                s.in_flight.remove(namespace);
                let last = s.in_flight.is_empty();
                self.progress(&mut s, last);
            }
            reencrypt::Event::Failed {
                namespace,
                name,
                reason,
            } => self.sink.emit(&Event::SecretFailed {
                pass: self.id,
                namespace: namespace.clone(),
                name: name.clone(),
                reason: reason.clone(),
            }),
        }
    }
}

/// Sends every re-encryption event to two observers (the journal's checkpoints, the display).
pub struct Both<'a>(
    pub &'a dyn reencrypt::Observer,
    pub &'a dyn reencrypt::Observer,
);

impl reencrypt::Observer for Both<'_> {
    fn event(&self, event: &reencrypt::Event) {
        self.0.event(event);
        self.1.event(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_reports_start_throttled_progress_and_one_end_even_when_dropped() {
        let sink = Collect::default();
        {
            let w = Wait::start(
                &sink,
                WaitKind::ClusterOperation,
                "the cluster operation",
                "Azure applies it",
                Duration::from_secs(60),
            );
            w.progress(Some("InProgress"), None, None);
            w.progress(Some("InProgress"), None, None);
            w.progress(Some("Succeeded"), None, None);
        }
        let events = sink.events();
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| match e {
                Event::WaitStarted { .. } => "started",
                Event::WaitProgress { .. } => "progress",
                Event::WaitFinished { ok: false, .. } => "stopped",
                _ => "other",
            })
            .collect();
        // The repeated InProgress within a second is folded; the change to Succeeded is not.
        assert_eq!(kinds, ["started", "progress", "progress", "stopped"]);
    }

    #[test]
    fn pass_events_count_pages_and_grow_the_total() {
        let sink = Collect::default();
        let p = PassEvents::new(
            &sink,
            PassLabel {
                kind: PassKind::Verification,
                label: "rotation 2 of 2".into(),
                round: 1,
            },
        );
        use reencrypt::Observer;
        p.event(&reencrypt::Event::Started {
            total: Some(2),
            already_done: 0,
        });
        p.event(&reencrypt::Event::NamespaceStarted {
            namespace: "a".into(),
        });
        p.event(&reencrypt::Event::PageDone {
            namespace: "a".into(),
            next: None,
            counts: Counts {
                unchanged: 3,
                ..Default::default()
            },
        });
        let events = sink.events();
        assert!(matches!(
            &events[0],
            Event::PassStarted { kind: PassKind::Verification, label, .. } if label == "rotation 2 of 2"
        ));
        assert!(matches!(
            &events[1],
            Event::PassProgress {
                done: 3,
                total: Some(3),
                ..
            }
        ));
    }
}
