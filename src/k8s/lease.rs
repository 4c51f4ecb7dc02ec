//! One kmsctl process per cluster: a coordination.k8s.io Lease in kube-system, renewed while the
//! process lives. Each process holds it under its own identity (run id, host, pid and a random
//! part), so a live lease is never taken, not even by another process for the same run; a killed
//! process leaves a lease that expires on its own, and `resume` takes it after that.

use super::KubeError;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams, Preconditions};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const NAME: &str = "kmsctl-run";
pub const NAMESPACE: &str = "kube-system";
const DURATION_SECONDS: i64 = 60;

/// coordination.k8s.io/v1 Leases, for untyped access.
pub fn resource() -> ApiResource {
    ApiResource {
        group: "coordination.k8s.io".into(),
        version: "v1".into(),
        api_version: "coordination.k8s.io/v1".into(),
        kind: "Lease".into(),
        plural: "leases".into(),
    }
}

fn now_micro() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "another kmsctl process ({holder}) holds this cluster's lease kube-system/{NAME}, renewed {age}s ago: a run is still going. Wait for it to finish; if that process died, the lease expires {DURATION_SECONDS}s after its last renewal, and `kmsctl resume` can then continue its run"
    )]
    Held { holder: String, age: i64 },
    #[error(transparent)]
    Api(#[from] KubeError),
}

pub struct Lease {
    api: Api<DynamicObject>,
    uid: Option<String>,
    /// The resourceVersion of this process's last write of the lease (acquire or renewal).
    version: Arc<std::sync::Mutex<Option<String>>>,
    renewer: tokio::task::JoinHandle<()>,
    /// Set when the lease was taken by another holder or could not be renewed before it expired:
    /// the run must stop, as another kmsctl may now act on the cluster.
    pub lost: Arc<AtomicBool>,
}

fn holder_of(obj: &DynamicObject) -> (String, Option<chrono::DateTime<chrono::Utc>>, i64) {
    let spec = &obj.data["spec"];
    let holder = spec["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let renewed = spec["renewTime"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    (
        holder,
        renewed,
        spec["leaseDurationSeconds"]
            .as_i64()
            .unwrap_or(DURATION_SECONDS),
    )
}

fn lease_object(holder: &str, rv: Option<String>) -> DynamicObject {
    let mut obj = DynamicObject::new(NAME, &resource()).within(NAMESPACE);
    obj.metadata.resource_version = rv;
    obj.metadata.labels = Some(
        [(
            "app.kubernetes.io/managed-by".to_string(),
            "kmsctl".to_string(),
        )]
        .into(),
    );
    let now = now_micro();
    obj.data = json!({ "spec": { "holderIdentity": holder, "leaseDurationSeconds": DURATION_SECONDS, "acquireTime": now, "renewTime": now } });
    obj
}

impl Lease {
    /// Takes the lease for `run_id`, or refuses while another live run holds it.
    pub async fn acquire(client: kube::Client, run_id: &str) -> Result<Lease, LeaseError> {
        let api: Api<DynamicObject> = Api::namespaced_with(client, NAMESPACE, &resource());
        let host = hostname();
        let holder = format!(
            "{run_id}@{host}/{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        // Creating first saves a round trip in the usual case, where no lease exists.
        let created = match api
            .create(&PostParams::default(), &lease_object(&holder, None))
            .await
            .map_err(KubeError::from)
        {
            Ok(l) => Some(l),
            Err(e) if e.code() == Some(409) => None,
            Err(e) => return Err(e.into()),
        };
        let taken = match created {
            Some(l) => l,
            None => {
                let existing = api.get(NAME).await.map_err(KubeError::from)?;
                let (current, renewed, duration) = holder_of(&existing);
                let age = renewed
                    .map(|r| (chrono::Utc::now() - r).num_seconds())
                    .unwrap_or(i64::MAX);
                // A live lease is never taken: not even one of the same run, which may be
                // executing in another process right now. The one exception is a holder of this
                // run on this host whose process is gone (a SIGKILL leaves its lease behind).
                if !current.is_empty() && age < duration && !dead_holder_of(&current, run_id) {
                    return Err(LeaseError::Held {
                        holder: current,
                        age,
                    });
                }
                api.replace(
                    NAME,
                    &PostParams::default(),
                    &lease_object(&holder, existing.metadata.resource_version.clone()),
                )
                .await
                .map_err(KubeError::from)?
            }
        };
        let lost = Arc::new(AtomicBool::new(false));
        let version = Arc::new(std::sync::Mutex::new(
            taken.metadata.resource_version.clone(),
        ));
        let renewer = tokio::spawn(renew_loop(
            api.clone(),
            holder,
            lost.clone(),
            version.clone(),
        ));
        Ok(Lease {
            api,
            uid: taken.metadata.uid,
            version,
            renewer,
            lost,
        })
    }

    /// Gives the lease up (deleting it: it holds nothing but the lock), only while this process
    /// still holds it: the uid and resourceVersion preconditions make sure a lease another
    /// process took meanwhile is left alone.
    pub async fn release(self) {
        self.renewer.abort();
        let version = self
            .version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // With the uid and the version this process last wrote as preconditions, a lease that
        // another process took meanwhile (a replace keeps the uid) answers 409 and stays.
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: self.uid.clone(),
                resource_version: version,
            }),
            ..Default::default()
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), self.api.delete(NAME, &dp)).await;
    }
}

/// This machine's name (not $HOSTNAME, which shells set without exporting it).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if rc == 0 && !h.is_empty() => h.to_string(),
        _ => std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown-host".into()),
    }
}

/// `holder` is `run@host/pid-random` of `run_id`, on this host, and no process has that pid.
fn dead_holder_of(holder: &str, run_id: &str) -> bool {
    let host = hostname();
    let Some((run, rest)) = holder.split_once('@') else {
        return false;
    };
    let Some((h, process)) = rest.split_once('/') else {
        return false;
    };
    let Some(pid) = process
        .split('-')
        .next()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return false;
    };
    if run != run_id || h != host || pid <= 0 || pid as u32 == std::process::id() {
        return false;
    }
    // SAFETY: signal 0 only asks whether the process exists; nothing is sent.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    !alive
}

async fn renew_loop(
    api: Api<DynamicObject>,
    holder: String,
    lost: Arc<AtomicBool>,
    version: Arc<std::sync::Mutex<Option<String>>>,
) {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs((DURATION_SECONDS / 4) as u64)).await;
        // Each call is bounded well inside the margin, so a hung request cannot outlive the lease.
        let call = Duration::from_secs((DURATION_SECONDS / 6) as u64);
        let read = match tokio::time::timeout(call, api.get_opt(NAME)).await {
            Ok(r) => r,
            Err(_) => Err(kube::Error::Service(
                "reading the run lease timed out".into(),
            )),
        };
        match read {
            Ok(Some(obj)) if holder_of(&obj).0 != holder => {
                tracing::warn!("the run lease was taken over by another holder");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Ok(Some(mut obj)) => {
                obj.data["spec"]["renewTime"] = json!(now_micro());
                match tokio::time::timeout(call, api.replace(NAME, &PostParams::default(), &obj))
                    .await
                {
                    Ok(Ok(written)) => {
                        renewed = Instant::now();
                        *version.lock().unwrap_or_else(|e| e.into_inner()) =
                            written.metadata.resource_version;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %KubeError::from(e), "renewing the run lease failed; will retry")
                    }
                    Err(_) => tracing::warn!("renewing the run lease timed out; will retry"),
                }
            }
            Ok(None) => {
                tracing::warn!("the run lease was deleted by someone else");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %KubeError::from(e), "reading the run lease failed; will retry")
            }
        }
        // Keep a margin: stop believing in the lease before others may take it.
        if renewed.elapsed() >= Duration::from_secs((DURATION_SECONDS * 3 / 4) as u64) {
            lost.store(true, Ordering::SeqCst);
            return;
        }
    }
}
