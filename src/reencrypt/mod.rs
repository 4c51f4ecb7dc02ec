//! The re-encryption engine: every Secret PUT back unchanged, namespace by namespace, page by
//! page, a bounded number of requests in flight (adapting to 429s), a bounded number of pages in
//! memory, with per-object proof (resourceVersion) and checkpoints to resume from.
//!
//! Why this works: kube-apiserver writes an unchanged object to etcd only when its stored copy
//! is stale (encrypted with another key than the current write key), so a PUT of every Secret
//! moves each one to the current key, and a new resourceVersion proves it moved.

pub mod adapt;
pub mod progress;
mod rewrite;

pub use progress::{Checkpoint, Counts, Event, NamespaceState, Summary};

use crate::k8s::KubeError;
use crate::retry::RetryPolicy;
use adapt::Controller;
use futures::stream::{FuturesUnordered, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, ObjectList};
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
}

impl Default for Options {
    fn default() -> Self {
        Options { namespaces: Vec::new(), batch_size: 100, concurrency: 32, max_qps: None, namespaces_in_flight: 4 }
    }
}

/// Receives events as they happen: progress bars, the journal.
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event);
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the KMS plugin cannot encrypt or decrypt, so no Secret can be rewritten: {0}. Extend the key's expiry or enable it (az keyvault key set-attributes), or rotate to a valid key version, then run again")]
    KmsUnavailable(KubeError),
    #[error("listing {what}: {source}")]
    List { what: String, source: KubeError },
}

fn secret_resource() -> ApiResource {
    ApiResource { group: String::new(), version: "v1".into(), api_version: "v1".into(), kind: "Secret".into(), plural: "secrets".into() }
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
}

pub async fn run(client: kube::Client, options: &Options, checkpoint: Checkpoint, observer: &dyn Observer) -> Result<Summary, EngineError> {
    let started = Instant::now();
    let retry = RetryPolicy::default();
    let namespaces = select_namespaces(&client, options, &retry).await?;
    let total = count_secrets(&client, options, &retry).await;
    let already: u64 = checkpoint.namespaces.values().map(|n| n.counts.processed()).sum();
    observer.event(&Event::Started { total, already_done: already });
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
        if shared.fatal.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            break;
        }
    }
    drop(work);
    if let Some(f) = shared.fatal.lock().unwrap_or_else(|e| e.into_inner()).take() {
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
        failures: shared.failures.into_inner().unwrap_or_else(|e| e.into_inner()),
        seconds,
        requests,
        throttled_share: if requests == 0 { 0.0 } else { throttled as f64 / requests as f64 },
    })
}

async fn select_namespaces(client: &kube::Client, options: &Options, retry: &RetryPolicy) -> Result<Vec<String>, EngineError> {
    if !options.namespaces.is_empty() {
        let mut v = options.namespaces.clone();
        v.sort();
        v.dedup();
        return Ok(v);
    }
    let api: Api<Namespace> = Api::all(client.clone());
    let list = retry
        .run("list namespaces", || async { api.list(&ListParams::default()).await.map_err(KubeError::from) })
        .await
        .map_err(|source| EngineError::List { what: "namespaces".into(), source })?;
    Ok(list.items.into_iter().filter_map(|n| n.metadata.name).collect())
}

/// The number of Secrets to do, from `remainingItemCount` of one-item lists (None if unknown).
async fn count_secrets(client: &kube::Client, options: &Options, retry: &RetryPolicy) -> Option<u64> {
    let scopes: Vec<Api<DynamicObject>> = if options.namespaces.is_empty() {
        vec![Api::all_with(client.clone(), &secret_resource())]
    } else {
        options.namespaces.iter().map(|n| Api::namespaced_with(client.clone(), n, &secret_resource())).collect()
    };
    let mut total = 0;
    for api in scopes {
        let page = retry.run("count secrets", || async { api.list_metadata(&ListParams::default().limit(1)).await.map_err(KubeError::from) }).await.ok()?;
        total += page.items.len() as u64 + page.metadata.remaining_item_count.unwrap_or(0).max(0) as u64;
    }
    Some(total)
}

async fn list_page(shared: &Shared<'_>, api: &Api<DynamicObject>, ns: &str, token: Option<String>) -> Result<ObjectList<DynamicObject>, EngineError> {
    let mut token = token;
    let mut restarts = 0;
    loop {
        let mut lp = ListParams::default().limit(shared.options.batch_size.max(1));
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let result = shared.retry.run("list secrets", || async { api.list(&lp).await.map_err(KubeError::from) }).await;
        match result {
            Ok(page) => return Ok(page),
            // The continue token outlived the server's compaction window: go on from the position
            // the server hands back (or from the start of the namespace: unchanged Secrets are cheap no-ops).
            Err(KubeError::Api { code: 410, continue_token, .. }) if restarts < 3 => {
                restarts += 1;
                tracing::info!(namespace = ns, "continue token expired (410); listing again from the last checkpoint");
                token = continue_token;
            }
            Err(e) if e.is_kms_failure() => return Err(EngineError::KmsUnavailable(e)),
            Err(source) => return Err(EngineError::List { what: format!("secrets in {ns}"), source }),
        }
    }
}

async fn namespace(shared: &Shared<'_>, ns: &str, start: Option<String>) -> Result<Counts, EngineError> {
    shared.observer.event(&Event::NamespaceStarted { namespace: ns.to_string() });
    let api: Api<DynamicObject> = Api::namespaced_with(shared.client.clone(), ns, &secret_resource());
    let mut counts = Counts::default();
    let mut page = list_page(shared, &api, ns, start).await?;
    loop {
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        // Fetch the next page while this one is written: one page ahead, never more.
        let prefetch = next.clone().map(|t| {
            let api = api.clone();
            async move { list_page(shared, &api, ns, Some(t)).await }
        });
        let writes = write_page(shared, &api, ns, std::mem::take(&mut page.items));
        let (page_counts, following) = match prefetch {
            Some(p) => {
                let (c, f) = futures::join!(writes, p);
                (c, Some(f?))
            }
            None => (writes.await, None),
        };
        counts.add(&page_counts);
        if shared.fatal.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            return Ok(counts);
        }
        shared.observer.event(&Event::PageDone { namespace: ns.to_string(), next: next.clone(), counts: page_counts });
        match following {
            Some(f) => page = f,
            None => break,
        }
    }
    shared.observer.event(&Event::NamespaceDone { namespace: ns.to_string() });
    Ok(counts)
}

async fn write_page(shared: &Shared<'_>, api: &Api<DynamicObject>, ns: &str, items: Vec<DynamicObject>) -> Counts {
    let mut counts = Counts::default();
    let mut pending: FuturesUnordered<_> = items
        .into_iter()
        .map(|obj| async move {
            let name = obj.metadata.name.clone().unwrap_or_default();
            let (outcome, stats) = rewrite::rewrite(api, &shared.ctl, &shared.retry, obj).await;
            (name, outcome, stats)
        })
        .collect();
    while let Some((name, outcome, stats)) = pending.next().await {
        shared.requests.fetch_add(stats.requests, Ordering::Relaxed);
        shared.throttled.fetch_add(stats.throttled, Ordering::Relaxed);
        counts.conflicts += stats.conflicts;
        counts.throttled += stats.throttled;
        match outcome {
            Outcome::Rewritten => counts.rewritten += 1,
            Outcome::Unchanged => counts.unchanged += 1,
            Outcome::Deleted => counts.deleted += 1,
            Outcome::Failed(reason) => {
                counts.failed += 1;
                shared.observer.event(&Event::Failed { namespace: ns.to_string(), name: name.clone(), reason: reason.clone() });
                let mut f = shared.failures.lock().unwrap_or_else(|e| e.into_inner());
                if f.len() < 1000 {
                    f.push(format!("{ns}/{name}: {reason}"));
                }
            }
            Outcome::Fatal(e) => {
                shared.fatal.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                return counts;
            }
        }
    }
    counts
}
