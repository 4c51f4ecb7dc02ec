//! What the engine reports while it runs (`Event`), where it stands (`Checkpoint`, rebuilt from
//! the journal on resume), and what it did (`Summary`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Per-object outcomes. `rewritten` is proven by a new resourceVersion; `unchanged` kept its
/// resourceVersion, so it was already under the current write key.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub rewritten: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub failed: u64,
    pub conflicts: u64,
    pub throttled: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.rewritten += o.rewritten;
        self.unchanged += o.unchanged;
        self.deleted += o.deleted;
        self.failed += o.failed;
        self.conflicts += o.conflicts;
        self.throttled += o.throttled;
    }
    pub fn processed(&self) -> u64 {
        self.rewritten + self.unchanged + self.deleted + self.failed
    }
}

/// Where one namespace stands.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceState {
    pub finished: bool,
    /// The continue token of the next page to do; None = from the start.
    pub next: Option<String>,
    pub counts: Counts,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    pub namespaces: BTreeMap<String, NamespaceState>,
}

impl Checkpoint {
    pub fn apply(&mut self, e: &Event) {
        match e {
            Event::PageDone {
                namespace,
                next,
                counts,
            } => {
                let ns = self.namespaces.entry(namespace.clone()).or_default();
                ns.next = next.clone();
                ns.counts.add(counts);
            }
            Event::NamespaceDone { namespace } => {
                self.namespaces
                    .entry(namespace.clone())
                    .or_default()
                    .finished = true;
            }
            _ => {}
        }
    }
}

/// Engine events; reporters render them and the journal keeps the checkpoint ones.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum Event {
    Started {
        total: Option<u64>,
        already_done: u64,
    },
    NamespaceStarted {
        namespace: String,
    },
    /// One page finished: the position to continue from, and what it did.
    PageDone {
        namespace: String,
        next: Option<String>,
        counts: Counts,
    },
    NamespaceDone {
        namespace: String,
    },
    /// A Secret that could not be rewritten (never its data).
    Failed {
        namespace: String,
        name: String,
        reason: String,
    },
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub totals: Counts,
    pub namespaces: BTreeMap<String, Counts>,
    pub failures: Vec<String>,
    pub seconds: f64,
    pub per_second: f64,
    pub requests: u64,
    pub throttled_share: f64,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.totals.failed == 0
    }
}
