//! Snapshots of what a person sees: the plain lines (with the heartbeat a log gets during long
//! waits) and the terminal view (lines printed above, and each frame of the live lines) of a
//! `rotate --twice`, a `disable` and a `migrate-v2`, built from event sequences on a virtual
//! clock, then the closing summary the run prints on stdout.

use super::events::Lines;
use super::run::render_summary;
use crate::engine::events::{Event, PassKind, Replicas, WaitKind};
use crate::engine::summary::{self, KeyVersions, PassSummary, Summary, SwitchProof};
use crate::k8s::ledger::{Ledger, LedgerEntry};
use crate::reencrypt::Counts;
use std::time::{Duration, Instant};

const K0: &str = "https://kv-demo.vault.azure.net/keys/kms/0a0a";
const K1: &str = "https://kv-demo.vault.azure.net/keys/kms/1b1b";
const K2: &str = "https://kv-demo.vault.azure.net/keys/kms/2c2c";

/// Events at virtual seconds since the run started.
#[derive(Default)]
struct Seq {
    t: u64,
    events: Vec<(u64, Event)>,
    id: u32,
    total: usize,
}

impl Seq {
    fn at(&mut self, dt: u64, e: Event) {
        self.t += dt;
        self.events.push((self.t, e));
    }
    fn id(&mut self) -> u32 {
        self.id += 1;
        self.id
    }
    fn run(procedure: &str, description: &str, total: usize) -> Seq {
        let mut s = Seq {
            total,
            ..Default::default()
        };
        s.at(
            0,
            Event::RunStarted {
                run_id: format!("20260101T000000Z-{procedure}-abcdef"),
                procedure: procedure.into(),
                description: description.into(),
                steps: total,
                from_step: 0,
            },
        );
        s
    }
    fn step(&mut self, index: usize, step: &str, f: impl FnOnce(&mut Seq), detail: &str) {
        let began = self.t;
        self.at(
            0,
            Event::StepStarted {
                index,
                total: self.total,
                step: step.into(),
            },
        );
        f(self);
        self.at(
            1,
            Event::StepFinished {
                index,
                step: step.into(),
                detail: detail.into(),
                seconds: (self.t - began) as f64,
            },
        );
    }
    fn wait(&mut self, kind: WaitKind, what: &str, why: &str, deadline: u64) -> u32 {
        let wait = self.id();
        self.at(
            0,
            Event::WaitStarted {
                wait,
                kind,
                what: what.into(),
                why: why.into(),
                deadline_seconds: deadline,
            },
        );
        wait
    }
    #[allow(clippy::too_many_arguments)]
    fn progress(
        &mut self,
        wait: u32,
        dt: u64,
        elapsed: u64,
        deadline: u64,
        status: Option<&str>,
        replicas: Option<(usize, usize)>,
        evidence: Option<&str>,
    ) {
        self.at(
            dt,
            Event::WaitProgress {
                wait,
                elapsed_seconds: elapsed,
                deadline_seconds: deadline,
                status: status.map(str::to_string),
                replicas: replicas.map(|(switched, of)| Replicas { switched, of }),
                evidence: evidence.map(str::to_string),
            },
        );
    }
    fn wait_end(&mut self, wait: u32, dt: u64, elapsed: u64, outcome: &str) {
        self.at(
            dt,
            Event::WaitFinished {
                wait,
                elapsed_seconds: elapsed,
                ok: true,
                outcome: outcome.into(),
            },
        );
    }
    fn agree(&mut self) {
        let w = self.wait(
            WaitKind::ReplicaAgreement,
            "every API server replica to agree on the canary",
            "before anything changes, the replicas must be shown writing with one key",
            180,
        );
        self.progress(
            w,
            1,
            1,
            180,
            None,
            Some((1, 2)),
            Some("9 fresh-connection probes since the canary's last write"),
        );
        self.progress(
            w,
            1,
            2,
            180,
            None,
            Some((2, 2)),
            Some("17 fresh-connection probes since the canary's last write"),
        );
        self.wait_end(
            w,
            0,
            2,
            "every replica writes with KMS key id hash sha256:75548c9d8b1e",
        );
    }
    /// Azure's operation, polled every 15 s for `secs`.
    fn operation(&mut self, what: &str, why: &str, secs: u64) {
        let w = self.wait(WaitKind::ClusterOperation, what, why, 5400);
        let mut elapsed = 0;
        while elapsed + 15 < secs {
            elapsed += 15;
            self.progress(w, 15, elapsed, 5400, Some("InProgress"), None, None);
        }
        self.progress(w, secs - elapsed, secs, 5400, Some("Succeeded"), None, None);
        self.wait_end(w, 0, secs, "Azure says Succeeded");
    }
    fn proof(&mut self, writes: &str) {
        let w = self.wait(
            WaitKind::KeySwitchProof,
            &format!("proof that every API server replica {writes}"),
            "each replica switches at its own next KMS status call; Secrets rewritten by one that has not would stay under the old key",
            600,
        );
        self.progress(
            w,
            1,
            1,
            600,
            None,
            Some((0, 2)),
            Some("no replica has written the canary with another key yet (3 probes)"),
        );
        self.progress(w, 40, 41, 600, None, Some((1, 2)), Some("canary rewritten with another key 1x; quiet for 0s (time-based evidence needs 92s), 1/49 probes since the last write"));
        self.progress(w, 20, 61, 600, None, Some((1, 2)), Some("canary rewritten with another key 1x; quiet for 20s (time-based evidence needs 92s), 12/49 probes since the last write"));
        self.progress(w, 14, 75, 600, None, Some((2, 2)), Some("canary rewritten with another key 1x; quiet for 0s (time-based evidence needs 92s), 49/49 probes since the last write"));
        self.wait_end(
            w,
            0,
            75,
            "proven (attributed: each replica identified on its /metrics)",
        );
    }
    fn pass(&mut self, kind: PassKind, label: &str, total: u64, secs: u64, rewritten: u64) {
        let pass = self.id();
        self.at(
            0,
            Event::PassStarted {
                pass,
                kind,
                label: label.into(),
                round: 1,
                total: Some(total),
                already_done: 0,
            },
        );
        for s in 1..=secs {
            self.at(
                1,
                Event::PassProgress {
                    pass,
                    done: total * s / (secs + 1),
                    total: Some(total),
                    elapsed_seconds: s as f64,
                    namespaces_in_flight: vec!["team-003".into(), "team-004".into()],
                },
            );
        }
        self.at(
            1,
            Event::PassFinished {
                pass,
                counts: Counts {
                    rewritten,
                    unchanged: total - rewritten,
                    ..Default::default()
                },
                seconds: (secs + 1) as f64,
            },
        );
    }
    fn reencrypt(&mut self, label: &str, total: u64, secs: u64) {
        self.pass(PassKind::Reencryption, label, total, secs, total - 1);
        self.pass(PassKind::Verification, label, total, secs, 0);
    }
    fn end(&mut self, summary: Summary) {
        self.at(
            1,
            Event::RunFinished {
                summary: Box::new(summary),
            },
        );
    }
}

/// The plain lines, with the heartbeat a ticker adds each second of virtual time.
fn plain(seq: &Seq) -> String {
    let base = Instant::now();
    let mut lines = Lines::default();
    let mut out = Vec::new();
    let mut clock = 0;
    for (t, e) in &seq.events {
        while clock < *t {
            clock += 1;
            for l in lines.heartbeat(base + Duration::from_secs(clock)) {
                out.push(format!("{clock:>4}s {l}"));
            }
        }
        for l in lines.apply_at(e, base + Duration::from_secs(*t)) {
            out.push(format!("{t:>4}s {l}"));
        }
        if let Event::RunFinished { summary } = e {
            out.push("--- stdout ---".into());
            out.push(render_summary(summary));
        }
    }
    out.join("\n")
}

/// The terminal view: printed lines, and each new frame of live lines (marked `»`).
fn terminal(seq: &Seq) -> String {
    let base = Instant::now();
    let mut lines = Lines::terminal();
    let mut out = Vec::new();
    let mut frame: Vec<String> = Vec::new();
    for (t, e) in &seq.events {
        out.extend(lines.apply_at(e, base + Duration::from_secs(*t)));
        let now: Vec<String> = lines.live().iter().map(|l| l.render()).collect();
        if now != frame {
            out.extend(now.iter().map(|l| format!("» {l}")));
            if now.is_empty() {
                out.push("» (cleared)".into());
            }
            frame = now;
        }
        if let Event::RunFinished { summary } = e {
            out.push("--- stdout ---".into());
            out.push(render_summary(summary));
        }
    }
    out.join("\n")
}

fn ledger(entries: &[(&str, bool, bool, bool)]) -> Ledger {
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    Ledger {
        entries: entries
            .iter()
            .map(|(k, out, away, retired)| LedgerEntry {
                key_id: k.to_string(),
                in_service_since: at,
                out_of_service_since: out.then_some(at),
                reencrypted_away_at: away.then_some(at),
                retired_at: retired.then_some(at),
            })
            .collect(),
        switch: None,
    }
}

fn passes(label: &str, total: u64) -> Vec<PassSummary> {
    vec![
        PassSummary {
            label: label.into(),
            kind: PassKind::Reencryption,
            rewritten: total - 1,
            unchanged: 1,
            deleted: 0,
            failed: 0,
            rounds: None,
        },
        PassSummary {
            label: label.into(),
            kind: PassKind::Verification,
            rewritten: 0,
            unchanged: total,
            deleted: 0,
            failed: 0,
            rounds: Some(1),
        },
    ]
}

fn switch(label: &str, to: Option<&str>) -> SwitchProof {
    SwitchProof {
        label: label.into(),
        to: to.map(str::to_string),
        evidence: "attributed".into(),
        detail: "each of the 2 API server replica(s), identified on its own /metrics, then left the canary as it was, over 49 fresh connections".into(),
        waited_seconds: 75.0,
    }
}

fn keys(l: &Ledger) -> Option<KeyVersions> {
    Some(summary::keys_of(l))
}

fn rotate_twice() -> Seq {
    let mut s = Seq::run(
        "rotate-twice",
        "Rotate the KMS key twice, re-encrypting every Secret after each rotation, so the oldest version can be retired",
        15,
    );
    let why = "AKS restarts the API servers with the new KMS configuration; only then can they be shown writing with it";
    for (r, (first, key)) in [(1, K1), (8, K2)].into_iter().enumerate() {
        let label = format!("rotation {} of 2", r + 1);
        s.step(first, "plant-canary", Seq::agree, "");
        s.step(
            first + 1,
            "rotate-key",
            |_| {},
            &format!("new version {key}"),
        );
        s.step(
            first + 2,
            "update-kms",
            |s| {
                s.operation(
                    "Azure's operation changing securityProfile.azureKeyVaultKms",
                    why,
                    50,
                )
            },
            "cluster updated",
        );
        s.step(
            first + 3,
            "verify-kms",
            |_| {},
            "securityProfile.azureKeyVaultKms is as asked",
        );
        s.step(
            first + 4,
            "prove-key-switch",
            |s| s.proof(&format!("writes with {key}")),
            &format!("every API server replica writes with {key} (proven by each replica's own writes after 75s)"),
        );
        s.step(
            first + 5,
            "reencrypt",
            |s| s.reencrypt(&label, 20001, 12),
            "20000 rewritten, 1 unchanged by the replica that served them, 0 deleted meanwhile; verification pass over fresh connections rewrote nothing (20001 unchanged)",
        );
        if r == 0 {
            s.step(7, "check-rotation-window", |_| {}, "");
        }
    }
    s.at(
        0,
        Event::StepSkipped {
            index: 14,
            step: "retire-oldest".into(),
            reason: "not asked for".into(),
        },
    );
    let l = ledger(&[
        (K0, true, true, false),
        (K1, true, true, false),
        (K2, false, false, false),
    ]);
    let mut p = passes("rotation 1 of 2", 20001);
    p.extend(passes("rotation 2 of 2", 20001));
    s.end(Summary {
        run_id: "20260101T000000Z-rotate-twice-abcdef".into(),
        procedure: "rotate-twice".into(),
        status: "succeeded".into(),
        seconds: s.t as f64,
        changed: vec![
            format!("new key version {K1}"),
            format!("KMS key now {K1}"),
            format!("new key version {K2}"),
            format!("KMS key now {K2}"),
        ],
        switches: vec![switch("rotation 1 of 2", Some(K1)), switch("rotation 2 of 2", Some(K2))],
        passes: p,
        keys: keys(&l),
        keys_error: None,
        next: Some(format!("az keyvault key set-attributes --enabled false --id {K0} (disables, never deletes, a version nothing needs any more)")),
    });
    s
}

fn disable() -> Seq {
    let mut s = Seq::run(
        "disable",
        "Disable KMS etcd encryption, prove the switch, re-encrypt every Secret out of the key",
        6,
    );
    s.step(1, "plant-canary", Seq::agree, "");
    s.step(
        2,
        "update-kms",
        |s| {
            s.operation(
                "Azure's operation changing securityProfile.azureKeyVaultKms",
                "AKS restarts the API servers with the new KMS configuration; only then can they be shown writing with it",
                35,
            )
        },
        "cluster updated",
    );
    s.step(
        3,
        "verify-kms",
        |_| {},
        "securityProfile.azureKeyVaultKms is as asked",
    );
    s.step(
        4,
        "prove-key-switch",
        |s| s.proof("writes without KMS"),
        "every API server replica writes without KMS (proven by each replica's own writes after 75s)",
    );
    s.step(5, "reencrypt", |s| s.reencrypt("", 3001, 3), "3000 rewritten, 1 unchanged by the replica that served them, 0 deleted meanwhile; verification pass over fresh connections rewrote nothing (3001 unchanged)");
    let l = ledger(&[(K1, true, true, false)]);
    s.end(Summary {
        run_id: "20260101T000000Z-disable-abcdef".into(),
        procedure: "disable".into(),
        status: "succeeded".into(),
        seconds: s.t as f64,
        changed: vec!["KMS now off".into()],
        switches: vec![switch("", None)],
        passes: passes("", 3001),
        keys: keys(&l),
        keys_error: None,
        next: None,
    });
    s
}

fn migrate_v2() -> Seq {
    let mut s = Seq::run(
        "migrate-v2",
        "Migrate KMS v1 to v2 (KMS off, rewrite, upgrade to 1.27+ one minor at a time, KMS on, rewrite)",
        12,
    );
    let kms = "AKS restarts the API servers with the new KMS configuration; only then can they be shown writing with it";
    s.step(1, "plant-canary", Seq::agree, "");
    s.step(
        2,
        "update-kms",
        |s| {
            s.operation(
                "Azure's operation changing securityProfile.azureKeyVaultKms",
                kms,
                40,
            )
        },
        "cluster updated",
    );
    s.step(
        3,
        "verify-kms",
        |_| {},
        "securityProfile.azureKeyVaultKms is as asked",
    );
    s.step(4, "prove-key-switch", |s| s.proof("writes without KMS"), "every API server replica writes without KMS (proven by each replica's own writes after 75s)");
    s.step(5, "reencrypt", |s| s.reencrypt("KMS off, 1 of 2", 5001, 4), "5000 rewritten, 1 unchanged by the replica that served them, 0 deleted meanwhile; verification pass over fresh connections rewrote nothing (5001 unchanged)");
    s.step(
        6,
        "upgrade-kubernetes",
        |s| {
            let w = s.wait(
                WaitKind::OtherOperation,
                "the operation already running on the cluster",
                "Azure accepts one operation at a time on a cluster: a change is made only once none runs",
                5400,
            );
            s.progress(w, 5, 5, 5400, Some("Updating"), None, None);
            s.wait_end(w, 20, 25, "provisioningState Succeeded");
            for (from, to) in [("1.25.11", "1.26.15"), ("1.26.15", "1.27.16")] {
                s.at(0, Event::Note { message: format!("upgrading Kubernetes {from} -> {to} (one minor version at a time; each takes a while on AKS)") });
                s.operation(
                    "Azure's operation changing kubernetesVersion",
                    &format!("AKS upgrades the control plane and every node pool to Kubernetes {to} (one minor version at a time; tens of minutes on AKS)"),
                    95,
                );
            }
        },
        "Kubernetes 1.25.11 -> 1.27.16 in 2 upgrade(s)",
    );
    s.step(7, "plant-canary", Seq::agree, "");
    s.step(
        8,
        "update-kms",
        |s| {
            s.operation(
                "Azure's operation changing securityProfile.azureKeyVaultKms",
                kms,
                40,
            )
        },
        "cluster updated",
    );
    s.step(
        9,
        "verify-kms",
        |_| {},
        "securityProfile.azureKeyVaultKms is as asked; KMS v2",
    );
    s.step(10, "prove-key-switch", |s| s.proof(&format!("writes with {K1}")), &format!("every API server replica writes with {K1} (proven by each replica's own writes after 75s)"));
    s.step(11, "reencrypt", |s| s.reencrypt("KMS on, 2 of 2", 5001, 4), "5000 rewritten, 1 unchanged by the replica that served them, 0 deleted meanwhile; verification pass over fresh connections rewrote nothing (5001 unchanged)");
    let l = ledger(&[(K0, true, true, false), (K1, false, false, false)]);
    let mut p = passes("KMS off, 1 of 2", 5001);
    p.extend(passes("KMS on, 2 of 2", 5001));
    s.end(Summary {
        run_id: "20260101T000000Z-migrate-v2-abcdef".into(),
        procedure: "migrate-v2".into(),
        status: "succeeded".into(),
        seconds: s.t as f64,
        changed: vec![
            "KMS now off".into(),
            "Kubernetes 1.25.11 -> 1.27.16".into(),
            format!("KMS key now {K1}"),
        ],
        switches: vec![
            switch("KMS off, 1 of 2", None),
            switch("KMS on, 2 of 2", Some(K1)),
        ],
        passes: p,
        keys: keys(&l),
        keys_error: None,
        next: None,
    });
    s
}

#[test]
fn rotate_twice_plain() {
    insta::assert_snapshot!(plain(&rotate_twice()));
}

#[test]
fn rotate_twice_terminal() {
    insta::assert_snapshot!(terminal(&rotate_twice()));
}

#[test]
fn disable_plain() {
    insta::assert_snapshot!(plain(&disable()));
}

#[test]
fn disable_terminal() {
    insta::assert_snapshot!(terminal(&disable()));
}

#[test]
fn migrate_v2_plain() {
    insta::assert_snapshot!(plain(&migrate_v2()));
}

#[test]
fn migrate_v2_terminal() {
    insta::assert_snapshot!(terminal(&migrate_v2()));
}

/// What the snapshots show, checked without them: a log never goes 10 s without a line while
/// something is waited for, and every wait and pass is cleared from the terminal when it ends.
#[test]
fn plain_lines_come_at_least_every_ten_seconds_and_the_terminal_ends_cleared() {
    for seq in [rotate_twice(), disable(), migrate_v2()] {
        let text = plain(&seq);
        let times: Vec<u64> = text
            .lines()
            .filter_map(|l| l.trim_start().split_once("s ")?.0.parse().ok())
            .collect();
        let gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        assert!(gap <= 10, "a gap of {gap}s:\n{text}");
        assert!(text.contains("must stay alive"), "{text}");
        let mut lines = Lines::terminal();
        for (_, e) in &seq.events {
            lines.apply(e);
        }
        assert!(lines.live().is_empty(), "{:?}", lines.live());
    }
}
