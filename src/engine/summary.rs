//! What a run did, as it ends: what changed, what proved each key switch, each pass over the
//! Secrets with its counts, and the key versions (from the key ledger): in use, which must stay
//! alive and until when, which may be retired now, which were retired; how long it took, and the
//! command to run next where there is one.

use super::journal::Record;
use crate::k8s::ledger::Ledger;
use crate::playbook::{Intent, Procedure, Step};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub run_id: String,
    pub procedure: String,
    /// `succeeded` or `failed`.
    pub status: String,
    /// This process's part of the run.
    pub seconds: f64,
    pub changed: Vec<String>,
    pub switches: Vec<SwitchProof>,
    pub passes: Vec<PassSummary>,
    /// None when the key ledger could not be read (`keysError` says why).
    pub keys: Option<KeyVersions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SwitchProof {
    /// Which part of the run (as the passes are labelled).
    pub label: String,
    /// The key version the replicas write with now (None: KMS off).
    pub to: Option<String>,
    /// attributed, time, settled or ledger.
    pub evidence: String,
    pub detail: String,
    pub waited_seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PassSummary {
    pub label: String,
    pub kind: super::events::PassKind,
    pub rewritten: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub failed: u64,
    /// Rounds of re-encryption and verification (verification only; 1 unless a verification
    /// pass rewrote Secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyVersions {
    pub in_use: Option<String>,
    pub must_stay_alive: Vec<KeyLife>,
    pub retirable_now: Vec<String>,
    pub retired: Vec<KeyLife>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyLife {
    pub key_id: String,
    /// Until when it must stay alive, or when it was retired.
    pub until: String,
}

/// How the passes of the `index`th step are labelled: by rotation where a run rotates more than
/// once, by what the key was changed to where it re-encrypts more than once, else nothing.
pub fn pass_label(procedure: &Procedure, index: usize) -> String {
    let passes: Vec<usize> = procedure
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == Step::Reencrypt)
        .map(|(i, _)| i)
        .collect();
    if passes.len() < 2 {
        return String::new();
    }
    let n = passes.iter().position(|i| *i == index).unwrap_or(0) + 1;
    let rotations = procedure.steps[..index]
        .iter()
        .filter(|s| **s == Step::RotateKey)
        .count();
    if procedure.intent == Intent::Rotate && rotations > 0 {
        return format!("rotation {rotations} of {}", passes.len());
    }
    let kms = procedure.steps[..index].iter().rev().find_map(|s| match s {
        Step::UpdateKms { enabled } => Some(*enabled),
        _ => None,
    });
    match kms {
        Some(false) => format!("KMS off, {n} of {}", passes.len()),
        Some(true) => format!("KMS on, {n} of {}", passes.len()),
        None => format!("{n} of {}", passes.len()),
    }
}

/// The key versions as the ledger has them.
pub fn keys_of(l: &Ledger) -> KeyVersions {
    let alive = l.must_stay_alive();
    let current = l.current().map(|e| e.key_id.clone());
    let must_stay_alive = alive
        .iter()
        .map(|e| KeyLife {
            key_id: e.key_id.clone(),
            until: if e.out_of_service_since.is_none() {
                "in use; then until the rotation after the next one re-encrypts every Secret away from it".into()
            } else if e.reencrypted_away_at.is_none() {
                "until a verified re-encryption of every Secret moves them off it (rotate again, or `kmsctl reencrypt` does not count)".into()
            } else {
                "the previous version, which KMS may still decrypt with: until the next rotation moves the cluster past it".into()
            },
        })
        .collect();
    let retirable_now = l
        .entries
        .iter()
        .filter(|e| {
            e.retired_at.is_none()
                && e.out_of_service_since.is_some()
                && e.reencrypted_away_at.is_some()
                && !alive
                    .iter()
                    .any(|a| crate::k8s::ledger::same_key_id(&a.key_id, &e.key_id))
        })
        .map(|e| e.key_id.clone())
        .collect();
    let retired = l
        .entries
        .iter()
        .filter_map(|e| {
            Some(KeyLife {
                key_id: e.key_id.clone(),
                until: format!("retired {}", e.retired_at?.to_rfc3339()),
            })
        })
        .collect();
    KeyVersions {
        in_use: current,
        must_stay_alive,
        retirable_now,
        retired,
    }
}

/// The run's summary from its journal (every step's output, also those of an earlier process
/// of a resumed run) and the ledger as it is now.
pub fn build(
    record: &Record,
    ok: bool,
    seconds: f64,
    ledger: Result<&Ledger, String>,
    failed_pass: Option<(usize, &crate::reencrypt::Summary)>,
) -> Summary {
    let procedure = &record.header.procedure;
    let mut switches = Vec::new();
    let mut passes = Vec::new();
    for (index, (step, rec)) in procedure.steps.iter().zip(&record.steps).enumerate() {
        let label = pass_label(procedure, index);
        let Some(o) = &rec.finished else {
            if let Some((_, s)) = failed_pass.filter(|(i, _)| *i == index) {
                passes.push(pass(
                    &label,
                    super::events::PassKind::Reencryption,
                    &s.totals,
                ));
            }
            continue;
        };
        match step {
            Step::ProveKeySwitch => switches.push(SwitchProof {
                label: proof_label(procedure, index),
                to: o["writesWith"]
                    .as_str()
                    .filter(|k| *k != "no KMS")
                    .map(str::to_string),
                evidence: o["evidence"].as_str().unwrap_or("?").to_string(),
                detail: o["detail"].as_str().unwrap_or_default().to_string(),
                waited_seconds: o["waitedSeconds"].as_f64().unwrap_or(0.0),
            }),
            Step::Reencrypt => {
                let totals: crate::reencrypt::Counts =
                    serde_json::from_value(o["totals"].clone()).unwrap_or_default();
                passes.push(pass(&label, super::events::PassKind::Reencryption, &totals));
                if let Some(rounds) = o["verification"]["rounds"].as_u64() {
                    passes.push(PassSummary {
                        label: label.clone(),
                        kind: super::events::PassKind::Verification,
                        rewritten: o["verification"]["rewritten"].as_u64().unwrap_or(0),
                        unchanged: o["verification"]["unchanged"].as_u64().unwrap_or(0),
                        deleted: 0,
                        failed: 0,
                        rounds: Some(rounds),
                    });
                }
            }
            _ => {}
        }
    }
    let (keys, keys_error) = match ledger {
        Ok(l) => (Some(keys_of(l)), None),
        Err(e) => (None, Some(e)),
    };
    let id = &record.header.run_id;
    let next = if !ok {
        Some(format!("kmsctl resume --run {id}"))
    } else {
        keys.as_ref()
            .and_then(|k| k.retirable_now.first())
            .map(|kid| {
                format!("az keyvault key set-attributes --enabled false --id {kid} (disables, never deletes, a version nothing needs any more)")
            })
    };
    Summary {
        run_id: id.clone(),
        procedure: procedure.name.clone(),
        status: if ok { "succeeded" } else { "failed" }.into(),
        seconds,
        changed: record.changes(),
        switches,
        passes,
        keys,
        keys_error,
        next,
    }
}

/// A proof is labelled as the passes that follow it.
fn proof_label(procedure: &Procedure, index: usize) -> String {
    match procedure.steps[index..]
        .iter()
        .position(|s| *s == Step::Reencrypt)
    {
        Some(i) => pass_label(procedure, index + i),
        None => String::new(),
    }
}

fn pass(label: &str, kind: super::events::PassKind, c: &crate::reencrypt::Counts) -> PassSummary {
    PassSummary {
        label: label.to_string(),
        kind,
        rewritten: c.rewritten,
        unchanged: c.unchanged,
        deleted: c.deleted,
        failed: c.failed,
        rounds: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::ledger::LedgerEntry;

    #[test]
    fn passes_are_labelled_per_rotation_or_by_the_kms_change() {
        let twice = crate::playbook::built_in("rotate-twice").unwrap();
        let at: Vec<usize> = twice
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == Step::Reencrypt)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(pass_label(&twice, at[0]), "rotation 1 of 2");
        assert_eq!(pass_label(&twice, at[1]), "rotation 2 of 2");
        let m = crate::playbook::built_in("migrate-v2").unwrap();
        let at: Vec<usize> = m
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == Step::Reencrypt)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(pass_label(&m, at[0]), "KMS off, 1 of 2");
        assert_eq!(pass_label(&m, at[1]), "KMS on, 2 of 2");
        let one = crate::playbook::built_in("rotate").unwrap();
        assert_eq!(pass_label(&one, 5), "");
    }

    #[test]
    fn keys_in_use_alive_retirable_and_retired() {
        let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let e =
            |k: &str, out: Option<&str>, away: Option<&str>, retired: Option<&str>| LedgerEntry {
                key_id: k.into(),
                in_service_since: t("2026-01-01T00:00:00Z"),
                out_of_service_since: out.map(t),
                reencrypted_away_at: away.map(t),
                retired_at: retired.map(t),
            };
        let d = Some("2026-02-01T00:00:00Z");
        let l = Ledger {
            entries: vec![
                e("k0", d, d, d),
                e("k1", d, d, None),
                e("k2", d, d, None),
                e("k3", None, None, None),
            ],
            switch: None,
        };
        let k = keys_of(&l);
        assert_eq!(k.in_use.as_deref(), Some("k3"));
        let alive: Vec<&str> = k
            .must_stay_alive
            .iter()
            .map(|l| l.key_id.as_str())
            .collect();
        assert_eq!(alive, ["k2", "k3"]);
        assert_eq!(k.retirable_now, ["k1"]);
        assert_eq!(k.retired[0].key_id, "k0");
    }

    /// A rotate --twice journal with the given steps finished (index, output).
    fn record(finished: &[(usize, serde_json::Value)]) -> (tempfile::TempDir, Record) {
        use crate::engine::journal::{self, Entry, Journal, RunHeader};
        let dir = tempfile::tempdir().unwrap();
        let header = RunHeader {
            format: journal::FORMAT_VERSION,
            run_id: "r1".into(),
            procedure: crate::playbook::built_in("rotate-twice").unwrap(),
            params: Default::default(),
            target: Default::default(),
            cluster: None,
            created_at: chrono::Utc::now(),
            confirmed: true,
        };
        let mut j = Journal::create(dir.path(), header).unwrap();
        for (index, output) in finished {
            let at = chrono::Utc::now();
            j.append(&Entry::StepStarted {
                index: *index,
                at,
                data: serde_json::Value::Null,
            })
            .unwrap();
            j.append(&Entry::StepFinished {
                index: *index,
                at,
                output: output.clone(),
            })
            .unwrap();
        }
        let r = crate::engine::journal::replay(&j.path).unwrap();
        (dir, r)
    }

    #[test]
    fn a_summary_labels_proofs_and_passes_per_rotation_and_says_what_next() {
        use serde_json::json;
        let proof = |k: &str| json!({ "writesWith": k, "evidence": "attributed", "detail": "d", "waitedSeconds": 75.0 });
        let pass = json!({ "totals": { "rewritten": 9, "unchanged": 1, "deleted": 0, "failed": 0, "conflicts": 0, "throttled": 0 },
                           "verification": { "rounds": 1, "unchanged": 10, "rewritten": 0 } });
        let kms = |k: &str| json!({ "desired": { "enabled": true, "keyId": k }, "report": { "changed": true } });
        let (_d, r) = record(&[
            (2, json!({ "keyId": "k1" })),
            (3, kms("k1")),
            (5, proof("k1")),
            (6, pass.clone()),
            (9, json!({ "keyId": "k2" })),
            (10, kms("k2")),
            (12, proof("k2")),
            (13, pass.clone()),
        ]);
        let l = Ledger {
            entries: vec![
                LedgerEntry {
                    key_id: "k0".into(),
                    out_of_service_since: Some(chrono::Utc::now()),
                    reencrypted_away_at: Some(chrono::Utc::now()),
                    ..Default::default()
                },
                LedgerEntry {
                    key_id: "k1".into(),
                    out_of_service_since: Some(chrono::Utc::now()),
                    reencrypted_away_at: Some(chrono::Utc::now()),
                    ..Default::default()
                },
                LedgerEntry {
                    key_id: "k2".into(),
                    ..Default::default()
                },
            ],
            switch: None,
        };
        let s = build(&r, true, 12.0, Ok(&l), None);
        assert_eq!(s.status, "succeeded");
        assert_eq!(
            s.changed,
            [
                "new key version k1",
                "KMS key now k1",
                "new key version k2",
                "KMS key now k2"
            ]
        );
        let proofs: Vec<(&str, Option<&str>)> = s
            .switches
            .iter()
            .map(|p| (p.label.as_str(), p.to.as_deref()))
            .collect();
        assert_eq!(
            proofs,
            [
                ("rotation 1 of 2", Some("k1")),
                ("rotation 2 of 2", Some("k2"))
            ]
        );
        let passes: Vec<(&str, super::super::events::PassKind, u64)> = s
            .passes
            .iter()
            .map(|p| (p.label.as_str(), p.kind, p.unchanged))
            .collect();
        use super::super::events::PassKind::{Reencryption, Verification};
        assert_eq!(
            passes,
            [
                ("rotation 1 of 2", Reencryption, 1),
                ("rotation 1 of 2", Verification, 10),
                ("rotation 2 of 2", Reencryption, 1),
                ("rotation 2 of 2", Verification, 10),
            ]
        );
        let k = s.keys.as_ref().unwrap();
        assert_eq!(k.in_use.as_deref(), Some("k2"));
        assert_eq!(k.retirable_now, ["k0"]);
        assert!(
            s.next.as_deref().unwrap().contains("--id k0"),
            "{:?}",
            s.next
        );

        // Stopped in the second re-encryption, with an unreadable ledger: the failed pass is
        // counted, the key versions are not guessed, and the next command resumes the run.
        let (_d, r) = record(&[
            (2, json!({ "keyId": "k1" })),
            (3, kms("k1")),
            (5, proof("k1")),
            (6, pass),
        ]);
        let failed = crate::reencrypt::Summary {
            totals: crate::reencrypt::Counts {
                rewritten: 5,
                failed: 2,
                ..Default::default()
            },
            namespaces: Default::default(),
            failures: vec![],
            seconds: 1.0,
            per_second: 5.0,
            requests: 7,
            throttled_share: 0.0,
        };
        let s = build(&r, false, 3.0, Err("forbidden".into()), Some((13, &failed)));
        assert_eq!(s.status, "failed");
        assert_eq!(s.passes.len(), 3);
        assert_eq!(
            (s.passes[2].label.as_str(), s.passes[2].failed),
            ("rotation 2 of 2", 2)
        );
        assert!(s.keys.is_none());
        assert_eq!(s.keys_error.as_deref(), Some("forbidden"));
        assert_eq!(s.next.as_deref(), Some("kmsctl resume --run r1"));
    }
}
