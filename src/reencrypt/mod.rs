//! The re-encryption engine: every Secret PUT back unchanged, namespace by namespace, page by
//! page, a bounded number of requests in flight (adapting to 429s), a bounded number of pages in
//! memory, with per-object proof (resourceVersion) and checkpoints to resume from.
//!
//! Why this works: kube-apiserver writes an unchanged object to etcd only when its stored copy
//! is stale (encrypted with another key than the current write key), so a PUT of every Secret
//! moves each one to the current key, and a new resourceVersion proves it moved.

pub mod adapt;
pub mod budget;
pub mod progress;
mod rewrite;
mod stream;

pub use progress::{Checkpoint, Counts, Event, NamespaceState, Summary};

use crate::k8s::KubeError;
use crate::retry::RetryPolicy;
use adapt::Controller;
use budget::Budget;
use futures::stream::{FuturesUnordered, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, ListParams};
use rewrite::Outcome;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct Options {
    /// Only these namespaces; all when empty.
    pub namespaces: Vec<String>,
    /// Secrets per list page.
    pub batch_size: u32,
    /// Most requests in flight.
    pub concurrency: usize,
    /// A ceiling on writes per second, whatever the adaptation finds.
    pub max_qps: Option<f64>,
    /// Namespaces worked on at the same time.
    pub namespaces_in_flight: usize,
    /// Set from outside (the run lost its lease): stop after the page in hand.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespaces: Vec::new(),
            batch_size: 50,
            concurrency: 64,
            max_qps: None,
            namespaces_in_flight: 8,
            stop: None,
        }
    }
}

/// Receives events as they happen: progress bars, the journal.
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event);
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "the KMS plugin cannot encrypt or decrypt, so no Secret can be rewritten: {0}. Extend the key's expiry or enable it (az keyvault key set-attributes), or rotate to a valid key version, then run again"
    )]
    KmsUnavailable(KubeError),
    #[error("listing {what}: {source}")]
    List { what: String, source: KubeError },
    #[error(
        "stopped: the run lost the cluster's lease (another kmsctl may act on this cluster). What was re-encrypted is journaled; run `kmsctl resume` once no other run is active"
    )]
    Stopped,
}

struct Shared<'a> {
    client: kube::Client,
    options: &'a Options,
    ctl: Controller,
    retry: RetryPolicy,
    observer: &'a dyn Observer,
    requests: AtomicU64,
    throttled: AtomicU64,
    failures: Mutex<Vec<String>>,
    fatal: Mutex<Option<KubeError>>,
    pages: Budget,
    lists: tokio::sync::Semaphore,
    large: tokio::sync::Semaphore,
}

pub async fn run(
    client: kube::Client,
    options: &Options,
    checkpoint: Checkpoint,
    observer: &dyn Observer,
) -> Result<Summary, EngineError> {
    let started = Instant::now();
    let retry = RetryPolicy::default();
    let (namespaces, total) = futures::join!(
        select_namespaces(&client, options, &retry),
        count_secrets(&client, options, &retry)
    );
    let namespaces = namespaces?;
    let already: u64 = checkpoint
        .namespaces
        .values()
        .map(|n| n.counts.processed())
        .sum();
    observer.event(&Event::Started {
        total,
        already_done: already,
    });
    let shared = Shared {
        client,
        options,
        ctl: Controller::new(options.concurrency, options.max_qps),
        retry,
        observer,
        requests: AtomicU64::new(0),
        throttled: AtomicU64::new(0),
        failures: Mutex::new(Vec::new()),
        fatal: Mutex::new(None),
        pages: Budget::new(budget::PAGES_MAX_BYTES),
        lists: tokio::sync::Semaphore::new(budget::LISTS_IN_FLIGHT),
        large: tokio::sync::Semaphore::new(budget::LARGE_IN_FLIGHT),
    };
    let mut per_ns: BTreeMap<String, Counts> = BTreeMap::new();
    let todo: Vec<(String, NamespaceState)> = namespaces
        .into_iter()
        .map(|n| {
            let st = checkpoint.namespaces.get(&n).cloned().unwrap_or_default();
            (n, st)
        })
        .collect();
    for (n, st) in &todo {
        per_ns.insert(n.clone(), st.counts);
    }
    let mut work = futures::stream::iter(todo.into_iter().filter(|(_, st)| !st.finished))
        .map(|(ns, st)| {
            let shared = &shared;
            async move {
                let r = namespace(shared, &ns, st.next.clone()).await;
                (ns, r)
            }
        })
        .buffer_unordered(options.namespaces_in_flight.max(1));
    let mut list_error = None;
    while let Some((ns, result)) = work.next().await {
        match result {
            Ok(c) => per_ns.entry(ns).or_default().add(&c),
            Err(e) => {
                list_error.get_or_insert(e);
            }
        }
        if shared
            .fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            break;
        }
    }
    drop(work);
    if options
        .stop
        .as_ref()
        .is_some_and(|s| s.load(Ordering::SeqCst))
    {
        return Err(EngineError::Stopped);
    }
    if let Some(f) = shared
        .fatal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        return Err(EngineError::KmsUnavailable(f));
    }
    if let Some(e) = list_error {
        return Err(e);
    }
    let mut totals = Counts::default();
    for c in per_ns.values() {
        totals.add(c);
    }
    let seconds = started.elapsed().as_secs_f64();
    let requests = shared.requests.load(Ordering::Relaxed);
    let throttled = shared.throttled.load(Ordering::Relaxed);
    Ok(Summary {
        per_second: (totals.rewritten + totals.unchanged) as f64 / seconds.max(1e-6),
        totals,
        namespaces: per_ns,
        failures: shared
            .failures
            .into_inner()
            .unwrap_or_else(|e| e.into_inner()),
        seconds,
        requests,
        throttled_share: if requests == 0 {
            0.0
        } else {
            throttled as f64 / requests as f64
        },
    })
}

async fn select_namespaces(
    client: &kube::Client,
    options: &Options,
    retry: &RetryPolicy,
) -> Result<Vec<String>, EngineError> {
    if !options.namespaces.is_empty() {
        let mut v = options.namespaces.clone();
        v.sort();
        v.dedup();
        return Ok(v);
    }
    let api: Api<Namespace> = Api::all(client.clone());
    let list = retry
        .run("list namespaces", || async {
            api.list(&ListParams::default())
                .await
                .map_err(KubeError::from)
        })
        .await
        .map_err(|source| EngineError::List {
            what: "namespaces".into(),
            source,
        })?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect())
}

/// The number of Secrets to do, from `remainingItemCount` of one-item lists (None if unknown).
async fn count_secrets(
    client: &kube::Client,
    options: &Options,
    retry: &RetryPolicy,
) -> Option<u64> {
    let scopes: Vec<Api<DynamicObject>> = if options.namespaces.is_empty() {
        vec![Api::all_with(client.clone(), &crate::k8s::secrets())]
    } else {
        options
            .namespaces
            .iter()
            .map(|n| Api::namespaced_with(client.clone(), n, &crate::k8s::secrets()))
            .collect()
    };
    let mut total = 0;
    for api in scopes {
        let page = retry
            .run("count secrets", || async {
                api.list_metadata(&ListParams::default().limit(1))
                    .await
                    .map_err(KubeError::from)
            })
            .await
            .ok()?;
        total +=
            page.items.len() as u64 + page.metadata.remaining_item_count.unwrap_or(0).max(0) as u64;
    }
    Some(total)
}

/// A page, with the bytes it holds reserved in the budget until its writes are done.
struct Page {
    items: Vec<rewrite::Listed>,
    next: Option<String>,
    bytes: u64,
}

/// A list answer with its items left as the JSON the server sent.
#[derive(serde::Deserialize)]
struct RawList {
    #[serde(default)]
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta,
    #[serde(default)]
    items: Vec<Box<serde_json::value::RawValue>>,
}

async fn fetch(
    shared: &Shared<'_>,
    ns: &str,
    limit: u32,
    token: Option<&str>,
) -> Result<(RawList, u64), KubeError> {
    let mut lp = ListParams::default().limit(limit);
    if let Some(t) = token {
        lp = lp.continue_token(t);
    }
    let request = kube::core::Request::new(format!("/api/v1/namespaces/{ns}/secrets"))
        .list(&lp)
        .map_err(|e| KubeError::Other(e.to_string()))?;
    let _slot = shared
        .lists
        .acquire()
        .await
        .map_err(|e| KubeError::Other(e.to_string()))?;
    stream::get_json(&shared.client, request).await
}

async fn list_page(
    shared: &Shared<'_>,
    ns: &str,
    token: Option<String>,
    bytes_per_secret: Option<u64>,
) -> Result<Page, EngineError> {
    // A namespace's first page is small and reserved at the largest a Secret can be: nothing
    // is known yet of its Secrets' size (a namespace of Helm releases weighs a MiB each).
    let (limit, expected) = match bytes_per_secret {
        None => {
            let limit = budget::FIRST_PAGE_LIMIT.min(shared.options.batch_size.max(1));
            (limit, limit as u64 * budget::SECRET_MAX_BYTES)
        }
        Some(b) => {
            let limit = budget::page_limit(shared.options.batch_size, Some(b));
            (limit, limit as u64 * b)
        }
    };
    shared.pages.reserve(expected).await;
    let mut token = token;
    let mut restarts = 0;
    loop {
        let result = shared
            .retry
            .run("list secrets", || {
                fetch(shared, ns, limit, token.as_deref())
            })
            .await;
        match result {
            Ok((list, bytes)) => {
                shared.pages.adjust(expected, bytes);
                let next = list.metadata.continue_.clone().filter(|c| !c.is_empty());
                let items: Result<Vec<_>, String> = list
                    .items
                    .into_iter()
                    .map(rewrite::Listed::from_raw)
                    .collect();
                let items = match items {
                    Ok(i) => i,
                    Err(e) => {
                        shared.pages.release(bytes);
                        return Err(EngineError::List {
                            what: format!("secrets in {ns}"),
                            source: KubeError::Other(e),
                        });
                    }
                };
                return Ok(Page { items, next, bytes });
            }
            // The continue token outlived the server's compaction window: go on from the position
            // the server hands back (or from the start of the namespace: unchanged Secrets are cheap no-ops).
            Err(KubeError::Api {
                code: 410,
                continue_token,
                ..
            }) if restarts < 3 => {
                restarts += 1;
                tracing::info!(
                    namespace = ns,
                    "continue token expired (410); listing again from the last checkpoint"
                );
                token = continue_token;
            }
            Err(e) => {
                shared.pages.release(expected);
                return Err(if e.is_kms_failure() {
                    EngineError::KmsUnavailable(e)
                } else {
                    EngineError::List {
                        what: format!("secrets in {ns}"),
                        source: e,
                    }
                });
            }
        }
    }
}

async fn namespace(
    shared: &Shared<'_>,
    ns: &str,
    start: Option<String>,
) -> Result<Counts, EngineError> {
    shared.observer.event(&Event::NamespaceStarted {
        namespace: ns.to_string(),
    });
    let mut counts = Counts::default();
    let mut page_start = start.clone();
    // Once a page had a Secret that failed, the checkpoint stays at that page's start, so a
    // resumed run does it again (its other Secrets are then cheap no-ops).
    let mut redo_from: Option<Option<String>> = None;
    let mut page = list_page(shared, ns, start, None).await?;
    loop {
        let per_secret = (!page.items.is_empty()).then(|| page.bytes / page.items.len() as u64);
        let next = page.next.clone();
        // Fetch the next page while this one is written: one page ahead, within the byte budget.
        let prefetch = next
            .clone()
            .map(|t| list_page(shared, ns, Some(t), per_secret));
        let (items, bytes) = (std::mem::take(&mut page.items), page.bytes);
        // The page's bytes go back to the budget as soon as its writes are done, so the prefetch
        // waiting for room is never waiting on itself.
        let writes = async {
            let c = write_page(shared, ns, items).await;
            shared.pages.release(bytes);
            c
        };
        let (page_counts, following) = match prefetch {
            Some(p) => {
                let (c, f) = futures::join!(writes, p);
                (c, Some(f))
            }
            None => (writes.await, None),
        };
        counts.add(&page_counts);
        let stopped = shared
            .options
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::SeqCst));
        if stopped
            || shared
                .fatal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
        {
            if let Some(Ok(f)) = following {
                shared.pages.release(f.bytes);
            }
            return Ok(counts);
        }
        if page_counts.failed > 0 && redo_from.is_none() {
            redo_from = Some(page_start.clone());
        }
        let (checkpoint, journaled) = match &redo_from {
            Some(from) => (from.clone(), Counts::default()),
            None => (next.clone(), page_counts),
        };
        shared.observer.event(&Event::PageDone {
            namespace: ns.to_string(),
            next: checkpoint,
            counts: journaled,
        });
        match following {
            Some(f) => {
                page = f?;
                page_start = next;
            }
            None => break,
        }
    }
    if redo_from.is_none() {
        shared.observer.event(&Event::NamespaceDone {
            namespace: ns.to_string(),
        });
    }
    Ok(counts)
}

async fn write_page(shared: &Shared<'_>, ns: &str, items: Vec<rewrite::Listed>) -> Counts {
    let mut counts = Counts::default();
    let collection = kube::core::Request::new(format!("/api/v1/namespaces/{ns}/secrets"));
    let target = rewrite::Target {
        client: &shared.client,
        collection: &collection,
        large: &shared.large,
    };
    let target = &target;
    let mut pending: FuturesUnordered<_> = items
        .into_iter()
        .map(|secret| async move {
            let name = secret.name.clone();
            let (outcome, stats) =
                rewrite::rewrite(target, &shared.ctl, &shared.retry, secret).await;
            (name, outcome, stats)
        })
        .collect();
    while let Some((name, outcome, stats)) = pending.next().await {
        shared.requests.fetch_add(stats.requests, Ordering::Relaxed);
        shared
            .throttled
            .fetch_add(stats.throttled, Ordering::Relaxed);
        counts.conflicts += stats.conflicts;
        counts.throttled += stats.throttled;
        match outcome {
            Outcome::Rewritten => counts.rewritten += 1,
            Outcome::Unchanged => counts.unchanged += 1,
            Outcome::Deleted => counts.deleted += 1,
            Outcome::Failed(reason) => {
                counts.failed += 1;
                shared.observer.event(&Event::Failed {
                    namespace: ns.to_string(),
                    name: name.clone(),
                    reason: reason.clone(),
                });
                let mut f = shared.failures.lock().unwrap_or_else(|e| e.into_inner());
                if f.len() < 1000 {
                    f.push(format!("{ns}/{name}: {reason}"));
                }
            }
            Outcome::Fatal(e) => {
                shared
                    .fatal
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(e);
                return counts;
            }
        }
    }
    counts
}
