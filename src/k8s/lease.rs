//! One kmsctl run per cluster: a coordination.k8s.io Lease in kube-system, renewed while the run
//! lives. A run that was killed leaves a lease that expires on its own, and the same run may
//! take its own lease back on `resume`.

use super::KubeError;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams, Preconditions};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const NAME: &str = "kmsctl-run";
pub const NAMESPACE: &str = "kube-system";
const DURATION_SECONDS: i64 = 60;

fn resource() -> ApiResource {
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
        "another kmsctl run ({holder}) holds this cluster's lease kube-system/{NAME}, renewed {age}s ago; wait for it to finish, or if it died, for the lease to expire ({DURATION_SECONDS}s after its last renewal), or continue that run with `kmsctl resume`"
    )]
    Held { holder: String, age: i64 },
    #[error(transparent)]
    Api(#[from] KubeError),
}

pub struct Lease {
    api: Api<DynamicObject>,
    uid: Option<String>,
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
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        let holder = format!("{run_id}@{host}");
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
                let ours = current.split('@').next() == Some(run_id);
                if !ours && !current.is_empty() && age < duration {
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
        let renewer = tokio::spawn(renew_loop(api.clone(), holder, lost.clone()));
        Ok(Lease {
            api,
            uid: taken.metadata.uid,
            renewer,
            lost,
        })
    }

    /// Gives the lease up (deleting it: it holds nothing but the lock). The uid precondition
    /// makes sure only the lease this run took is deleted.
    pub async fn release(self) {
        self.renewer.abort();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: self.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        let _ = self.api.delete(NAME, &dp).await;
    }
}

async fn renew_loop(api: Api<DynamicObject>, holder: String, lost: Arc<AtomicBool>) {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs((DURATION_SECONDS / 4) as u64)).await;
        match api.get_opt(NAME).await {
            Ok(Some(obj)) if holder_of(&obj).0 != holder => {
                tracing::warn!("the run lease was taken over by another holder");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Ok(Some(mut obj)) => {
                obj.data["spec"]["renewTime"] = json!(now_micro());
                match api.replace(NAME, &PostParams::default(), &obj).await {
                    Ok(_) => renewed = Instant::now(),
                    Err(e) => {
                        tracing::warn!(error = %KubeError::from(e), "renewing the run lease failed; will retry")
                    }
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
