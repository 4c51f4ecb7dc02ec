//! What a playbook leaves behind, checked over its step list when the file is read: every rule
//! about the order of steps is here, once, and refuses at the step it is about. The steps still
//! refuse at run time what depends on the cluster; these are the orders that are unsafe whatever
//! the cluster says.

use super::{Intent, Procedure, Step, params};

/// A rule broken, at the step (index) it is about.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub index: usize,
    pub message: String,
}

/// A step as an error names it: numbered from 1, as `kmsctl plan` lists it.
fn named(index: usize, step: &Step) -> String {
    format!("step {} ({})", index + 1, step.describe())
}

/// The earliest change whose consequences the playbook still owes: the switch proven (every API
/// server replica writes the new way), then every Secret rewritten. A change after it, before
/// the debt is paid, owes the same, so one debt with the earliest change stands for all.
struct Owed {
    at: usize,
    proven: bool,
}

fn owe(owed: &mut Option<Owed>, at: usize) {
    owed.get_or_insert(Owed { at, proven: false }).proven = false;
}

fn left_owing(steps: &[Step], o: &Owed, before: &str) -> Violation {
    let missing = if o.proven {
        "a whole-cluster reencrypt"
    } else {
        "prove-key-switch and a whole-cluster reencrypt"
    };
    Violation {
        index: o.at,
        message: format!(
            "{} is not followed by {missing} before {before}: Secrets would be left under the key it moves away from",
            named(o.at, &steps[o.at])
        ),
    }
}

/// Checks the whole step list. A `reencrypt` step is whole-cluster by construction: a playbook
/// run refuses `--namespace` (see `commands::lifecycle::refuse_scoped`).
pub fn check(p: &Procedure) -> Result<(), Violation> {
    let steps = &p.steps;
    let refuse = |index: usize, message: String| Err(Violation { index, message });
    if steps.is_empty() {
        return refuse(0, "a playbook needs at least one step".into());
    }
    if let Some(first) = steps.iter().position(Step::changes) {
        if steps[0] != Step::Preflight {
            return refuse(
                0,
                "a procedure that changes anything must start with preflight".into(),
            );
        }
        // Preflight checks the key only for the intents that change it, and only a lifecycle
        // intent's reencrypt is verified and recorded in the key ledger.
        if p.intent == Intent::Reencrypt {
            return refuse(
                first,
                format!(
                    "{} changes the cluster, but `intent: reencrypt` is for rewriting Secrets only: its preflight checks no key and its re-encryption proves nothing for the key ledger. Use the intent of the change (enable, disable, rotate, vault-mode, migrate-v2)",
                    named(first, &steps[first])
                ),
            );
        }
    }
    let mut planted = false;
    // A rotate-key whose new version no update-kms has put in service yet: the key change
    // starts there.
    let mut rotated: Option<usize> = None;
    // The update-kms whose switch is not proven yet, and the one not checked by verify-kms yet.
    let mut unproven: Option<usize> = None;
    let mut unverified: Option<usize> = None;
    // The last key change not followed by a whole-cluster reencrypt yet.
    let mut unrewritten: Option<usize> = None;
    let mut owed: Option<Owed> = None;
    for (i, s) in steps.iter().enumerate() {
        match s {
            Step::Preflight if i > 0 => {
                return refuse(i, "preflight may only be the first step".into());
            }
            Step::Preflight | Step::CheckRotationWindow => {}
            Step::PlantCanary => planted = true,
            Step::RotateKey => {
                rotated.get_or_insert(i);
            }
            Step::UpdateKms { .. } => {
                let at = rotated.take().unwrap_or(i);
                if !planted {
                    return refuse(i, "update-kms needs a plant-canary step before it".into());
                }
                // Every update-kms moves the write key (to a new version, into KMS or out of it).
                if let Some(prev) = unrewritten {
                    return refuse(
                        at,
                        format!(
                            "{} is a second key change with no whole-cluster reencrypt since {}: KMS keeps only two keys in use, and rotating twice without re-encrypting between has left clusters stuck (Azure/kubernetes-kms#291). Add prove-key-switch and reencrypt between them",
                            named(at, &steps[at]),
                            named(prev, &steps[prev])
                        ),
                    );
                }
                unproven = Some(i);
                unverified = Some(i);
                unrewritten = Some(at);
                owe(&mut owed, at);
            }
            Step::VerifyKms { .. } => {
                if unproven.is_none() {
                    return refuse(
                        i,
                        "verify-kms checks what update-kms asked for: put it right after update-kms"
                            .into(),
                    );
                }
                unverified = None;
            }
            Step::ProveKeySwitch => {
                if let Some(u) = unverified {
                    return refuse(u, missing_verify(u, &steps[u], &named(i, s)));
                }
                planted = false;
                unproven = None;
                if let Some(o) = owed.as_mut() {
                    o.proven = true;
                }
            }
            Step::Reencrypt => {
                if unproven.is_some() {
                    return refuse(i, "reencrypt must come after prove-key-switch".into());
                }
                unrewritten = None;
                if owed.as_ref().is_some_and(|o| o.proven) {
                    owed = None;
                }
            }
            Step::SetVaultNetwork | Step::UpgradeKubernetes => {
                if unproven.is_some() {
                    return refuse(i, format!("{} must come after prove-key-switch", s.name()));
                }
                // The vault must not close (or open) while Secrets may still need it as it is.
                if let (Step::SetVaultNetwork, Some(o)) = (s, &owed) {
                    return Err(left_owing(steps, o, &named(i, s)));
                }
                owe(&mut owed, i);
            }
            Step::RetireOldest { when } => {
                if let Some(w) = when.as_deref().filter(|w| !params::is_flag(w)) {
                    return refuse(
                        i,
                        format!(
                            "`when: {w}` names no yes/no parameter (known: {})",
                            params::FLAGS.join(", ")
                        ),
                    );
                }
                if let Some(o) = &owed {
                    return Err(left_owing(steps, o, &named(i, s)));
                }
            }
        }
    }
    if let Some(u) = unverified {
        return refuse(u, missing_verify(u, &steps[u], "the end of the playbook"));
    }
    if let Some(o) = &owed {
        return Err(left_owing(steps, o, "the end of the playbook"));
    }
    Ok(())
}

fn missing_verify(index: usize, step: &Step, before: &str) -> String {
    format!(
        "{} is not followed by verify-kms before {before}: nothing would check that the cluster reports exactly what was asked",
        named(index, step)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playbook::KmsVersion;

    fn procedure(intent: Intent, steps: Vec<Step>) -> Procedure {
        Procedure {
            name: "t".into(),
            description: "d".into(),
            intent,
            params: Default::default(),
            steps,
        }
    }

    fn check_steps(intent: Intent, steps: Vec<Step>) -> Result<(), Violation> {
        check(&procedure(intent, steps))
    }

    /// The violation's step and a phrase of its message.
    fn refused(intent: Intent, steps: Vec<Step>, index: usize, phrase: &str) {
        let v = check_steps(intent, steps).expect_err("refused");
        assert_eq!(v.index, index, "{}", v.message);
        assert!(v.message.contains(phrase), "no '{phrase}' in {}", v.message);
    }

    use Step::*;
    const ON: Step = UpdateKms { enabled: true };
    const OFF: Step = UpdateKms { enabled: false };
    const VERIFY: Step = VerifyKms { kms_version: None };

    /// One key change, done right: planted, changed, verified, proven, rewritten.
    fn switch(change: Step) -> Vec<Step> {
        vec![PlantCanary, change, VERIFY, ProveKeySwitch, Reencrypt]
    }

    fn with_preflight(rest: impl IntoIterator<Item = Vec<Step>>) -> Vec<Step> {
        std::iter::once(vec![Preflight])
            .chain(rest)
            .flatten()
            .collect()
    }

    #[test]
    fn every_built_in_passes() {
        for name in crate::playbook::built_in_names() {
            let p = crate::playbook::built_in(name).unwrap();
            assert_eq!(check(&p), Ok(()), "{name}");
        }
    }

    #[test]
    fn a_change_needs_preflight_first_and_preflight_only_first() {
        refused(
            Intent::Rotate,
            vec![RotateKey],
            0,
            "must start with preflight",
        );
        refused(
            Intent::Disable,
            with_preflight([switch(OFF), vec![Preflight]]),
            6,
            "only be the first step",
        );
        assert_eq!(check_steps(Intent::Reencrypt, vec![Reencrypt]), Ok(()));
        assert_eq!(check_steps(Intent::Rotate, vec![PlantCanary]), Ok(()));
        refused(Intent::Rotate, vec![], 0, "at least one step");
    }

    #[test]
    fn intent_reencrypt_changes_nothing() {
        refused(
            Intent::Reencrypt,
            with_preflight([switch(OFF)]),
            2,
            "`intent: reencrypt` is for rewriting Secrets only",
        );
        assert_eq!(
            check_steps(Intent::Reencrypt, vec![Preflight, Reencrypt]),
            Ok(())
        );
    }

    #[test]
    fn update_kms_needs_a_canary_planted_since_the_last_proof() {
        refused(
            Intent::Disable,
            vec![Preflight, OFF, VERIFY, ProveKeySwitch, Reencrypt],
            1,
            "plant-canary step before it",
        );
        let mut replanted = with_preflight([switch(OFF)]);
        replanted.extend([UpgradeKubernetes, ON, VERIFY, ProveKeySwitch, Reencrypt]);
        refused(
            Intent::MigrateV2,
            replanted,
            7,
            "plant-canary step before it",
        );
    }

    #[test]
    fn update_kms_needs_verify_kms_after_it_and_before_the_proof() {
        refused(
            Intent::Disable,
            vec![Preflight, PlantCanary, OFF, ProveKeySwitch, Reencrypt],
            2,
            "not followed by verify-kms before step 4 (prove-key-switch)",
        );
        refused(
            Intent::Disable,
            vec![Preflight, PlantCanary, OFF],
            2,
            "not followed by verify-kms before the end",
        );
        refused(
            Intent::Disable,
            vec![
                Preflight,
                PlantCanary,
                OFF,
                ProveKeySwitch,
                VERIFY,
                Reencrypt,
            ],
            2,
            "not followed by verify-kms",
        );
        refused(
            Intent::Disable,
            with_preflight([switch(OFF), vec![VERIFY]]),
            6,
            "put it right after update-kms",
        );
        // Anything between update-kms and its verification is fine, so long as it is before
        // the proof.
        let v2 = VerifyKms {
            kms_version: Some(KmsVersion::V2),
        };
        assert_eq!(
            check_steps(
                Intent::Enable,
                vec![
                    Preflight,
                    PlantCanary,
                    ON,
                    CheckRotationWindow,
                    v2,
                    ProveKeySwitch,
                    Reencrypt
                ]
            ),
            Ok(())
        );
    }

    #[test]
    fn a_change_is_proven_and_rewritten_before_the_end() {
        // Sequence 6 of the proofs script: KMS off, proven, nothing rewritten.
        refused(
            Intent::Disable,
            vec![Preflight, PlantCanary, OFF, VERIFY, ProveKeySwitch],
            2,
            "step 3 (update-kms enabled=false) is not followed by a whole-cluster reencrypt before the end of the playbook",
        );
        refused(
            Intent::Disable,
            vec![Preflight, PlantCanary, OFF, VERIFY],
            2,
            "not followed by prove-key-switch and a whole-cluster reencrypt before the end",
        );
        // A rotation's change starts at its rotate-key.
        refused(
            Intent::Rotate,
            vec![
                Preflight,
                PlantCanary,
                RotateKey,
                ON,
                VERIFY,
                ProveKeySwitch,
            ],
            2,
            "step 3 (rotate-key) is not followed by a whole-cluster reencrypt",
        );
        // A reencrypt before the proof does not count (and is refused as such).
        refused(
            Intent::Disable,
            vec![
                Preflight,
                PlantCanary,
                OFF,
                VERIFY,
                Reencrypt,
                ProveKeySwitch,
            ],
            4,
            "reencrypt must come after prove-key-switch",
        );
        // The vault's network and the Kubernetes version are changes too.
        refused(
            Intent::VaultMode,
            with_preflight([switch(OFF), vec![SetVaultNetwork]]),
            6,
            "step 7 (set-vault-network) is not followed by prove-key-switch and a whole-cluster reencrypt before the end",
        );
        refused(
            Intent::MigrateV2,
            with_preflight([switch(OFF), vec![UpgradeKubernetes]]),
            6,
            "step 7 (upgrade-kubernetes) is not followed by prove-key-switch",
        );
        assert_eq!(
            check_steps(
                Intent::VaultMode,
                with_preflight([switch(OFF), vec![SetVaultNetwork], switch(ON)])
            ),
            Ok(())
        );
        // A rotated version no update-kms uses changes nothing on the cluster.
        assert_eq!(
            check_steps(Intent::Rotate, vec![Preflight, RotateKey]),
            Ok(())
        );
    }

    #[test]
    fn set_vault_network_and_retire_oldest_wait_for_the_rewrite() {
        refused(
            Intent::VaultMode,
            vec![
                Preflight,
                PlantCanary,
                OFF,
                VERIFY,
                ProveKeySwitch,
                SetVaultNetwork,
            ],
            2,
            "not followed by a whole-cluster reencrypt before step 6 (set-vault-network)",
        );
        refused(
            Intent::VaultMode,
            vec![Preflight, PlantCanary, OFF, VERIFY, SetVaultNetwork],
            4,
            "set-vault-network must come after prove-key-switch",
        );
        let retire = RetireOldest {
            when: Some("retireOld".into()),
        };
        let rotation = |rest: &[Step]| {
            let mut steps = vec![PlantCanary, RotateKey, ON, VERIFY, ProveKeySwitch];
            steps.extend_from_slice(rest);
            steps
        };
        let early = with_preflight([
            rotation(&[Reencrypt]),
            rotation(std::slice::from_ref(&retire)),
        ]);
        refused(
            Intent::Rotate,
            early,
            8,
            "step 9 (rotate-key) is not followed by a whole-cluster reencrypt before step 13 (retire-oldest when retireOld)",
        );
        let twice = with_preflight([rotation(&[Reencrypt]), rotation(&[Reencrypt, retire])]);
        assert_eq!(check_steps(Intent::Rotate, twice), Ok(()));
        refused(
            Intent::Rotate,
            with_preflight([
                switch(ON),
                vec![RetireOldest {
                    when: Some("always".into()),
                }],
            ]),
            6,
            "`when: always` names no yes/no parameter",
        );
    }

    #[test]
    fn two_key_changes_need_a_rewrite_between() {
        // Two rotations, each proven, one re-encryption at the end (Azure/kubernetes-kms#291).
        let steps = vec![
            Preflight,
            PlantCanary,
            RotateKey,
            ON,
            VERIFY,
            ProveKeySwitch,
            PlantCanary,
            RotateKey,
            ON,
            VERIFY,
            ProveKeySwitch,
            Reencrypt,
        ];
        refused(
            Intent::Rotate,
            steps,
            7,
            "step 8 (rotate-key) is a second key change with no whole-cluster reencrypt since step 3 (rotate-key)",
        );
        // Off then on again without a rewrite between: the same, for update-kms alone.
        let steps = vec![
            Preflight,
            PlantCanary,
            OFF,
            VERIFY,
            ProveKeySwitch,
            PlantCanary,
            ON,
            VERIFY,
            ProveKeySwitch,
            Reencrypt,
        ];
        refused(Intent::VaultMode, steps, 6, "Azure/kubernetes-kms#291");
        // Without a proof between, the second change is refused the same way.
        refused(
            Intent::Rotate,
            vec![Preflight, PlantCanary, RotateKey, ON, VERIFY, RotateKey, ON],
            5,
            "second key change",
        );
        let steps = with_preflight([switch(OFF), switch(ON)]);
        assert_eq!(check_steps(Intent::VaultMode, steps), Ok(()));
    }
}
