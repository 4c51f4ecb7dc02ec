//! The key ledger: AKS shows only the key version in use, never the previous one it may still
//! need. kmsctl records every version it puts in service, with dates, in a ConfigMap it owns
//! (kube-system/kmsctl-key-ledger), so any machine can tell which versions must stay alive.

use super::KubeError;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub const NAME: &str = "kmsctl-key-ledger";
pub const NAMESPACE: &str = "kube-system";
const FIELD: &str = "ledger.json";

fn resource() -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        plural: "configmaps".into(),
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    pub key_id: String,
    pub in_service_since: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    pub out_of_service_since: Option<chrono::DateTime<chrono::Utc>>,
    /// Every Secret was re-encrypted away from this version (after it went out of service).
    #[serde(default)]
    pub reencrypted_away_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    pub retired_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The last change of write key kmsctl made, and whether the API servers were shown to follow it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Switch {
    /// The key version KMS now writes with (None: KMS off).
    pub to: Option<String>,
    pub run_id: String,
    pub requested_at: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    pub proven_at: Option<chrono::DateTime<chrono::Utc>>,
    /// What proved it (metrics, canary, settled).
    #[serde(default)]
    pub evidence: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Ledger {
    pub entries: Vec<LedgerEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<Switch>,
}

impl Ledger {
    /// `key_id` is now the write key (None: KMS off). Idempotent.
    pub fn put_in_service(&mut self, key_id: Option<&str>, at: chrono::DateTime<chrono::Utc>) {
        for e in self
            .entries
            .iter_mut()
            .filter(|e| e.out_of_service_since.is_none() && Some(e.key_id.as_str()) != key_id)
        {
            e.out_of_service_since = Some(at);
        }
        if let Some(k) = key_id
            && !self
                .entries
                .iter()
                .any(|e| e.key_id == k && e.out_of_service_since.is_none())
        {
            self.entries.push(LedgerEntry {
                key_id: k.to_string(),
                in_service_since: at,
                ..Default::default()
            });
        }
    }

    /// A full re-encryption finished: nothing is under an out-of-service version any more.
    pub fn reencrypted(&mut self, at: chrono::DateTime<chrono::Utc>) {
        for e in self
            .entries
            .iter_mut()
            .filter(|e| e.out_of_service_since.is_some() && e.reencrypted_away_at.is_none())
        {
            e.reencrypted_away_at = Some(at);
        }
    }

    pub fn retired(&mut self, key_id: &str, at: chrono::DateTime<chrono::Utc>) {
        for e in self.entries.iter_mut().filter(|e| e.key_id == key_id) {
            e.retired_at.get_or_insert(at);
        }
    }

    /// A switch kmsctl asked for and has not proven yet (by another run than `run_id`).
    pub fn unproven_switch(&self, run_id: &str) -> Option<&Switch> {
        self.switch
            .as_ref()
            .filter(|s| s.proven_at.is_none() && s.run_id != run_id)
    }

    /// Whether the API servers were shown to write with `to` (None: KMS off).
    pub fn switch_proven_to(&self, to: Option<&str>) -> bool {
        self.switch.as_ref().is_some_and(|s| {
            s.proven_at.is_some()
                && s.to.as_deref().map(str::to_ascii_lowercase) == to.map(str::to_ascii_lowercase)
        })
    }

    pub fn current(&self) -> Option<&LedgerEntry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.out_of_service_since.is_none())
    }

    /// Versions that must stay enabled and unexpired: the current one, the one before it (KMS
    /// keeps two keys in use), and any version Secrets may still be encrypted with.
    pub fn must_stay_alive(&self) -> Vec<&LedgerEntry> {
        let live: Vec<&LedgerEntry> = self
            .entries
            .iter()
            .filter(|e| e.retired_at.is_none())
            .collect();
        let previous = live
            .iter()
            .rev()
            .find(|e| e.out_of_service_since.is_some())
            .map(|e| e.key_id.clone());
        live.into_iter()
            .filter(|e| {
                e.out_of_service_since.is_none()
                    || e.reencrypted_away_at.is_none()
                    || Some(&e.key_id) == previous.as_ref()
            })
            .collect()
    }
}

pub async fn load(client: &kube::Client) -> Result<(Ledger, Option<String>), KubeError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource());
    let found = crate::retry::RetryPolicy::default()
        .run("read the key ledger", || async {
            api.get_opt(NAME).await.map_err(KubeError::from)
        })
        .await?;
    match found {
        None => Ok((Ledger::default(), None)),
        Some(cm) => {
            let text = cm.data["data"][FIELD].as_str().unwrap_or("{}");
            let ledger = serde_json::from_str(text).map_err(|e| {
                KubeError::Other(format!(
                    "the key ledger {NAMESPACE}/{NAME} is not valid: {e}"
                ))
            })?;
            Ok((ledger, cm.metadata.resource_version))
        }
    }
}

/// Reads, changes and writes the ledger; a conflict re-reads and applies the change again.
pub async fn update(
    client: &kube::Client,
    change: impl Fn(&mut Ledger),
) -> Result<Ledger, KubeError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource());
    for _ in 0..5 {
        let (mut ledger, rv) = load(client).await?;
        let before = ledger.clone();
        change(&mut ledger);
        if ledger == before && rv.is_some() {
            return Ok(ledger);
        }
        let mut cm = DynamicObject::new(NAME, &resource()).within(NAMESPACE);
        cm.metadata.labels = Some(
            [(
                "app.kubernetes.io/managed-by".to_string(),
                "kmsctl".to_string(),
            )]
            .into(),
        );
        cm.metadata.resource_version = rv.clone();
        cm.data =
            json!({ "data": { FIELD: serde_json::to_string_pretty(&ledger).unwrap_or_default() } });
        let result = if rv.is_some() {
            api.replace(NAME, &PostParams::default(), &cm).await
        } else {
            api.create(&PostParams::default(), &cm).await
        };
        match result.map_err(KubeError::from) {
            Ok(_) => return Ok(ledger),
            Err(e)
                if e.code() == Some(409)
                    || matches!(
                        crate::retry::Retryable::retry_hint(&e),
                        crate::retry::RetryHint::After(_)
                    ) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    Err(KubeError::Other(format!(
        "the key ledger {NAMESPACE}/{NAME} kept changing under kmsctl; try again"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(l: &Ledger) -> Vec<&str> {
        l.must_stay_alive()
            .iter()
            .map(|e| e.key_id.as_str())
            .collect()
    }

    #[test]
    fn an_unproven_switch_blocks_other_runs_only() {
        let t = chrono::Utc::now();
        let mut l = Ledger::default();
        assert!(l.unproven_switch("r1").is_none());
        l.switch = Some(Switch {
            to: Some("https://v.vault.azure.net/keys/k/2".into()),
            run_id: "r1".into(),
            requested_at: t,
            proven_at: None,
            evidence: None,
        });
        assert!(l.unproven_switch("r1").is_none(), "its own run may go on");
        assert!(l.unproven_switch("r2").is_some());
        assert!(!l.switch_proven_to(Some("https://v.vault.azure.net/keys/k/2")));
        l.switch.as_mut().unwrap().proven_at = Some(t);
        assert!(l.unproven_switch("r2").is_none());
        assert!(l.switch_proven_to(Some("HTTPS://V.vault.azure.net/keys/k/2")));
        assert!(
            !l.switch_proven_to(None),
            "a proof of a key is not one of KMS off"
        );
    }

    #[test]
    fn after_disable_the_last_key_stays_alive() {
        let t = chrono::Utc::now();
        let mut l = Ledger::default();
        l.put_in_service(Some("k1"), t);
        l.put_in_service(None, t);
        assert_eq!(alive(&l), ["k1"]);
        l.reencrypted(t);
        assert_eq!(alive(&l), ["k1"], "still the previous key");
    }

    #[test]
    fn two_rotations_free_the_oldest() {
        let t = chrono::Utc::now();
        let mut l = Ledger::default();
        l.put_in_service(Some("k1"), t);
        l.put_in_service(Some("k2"), t);
        l.reencrypted(t);
        assert_eq!(alive(&l), ["k1", "k2"]);
        l.put_in_service(Some("k3"), t);
        l.reencrypted(t);
        assert_eq!(alive(&l), ["k2", "k3"]);
        l.put_in_service(Some("k3"), t);
        assert_eq!(l.entries.len(), 3, "idempotent");
    }
}
