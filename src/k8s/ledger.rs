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
    /// What proved it (attributed, time, settled, ledger).
    #[serde(default)]
    pub evidence: Option<String>,
    /// The canary's resourceVersion after kmsctl's own unchanged PUT last rewrote it while
    /// proving this switch: a resumed proof trusts a rewrite it did not see only at this version
    /// (anyone who can write the canary could fake one with a change and its undo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_flip_rv: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Ledger {
    pub entries: Vec<LedgerEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<Switch>,
}

/// A key id as Key Vault compares it: the scheme, the vault host, the key name and the version
/// (hex) are all case-insensitive, and a trailing slash names the same key. Every comparison of
/// key ids in the ledger goes through this, so `https://V.vault.azure.net/keys/K/ABC` and
/// `https://v.vault.azure.net/keys/k/abc` are one entry, not two of which one is never retired.
pub fn normalised_key_id(key_id: &str) -> String {
    key_id.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Whether two key ids name the same key version (see `normalised_key_id`).
pub fn same_key_id(a: &str, b: &str) -> bool {
    normalised_key_id(a) == normalised_key_id(b)
}

/// The same for optional write keys (None: KMS off, which only equals KMS off).
fn same_write_key(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same_key_id(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl Ledger {
    /// One entry per key version: a ledger written by an older kmsctl may hold two for one
    /// version (spelled differently, or disabled and enabled again). The later one is what
    /// happened last, so it is kept, in its place.
    fn merge_duplicates(&mut self) {
        let mut seen = std::collections::HashSet::new();
        let mut kept: Vec<LedgerEntry> = Vec::with_capacity(self.entries.len());
        for e in self.entries.drain(..).rev() {
            if seen.insert(normalised_key_id(&e.key_id)) {
                kept.push(e);
            }
        }
        kept.reverse();
        self.entries = kept;
    }

    /// The entry of `key_id`, however its id is spelled.
    pub fn entry(&self, key_id: &str) -> Option<&LedgerEntry> {
        self.entries.iter().find(|e| same_key_id(&e.key_id, key_id))
    }

    /// `key_id` is now the write key (None: KMS off). Idempotent. A version that was in service
    /// before (disable then enable, or a rotation back) gets its entry reopened and moved last,
    /// since entries stay in the order they went into service: Secrets are written with it
    /// again, so what the entry said about it being out of service or re-encrypted away no
    /// longer holds.
    pub fn put_in_service(&mut self, key_id: Option<&str>, at: chrono::DateTime<chrono::Utc>) {
        for e in self.entries.iter_mut().filter(|e| {
            e.out_of_service_since.is_none() && !same_write_key(Some(&e.key_id), key_id)
        }) {
            e.out_of_service_since = Some(at);
        }
        let Some(k) = key_id else {
            return;
        };
        match self.entries.iter().position(|e| same_key_id(&e.key_id, k)) {
            Some(i) if self.entries[i].out_of_service_since.is_none() => {}
            Some(i) => {
                let mut e = self.entries.remove(i);
                e.in_service_since = at;
                e.out_of_service_since = None;
                e.reencrypted_away_at = None;
                e.retired_at = None;
                self.entries.push(e);
            }
            None => self.entries.push(LedgerEntry {
                key_id: k.to_string(),
                in_service_since: at,
                ..Default::default()
            }),
        }
    }

    /// A whole-cluster re-encryption and its verification pass ran while `under` was the write
    /// key (None: KMS off). Only when the API servers were shown to write with `under` (the
    /// switch to it is proven, or kmsctl never recorded a switch and the ledger's current entry
    /// is `under`) does that show nothing is left under an out-of-service version: a pass
    /// through replicas that still wrote with the old key rewrites nothing and proves nothing.
    /// Returns whether the older versions were marked re-encrypted away.
    pub fn reencrypted(&mut self, under: Option<&str>, at: chrono::DateTime<chrono::Utc>) -> bool {
        let current = self.current().map(|e| e.key_id.as_str());
        let proven = match &self.switch {
            Some(_) => self.switch_proven_to(under),
            None => true,
        };
        if !proven || !same_write_key(current, under) {
            return false;
        }
        for e in self
            .entries
            .iter_mut()
            .filter(|e| e.out_of_service_since.is_some() && e.reencrypted_away_at.is_none())
        {
            e.reencrypted_away_at = Some(at);
        }
        true
    }

    pub fn retired(&mut self, key_id: &str, at: chrono::DateTime<chrono::Utc>) {
        for e in self
            .entries
            .iter_mut()
            .filter(|e| same_key_id(&e.key_id, key_id))
        {
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
        self.switch
            .as_ref()
            .is_some_and(|s| s.proven_at.is_some() && same_write_key(s.to.as_deref(), to))
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
            .map(|e| e.key_id.as_str());
        live.into_iter()
            .filter(|e| {
                e.out_of_service_since.is_none()
                    || e.reencrypted_away_at.is_none()
                    || previous.is_some_and(|p| same_key_id(&e.key_id, p))
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
            let mut ledger: Ledger = serde_json::from_str(text).map_err(|e| {
                KubeError::Other(format!(
                    "the key ledger {NAMESPACE}/{NAME} is not valid: {e}"
                ))
            })?;
            ledger.merge_duplicates();
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

/// Whether a rotation asked for at `since` is done on this cluster, as its ledger shows it
/// (why, when it is): at least `versions` key versions other than `from` (the one in use when
/// the rotation was asked for) went into service after `since`, the API servers were shown to
/// write with the one in use, and every version that went out of service since was
/// re-encrypted away. A fleet's rerun skips such a cluster once Azure reports that key too.
/// `from` is not counted however it is dated: a run's first look at a cluster enters the key it
/// finds as in service from then on, which is no rotation.
pub fn done_since(
    l: &Ledger,
    since: chrono::DateTime<chrono::Utc>,
    versions: usize,
    from: Option<&str>,
) -> Option<String> {
    let current = l.current()?;
    let new = l
        .entries
        .iter()
        .filter(|e| e.in_service_since > since)
        .filter(|e| from.is_none_or(|f| !same_key_id(&e.key_id, f)))
        .count();
    let left = l.entries.iter().any(|e| {
        e.out_of_service_since.is_some_and(|t| t > since) && e.reencrypted_away_at.is_none()
    });
    (new >= versions.max(1) && l.switch_proven_to(Some(&current.key_id)) && !left).then(|| {
        format!(
            "its key ledger shows {} in service since {} (switch proven, Secrets re-encrypted)",
            current.key_id,
            current.in_service_since.to_rfc3339()
        )
    })
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
            canary_flip_rv: None,
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
        assert!(l.reencrypted(None, t));
        assert_eq!(alive(&l), ["k1"], "still the previous key");
    }

    #[test]
    fn two_rotations_free_the_oldest() {
        let t = chrono::Utc::now();
        let mut l = Ledger::default();
        l.put_in_service(Some("k1"), t);
        l.put_in_service(Some("k2"), t);
        assert!(l.reencrypted(Some("k2"), t));
        assert_eq!(alive(&l), ["k1", "k2"]);
        l.put_in_service(Some("k3"), t);
        assert!(l.reencrypted(Some("k3"), t));
        assert_eq!(alive(&l), ["k2", "k3"]);
        l.put_in_service(Some("k3"), t);
        assert_eq!(l.entries.len(), 3, "idempotent");
    }

    const V1: &str = "https://vault1.vault.azure.net/keys/kms-key/0a1b";
    const V2: &str = "https://vault1.vault.azure.net/keys/kms-key/2c3d";

    fn switch(to: Option<&str>, proven: bool) -> Option<Switch> {
        let t = chrono::Utc::now();
        Some(Switch {
            to: to.map(str::to_string),
            run_id: "r1".into(),
            requested_at: t,
            proven_at: proven.then_some(t),
            evidence: None,
            canary_flip_rv: None,
        })
    }

    #[test]
    fn key_ids_compare_as_key_vault_does() {
        assert!(same_key_id(
            "https://VAULT1.Vault.Azure.NET/keys/KMS-Key/0A1B/",
            V1
        ));
        assert!(!same_key_id(V1, V2));
        let t = chrono::Utc::now();
        let mut l = Ledger::default();
        l.put_in_service(Some(V1), t);
        l.put_in_service(Some(&V1.to_ascii_uppercase()), t);
        assert_eq!(l.entries.len(), 1, "an upper-case host is the same version");
        assert!(l.entry(&V1.to_ascii_uppercase()).is_some());
        l.put_in_service(Some(V2), t);
        assert!(l.reencrypted(Some(&V2.to_ascii_uppercase()), t));
        l.retired(&V1.replace("vault1", "VAULT1"), t);
        assert!(l.entries[0].retired_at.is_some(), "retired however spelled");
        assert_eq!(alive(&l), [V2]);
    }

    #[test]
    fn disable_then_enable_of_one_version_reopens_its_entry() {
        let t = chrono::Utc::now();
        let later = t + chrono::Duration::minutes(5);
        let mut l = Ledger::default();
        l.put_in_service(Some(V1), t);
        l.put_in_service(None, t);
        assert!(l.reencrypted(None, t));
        l.put_in_service(Some(V1), later);
        assert_eq!(l.entries.len(), 1, "one entry per version");
        let e = &l.entries[0];
        assert_eq!(e.out_of_service_since, None);
        assert_eq!(
            e.reencrypted_away_at, None,
            "Secrets are written with it again"
        );
        assert_eq!(e.in_service_since, later);
        assert_eq!(alive(&l), [V1], "listed once");
        assert_eq!(l.current().map(|e| e.key_id.as_str()), Some(V1));
    }

    #[test]
    fn a_reopened_version_goes_last_so_the_previous_one_is_the_last_out() {
        let t = chrono::Utc::now();
        let mut l = Ledger::default();
        for k in ["k1", "k2", "k3", "k2"] {
            l.put_in_service(Some(k), t);
            assert!(l.reencrypted(Some(k), t));
        }
        assert_eq!(alive(&l), ["k3", "k2"], "k3 is the previous version now");
        l.put_in_service(Some("k1"), t);
        assert!(l.reencrypted(Some("k1"), t));
        assert_eq!(alive(&l), ["k2", "k1"]);
    }

    #[test]
    fn an_old_ledger_with_two_entries_for_one_version_lists_it_once() {
        let t = chrono::Utc::now();
        let old = |k: &str, out: bool| LedgerEntry {
            key_id: k.into(),
            in_service_since: t,
            out_of_service_since: out.then_some(t),
            ..Default::default()
        };
        let mut l = Ledger {
            entries: vec![
                old(V1, true),
                old(V2, true),
                old(&V1.to_ascii_uppercase(), false),
            ],
            switch: None,
        };
        l.merge_duplicates();
        assert_eq!(l.entries.len(), 2);
        assert_eq!(alive(&l), [V2, V1.to_ascii_uppercase().as_str()]);
    }

    #[test]
    fn only_a_proven_switch_to_the_pass_key_marks_older_versions_away() {
        let t = chrono::Utc::now();
        let fresh = || {
            let mut l = Ledger::default();
            l.put_in_service(Some(V1), t);
            l.put_in_service(Some(V2), t);
            l
        };
        let away = |l: &Ledger| l.entry(V1).unwrap().reencrypted_away_at.is_some();

        let mut l = fresh();
        l.switch = switch(Some(V2), false);
        assert!(!l.reencrypted(Some(V2), t), "the switch is not proven");
        assert!(!away(&l));

        let mut l = fresh();
        l.switch = switch(Some(V1), true);
        assert!(!l.reencrypted(Some(V2), t), "proven, but to another key");
        assert!(!away(&l));

        let mut l = fresh();
        l.switch = switch(Some(V2), true);
        assert!(
            !l.reencrypted(None, t),
            "a pass with KMS off is not one under V2"
        );
        assert!(!l.reencrypted(Some(V1), t), "nor one under V1");
        assert!(!away(&l));
        assert!(l.reencrypted(Some(&V2.to_ascii_uppercase()), t));
        assert!(away(&l));

        let mut l = fresh();
        assert!(
            !l.reencrypted(Some(V1), t),
            "no switch record: V1 is not current"
        );
        assert!(
            l.reencrypted(Some(V2), t),
            "no switch record: V2 is current"
        );
        assert!(away(&l));

        let mut l = fresh();
        l.put_in_service(None, t);
        l.switch = switch(None, false);
        assert!(!l.reencrypted(None, t), "KMS off, not yet proven");
        l.switch = switch(None, true);
        assert!(l.reencrypted(None, t));
        assert!(l.entries.iter().all(|e| e.reencrypted_away_at.is_some()));
    }

    #[test]
    fn a_rotation_is_done_once_its_new_version_is_proven_and_the_old_one_reencrypted_away() {
        let t = |s: i64| chrono::DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let mut l = Ledger::default();
        l.put_in_service(Some("https://v.vault.azure.net/keys/k/1"), t(0));
        assert_eq!(
            done_since(&l, t(10), 1, None),
            None,
            "nothing since the fleet began"
        );
        l.put_in_service(Some("https://v.vault.azure.net/keys/k/2"), t(20));
        l.switch = Some(Switch {
            to: Some("https://v.vault.azure.net/keys/k/2".into()),
            run_id: "r".into(),
            requested_at: t(20),
            proven_at: None,
            ..Default::default()
        });
        assert_eq!(done_since(&l, t(10), 1, None), None, "switch not proven");
        l.switch.as_mut().unwrap().proven_at = Some(t(30));
        assert_eq!(
            done_since(&l, t(10), 1, None),
            None,
            "old version not re-encrypted away"
        );
        assert!(l.reencrypted(Some("https://v.vault.azure.net/keys/k/2"), t(40)));
        assert!(done_since(&l, t(10), 1, None).is_some());
        assert_eq!(
            done_since(&l, t(10), 2, None),
            None,
            "rotate-twice needs two versions"
        );
    }

    /// A run's first look at a cluster enters the key it finds as in service from then on: that
    /// entry, dated after the fleet began, is the key the fleet started from, not a rotation.
    #[test]
    fn the_key_a_fleet_started_from_is_no_rotation_however_it_is_dated() {
        let t = |s: i64| chrono::DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let (k1, k2) = (
            "https://v.vault.azure.net/keys/k/1",
            "https://v.vault.azure.net/keys/k/2",
        );
        let mut l = Ledger::default();
        // Planted after the fleet began (t 10), then one rotation by hand.
        l.put_in_service(Some(k1), t(15));
        l.put_in_service(Some(k2), t(20));
        l.switch = Some(Switch {
            to: Some(k2.into()),
            run_id: "r".into(),
            requested_at: t(20),
            proven_at: Some(t(30)),
            ..Default::default()
        });
        assert!(l.reencrypted(Some(k2), t(40)));
        assert!(
            done_since(&l, t(10), 2, None).is_some(),
            "counted without `from`"
        );
        assert_eq!(
            done_since(&l, t(10), 2, Some(&k1.to_ascii_uppercase())),
            None,
            "one rotation is not rotate-twice"
        );
        assert!(done_since(&l, t(10), 1, Some(k1)).is_some());
    }
}
