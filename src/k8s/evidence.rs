//! What the probes of the canary add up to. Pure logic, so every rule is unit-tested:
//! - the replica set is every live identity Lease and every replica that answered on /metrics
//!   lately (a Lease may be missing while a replica restarts, or never map to a /metrics id);
//! - each write of the canary starts a new window; a replica joins the window's agreement when
//!   it leaves the canary as it is (it writes with the key the canary is now under);
//! - ATTRIBUTED evidence: the canary was last written, after the change, with a key other than
//!   the one it was made current under, and every replica of the set agreed since, over enough
//!   fresh connections that a replica nobody knows of would have been met too;
//! - TIME-BASED evidence (some replica cannot be attributed): an unchanged PUT rewrote the canary
//!   after the change, then no fresh-connection PUT rewrote it for a full upstream status period
//!   and margin, and there were enough of those PUTs.

use super::probe::{Outcome, Probe, WriteKey};
use super::replicas::LeaseReplica;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A replica seen on /metrics this recently still counts as live.
const SEEN_WITHIN: Duration = Duration::from_secs(60);

/// kube-apiserver asks a healthy KMS v2 plugin for its key id once a minute (hard-coded
/// upstream); no period given on the command line may make a time-based proof shorter.
pub const UPSTREAM_STATUS_PERIOD: Duration = Duration::from_secs(60);

/// Fresh-connection probes needed so that a replica the set does not know of (one more than
/// known) is missed with probability below one in a million, even if the balancer keeps a new
/// connection on the previous one's replica half of the time.
pub fn probes_needed(known: usize) -> u32 {
    let n = (known.max(1) + 1) as f64;
    let miss_per_probe = 1.0 - 0.5 / n;
    (1e-6f64.ln() / miss_per_probe.ln()).ceil() as u32
}

/// The quiet time of time-based evidence: one and a half status periods plus network margin,
/// the period never shorter than upstream's.
pub fn settle(status_period: Duration) -> Duration {
    status_period.max(UPSTREAM_STATUS_PERIOD).mul_f64(1.5) + Duration::from_secs(2)
}

/// The key id hashes kube-apiserver may label a key id with: its metric hashes the key id the
/// plugin's Status returns, and a plugin may return the key's URL or a hash of it, in the case
/// it was given or normalised.
pub fn key_hashes(key_id: &str) -> BTreeSet<String> {
    let trimmed = key_id.trim().trim_end_matches('/');
    let mut out = BTreeSet::new();
    for form in [
        key_id.to_string(),
        trimmed.to_string(),
        trimmed.to_ascii_lowercase(),
    ] {
        let once = super::replicas::id_hash(&form);
        let hex = once.trim_start_matches("sha256:").to_string();
        out.insert(super::replicas::id_hash(&hex));
        out.insert(once);
    }
    out
}

/// What the replicas must be shown writing with after the change.
#[derive(Clone, Debug, Default)]
pub struct Expected {
    /// None: not known (any key but the old one). Some(None): no KMS v2 key (KMS off).
    /// Some(Some(id)): that key.
    pub to: Option<Option<String>>,
    /// Hashes of the other keys kmsctl knows of (the key ledger's, the one in service at plant
    /// time): a write with one of them is not the switch asked for, whatever else it is.
    pub others: BTreeSet<String>,
}

impl Expected {
    pub fn new(to: Option<Option<String>>, known: &[String]) -> Self {
        let own = match &to {
            Some(Some(k)) => key_hashes(k),
            _ => BTreeSet::new(),
        };
        let others = known
            .iter()
            .flat_map(|k| key_hashes(k))
            .filter(|h| !own.contains(h))
            .collect();
        Expected { to, others }
    }

    /// Whether a write with `key` is a write with the key asked for (as far as can be told).
    pub fn accepts(&self, key: &WriteKey) -> bool {
        match (&self.to, key) {
            (None, _) => true,
            (Some(None), k) => *k == WriteKey::NotKmsV2,
            (Some(Some(_)), WriteKey::NotKmsV2) => false,
            (Some(Some(id)), WriteKey::Kms(h)) => {
                key_hashes(id).contains(h) || !self.others.contains(h)
            }
        }
    }
}

/// The replicas known to serve the cluster's address.
#[derive(Debug, Default)]
pub struct ReplicaSet {
    leases: Vec<LeaseReplica>,
    /// The most live Leases seen at once.
    pub most_leases: usize,
    seen: BTreeMap<String, Instant>,
}

impl ReplicaSet {
    pub fn leases_read(&mut self, leases: Vec<LeaseReplica>) {
        self.most_leases = self.most_leases.max(leases.len());
        self.leases = leases;
    }

    pub fn answered(&mut self, replica: &str, now: Instant) {
        self.seen.insert(replica.to_string(), now);
    }

    /// Every replica: a Lease counts as the /metrics id it maps to, or as itself when it maps to
    /// none seen (then it can never be attributed, and only time-based evidence can cover it).
    pub fn members(&self, now: Instant) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .seen
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) < SEEN_WITHIN)
            .map(|(r, _)| r.clone())
            .collect();
        for l in &self.leases {
            match l.hashes.iter().find(|h| self.seen.contains_key(*h)) {
                Some(h) => out.insert(h.clone()),
                None => out.insert(format!("lease:{}", l.name)),
            };
        }
        out
    }

    pub fn leases(&self) -> usize {
        self.leases.len()
    }

    /// Replicas seen on /metrics lately.
    pub fn answering(&self, now: Instant) -> usize {
        self.seen
            .values()
            .filter(|at| now.saturating_duration_since(**at) < SEEN_WITHIN)
            .count()
    }

    /// Said in the output when the Leases and /metrics disagree about how many replicas there are.
    pub fn disagreement(&self, now: Instant) -> Option<String> {
        let (leases, answering) = (self.leases(), self.answering(now));
        (answering > 0 && leases != answering).then(|| {
            format!("{leases} live identity Lease(s) but {answering} replica(s) answered on /metrics; the proof covered every one of both")
        })
    }
}

/// What a wave showed besides evidence.
#[derive(Debug, PartialEq, Eq)]
pub struct WaveSeen {
    /// A probe found the canary deleted.
    pub missing: bool,
    /// Another writer changed the canary: what was seen before no longer counts.
    pub voided: bool,
}

/// What the probes of one proof showed so far.
#[derive(Debug)]
pub struct Chain {
    /// The key the canary was made current under before the change (None: not attributed).
    pub old: Option<WriteKey>,
    /// The key of the canary's last write, where attributed.
    pub current: Option<WriteKey>,
    /// Writes of the canary after the change that show a replica writing with a new key.
    pub flips: u32,
    pub last_write: Instant,
    /// Replicas that left the canary as it is since its last write (or made that write).
    pub agree: BTreeSet<String>,
    /// Fresh-connection probes since the last write.
    pub probes: u32,
}

impl Chain {
    pub fn new(old: Option<WriteKey>, now: Instant) -> Self {
        Chain {
            old,
            current: None,
            flips: 0,
            last_write: now,
            agree: BTreeSet::new(),
            probes: 0,
        }
    }

    /// Adds one probe. A write by an unchanged PUT shows a key change; by a touch, only the key
    /// used.
    pub fn observe(&mut self, p: &Probe, now: Instant) {
        let unchanged = !p.touched;
        match p.outcome {
            Outcome::NoOp => {
                self.probes += 1;
                if let Some(r) = &p.replica {
                    self.agree.insert(r.clone());
                }
            }
            Outcome::Written => {
                let new_key = match (&p.wrote_with, &self.old) {
                    (Some(k), Some(old)) => k != old,
                    // Not attributed: an unchanged PUT that wrote shows another key than the
                    // canary's; a touch shows nothing.
                    _ => unchanged,
                };
                if new_key {
                    self.flips += 1;
                }
                // A replica shown writing with the old key: whatever flipped before, the switch
                // is not shown until a write with another key comes after this one.
                if p.wrote_with.is_some() && p.wrote_with == self.old {
                    self.flips = 0;
                }
                self.current = p.wrote_with.clone().filter(|_| p.replica.is_some());
                self.agree = p.replica.iter().cloned().collect();
                self.probes = 1;
                self.last_write = now;
            }
            Outcome::ChangedByOthers => self.void(now),
            Outcome::Missing | Outcome::Retry => {}
        }
    }

    /// Adds a wave of probes sent at once, all expecting the canary at one version. Those that
    /// left it as it was did so before any write of the wave (a later one would have seen the
    /// new version), so they count first; at most one can write (the server's version check);
    /// a probe that saw the version that write made saw kmsctl's own write, not another writer's.
    pub fn observe_wave(&mut self, wave: &[Probe], now: Instant) -> WaveSeen {
        for p in wave.iter().filter(|p| p.outcome == Outcome::NoOp) {
            self.observe(p, now);
        }
        let written: Vec<&Probe> = wave
            .iter()
            .filter(|p| p.outcome == Outcome::Written)
            .collect();
        for p in &written {
            self.observe(p, now);
        }
        let by_others = wave.iter().any(|p| {
            p.outcome == Outcome::ChangedByOthers
                && !written.iter().any(|w| w.rv.is_some() && w.rv == p.rv)
        });
        let voided = by_others || written.len() > 1;
        if voided {
            self.void(now);
        }
        WaveSeen {
            missing: wave.iter().any(|p| p.outcome == Outcome::Missing),
            voided,
        }
    }

    /// The canary's version after a wave, as far as kmsctl knows it.
    pub fn version_after(wave: &[Probe], before: Option<String>) -> Option<String> {
        let by_outcome = |o: Outcome| wave.iter().find(|p| p.outcome == o && p.rv.is_some());
        by_outcome(Outcome::Written)
            .or_else(|| by_outcome(Outcome::ChangedByOthers))
            .or_else(|| by_outcome(Outcome::NoOp))
            .map(|p| p.rv.clone())
            .unwrap_or(before)
    }

    /// Someone else wrote the canary: nothing seen so far counts.
    pub fn void(&mut self, now: Instant) {
        self.flips = 0;
        self.current = None;
        self.agree.clear();
        self.probes = 0;
        self.last_write = now;
    }

    /// A flip was seen but its key not attributed, where /metrics answers: only a touch (a write
    /// whose counters show the key) can make the evidence attributed now, since replicas that
    /// agree never write again.
    pub fn needs_touch(&self, ask_metrics: bool) -> bool {
        ask_metrics && self.flips > 0 && self.current.is_none()
    }

    /// Every replica agrees on the canary's current key, attributed, over enough probes. With
    /// `need_flip`, that key must also be another than the one before the change; where it is
    /// attributed, it must be the key `expected` asks for.
    pub fn attributed(
        &self,
        replicas: &BTreeSet<String>,
        need_flip: bool,
        expected: &Expected,
    ) -> bool {
        let switched = !need_flip
            || (self.flips > 0
                && self
                    .current
                    .as_ref()
                    .is_some_and(|c| self.old.as_ref().is_none_or(|o| o != c)));
        let right_key = self.current.as_ref().is_none_or(|c| expected.accepts(c));
        switched
            && right_key
            && !replicas.is_empty()
            && replicas.is_subset(&self.agree)
            && self.probes >= probes_needed(replicas.len())
    }

    /// Time-based evidence: a flip, then quiet for `settle` over at least `probes` fresh PUTs.
    pub fn timed(&self, need_flip: bool, settle: Duration, probes: u32, now: Instant) -> bool {
        (self.flips > 0 || !need_flip)
            && now.saturating_duration_since(self.last_write) >= settle
            && self.probes >= probes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::probe::Metrics;

    fn probe(outcome: Outcome, replica: Option<&str>, key: Option<&str>) -> Probe {
        Probe {
            outcome,
            rv: None,
            replica: replica.map(str::to_string),
            wrote_with: key.map(|k| {
                if k == "none" {
                    WriteKey::NotKmsV2
                } else {
                    WriteKey::Kms(k.into())
                }
            }),
            metrics: Metrics::Readable,
            touched: false,
        }
    }

    fn touch(replica: &str, key: &str) -> Probe {
        Probe {
            touched: true,
            ..probe(Outcome::Written, Some(replica), Some(key))
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn agree_all(c: &mut Chain, replicas: &[&str], now: Instant) {
        for i in 0..probes_needed(replicas.len()) as usize {
            c.observe(
                &probe(Outcome::NoOp, Some(replicas[i % replicas.len()]), None),
                now,
            );
        }
    }

    #[test]
    fn enough_probes_to_meet_an_unknown_replica() {
        assert_eq!(probes_needed(1), 49);
        assert_eq!(probes_needed(2), 76);
        assert_eq!(probes_needed(3), 104);
        // P(miss) = (1 - 0.5/(n+1))^k < 1e-6
        for n in 1..10 {
            let k = probes_needed(n) as i32;
            assert!((1.0 - 0.5 / (n as f64 + 1.0)).powi(k) < 1e-6);
            assert!((1.0 - 0.5 / (n as f64 + 1.0)).powi(k - 1) >= 1e-6);
        }
    }

    #[test]
    fn no_period_shortens_the_quiet_time() {
        assert_eq!(settle(Duration::from_secs(1)), Duration::from_secs(92));
        assert_eq!(settle(Duration::from_secs(120)), Duration::from_secs(182));
    }

    #[test]
    fn a_write_with_the_new_key_then_every_replica_agreeing_proves() {
        let now = Instant::now();
        let mut c = Chain::new(Some(WriteKey::Kms("old".into())), now);
        c.observe(&probe(Outcome::Written, Some("a"), Some("new")), now);
        assert!(
            !c.attributed(&set(&["a", "b"]), true, &Expected::default()),
            "b not heard yet"
        );
        agree_all(&mut c, &["a", "b"], now);
        assert!(c.attributed(&set(&["a", "b"]), true, &Expected::default()));
        // A third replica that appears (its Lease came back) has not agreed.
        assert!(!c.attributed(&set(&["a", "b", "c"]), true, &Expected::default()));
    }

    #[test]
    fn agreement_on_the_old_key_is_not_a_switch() {
        let now = Instant::now();
        let mut c = Chain::new(Some(WriteKey::Kms("old".into())), now);
        // A touch shows replica a still writing with the old key.
        c.observe(&touch("a", "old"), now);
        agree_all(&mut c, &["a", "b"], now);
        assert!(!c.attributed(&set(&["a", "b"]), true, &Expected::default()));
        assert!(
            c.attributed(&set(&["a", "b"]), false, &Expected::default()),
            "but they do agree"
        );
    }

    #[test]
    fn no_rewrite_no_switch() {
        let now = Instant::now();
        let mut c = Chain::new(Some(WriteKey::Kms("old".into())), now);
        agree_all(&mut c, &["a", "b"], now);
        assert!(!c.attributed(&set(&["a", "b"]), true, &Expected::default()));
        assert!(!c.timed(true, Duration::ZERO, 0, now + Duration::from_secs(999)));
    }

    #[test]
    fn a_flip_back_starts_the_window_again() {
        let now = Instant::now();
        let mut c = Chain::new(Some(WriteKey::Kms("old".into())), now);
        c.observe(&probe(Outcome::Written, Some("a"), Some("new")), now);
        agree_all(&mut c, &["a"], now);
        // b has not switched: it writes the canary back under the old key.
        c.observe(&probe(Outcome::Written, Some("b"), Some("old")), now);
        assert_eq!(c.agree, set(&["b"]));
        agree_all(&mut c, &["a", "b"], now);
        assert!(
            !c.attributed(&set(&["a", "b"]), true, &Expected::default()),
            "under the old key"
        );
    }

    #[test]
    fn an_unattributed_probe_adds_no_replica() {
        let now = Instant::now();
        let mut c = Chain::new(Some(WriteKey::Kms("old".into())), now);
        c.observe(&probe(Outcome::Written, None, None), now);
        for _ in 0..200 {
            c.observe(&probe(Outcome::NoOp, None, None), now);
        }
        assert!(!c.attributed(&set(&["a"]), true, &Expected::default()));
        assert!(c.current.is_none());
        // Time-based evidence needs the full quiet time and enough PUTs.
        let later = now + Duration::from_secs(92);
        assert!(c.timed(true, Duration::from_secs(92), 104, later));
        assert!(!c.timed(true, Duration::from_secs(92), 300, later));
        assert!(!c.timed(true, Duration::from_secs(93), 104, later));
    }

    #[test]
    fn disable_is_a_write_without_a_kms_v2_key() {
        let now = Instant::now();
        let mut c = Chain::new(Some(WriteKey::Kms("old".into())), now);
        c.observe(&probe(Outcome::Written, Some("a"), Some("none")), now);
        agree_all(&mut c, &["a"], now);
        assert!(c.attributed(&set(&["a"]), true, &Expected::default()));
    }

    #[test]
    fn another_writer_voids_everything() {
        let now = Instant::now();
        let mut c = Chain::new(Some(WriteKey::Kms("old".into())), now);
        c.observe(&probe(Outcome::Written, Some("a"), Some("new")), now);
        agree_all(&mut c, &["a"], now);
        c.observe(&probe(Outcome::ChangedByOthers, None, None), now);
        assert_eq!((c.flips, c.probes), (0, 0));
        assert!(!c.attributed(&set(&["a"]), true, &Expected::default()));
    }

    fn with_rv(mut p: Probe, rv: &str) -> Probe {
        p.rv = Some(rv.into());
        p
    }

    #[test]
    fn a_wave_counts_its_agreement_before_its_one_write() {
        let now = Instant::now();
        let mut c = Chain::new(Some(WriteKey::Kms("old".into())), now);
        let wave = [
            with_rv(probe(Outcome::NoOp, Some("a"), None), "1"),
            with_rv(probe(Outcome::Written, Some("b"), Some("new")), "2"),
            // Saw b's write: kmsctl's own, not another writer's.
            with_rv(probe(Outcome::ChangedByOthers, None, None), "2"),
        ];
        assert_eq!(
            c.observe_wave(&wave, now),
            WaveSeen {
                missing: false,
                voided: false
            }
        );
        assert_eq!(
            (c.flips, c.agree.clone()),
            (1, set(&["b"])),
            "a agreed with the old state"
        );
        assert_eq!(
            Chain::version_after(&wave, Some("1".into())).as_deref(),
            Some("2")
        );
        // Another writer's version voids the lot.
        let wave = [with_rv(probe(Outcome::ChangedByOthers, None, None), "9")];
        assert!(c.observe_wave(&wave, now).voided);
        assert_eq!((c.flips, c.probes), (0, 0));
    }

    #[test]
    fn only_the_key_asked_for_is_the_switch() {
        let new = "https://kv.vault.azure.net/keys/k/new";
        let stale = "https://kv.vault.azure.net/keys/k/stale";
        let e = Expected::new(Some(Some(new.into())), &[stale.into(), new.into()]);
        let h = |k: &str| WriteKey::Kms(crate::k8s::replicas::id_hash(k));
        assert!(e.accepts(&h(new)));
        // The key a plugin returns may be a hash of the URL: that is the same key.
        let hashed = crate::k8s::replicas::id_hash(new);
        assert!(e.accepts(&WriteKey::Kms(crate::k8s::replicas::id_hash(
            hashed.trim_start_matches("sha256:")
        ))));
        assert!(
            !e.accepts(&h(stale)),
            "an earlier rotation's key arriving late"
        );
        assert!(!e.accepts(&WriteKey::NotKmsV2), "KMS off is not an enable");
        assert!(
            e.accepts(&WriteKey::Kms("sha256:unknown".into())),
            "a hash no known key has"
        );
        let off = Expected::new(Some(None), &[new.into()]);
        assert!(off.accepts(&WriteKey::NotKmsV2));
        assert!(!off.accepts(&h(new)));
        // A chain that agrees on the stale key proves nothing.
        let now = Instant::now();
        let mut c = Chain::new(Some(WriteKey::Kms("old".into())), now);
        c.observe(
            &probe(
                Outcome::Written,
                Some("a"),
                Some(&crate::k8s::replicas::id_hash(stale)),
            ),
            now,
        );
        agree_all(&mut c, &["a"], now);
        assert!(!c.attributed(&set(&["a"]), true, &e));
        assert!(c.attributed(&set(&["a"]), true, &Expected::default()));
    }

    #[test]
    fn a_missing_lease_is_covered_by_metrics_and_an_unmapped_one_blocks_attribution() {
        let now = Instant::now();
        let mut s = ReplicaSet::default();
        s.leases_read(vec![LeaseReplica {
            name: "apiserver-a".into(),
            hashes: vec!["a".into()],
        }]);
        s.answered("a", now);
        s.answered("b", now);
        assert_eq!(s.members(now), set(&["a", "b"]));
        assert!(s.disagreement(now).is_some());
        s.leases_read(vec![LeaseReplica {
            name: "apiserver-x".into(),
            hashes: vec!["x".into()],
        }]);
        assert_eq!(s.members(now), set(&["a", "b", "lease:apiserver-x"]));
        // A replica not heard of for a minute has gone (its Lease went stale too).
        assert_eq!(
            s.members(now + Duration::from_secs(61)),
            set(&["lease:apiserver-x"])
        );
    }
}
