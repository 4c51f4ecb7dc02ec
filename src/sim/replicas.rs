//! The kube-apiserver replicas behind the cluster's one address, as kube-apiserver runs them:
//! each has an apiserver ID derived from its host name (`apiserver-` + 26 base32 characters),
//! announces itself with an identity Lease named after that ID, labels its metrics with the
//! SHA-256 of the ID, counts its writes and reads per KMS key id, and can restart (it is then
//! absent for a while and comes back as a new pod: new host name, new ID, new Lease, fresh
//! counters, and a Status call to its plugin at once). The balancer in front picks a live
//! replica for each new TCP connection.

use super::world::World;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the balancer in front of the replicas assigns each new TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Balancer {
    /// The next live replica in turn (replicas that are down are skipped).
    #[default]
    RoundRobin,
    /// A live replica chosen uniformly at random.
    Random,
    /// The previous connection's replica with probability 1/2 (while it is live), otherwise a
    /// live replica chosen uniformly at random: session affinity that re-balances now and then.
    Sticky,
}

/// `from_storage` (a stored object decoded) or `to_storage` (an object written).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transformation {
    FromStorage,
    ToStorage,
}

impl Transformation {
    pub fn as_str(self) -> &'static str {
        match self {
            Transformation::FromStorage => "from_storage",
            Transformation::ToStorage => "to_storage",
        }
    }
}

/// One replica. It learns the plugin's key only at its own periodic status calls, the first
/// `first_status`, then every status period, so two replicas switch at different moments.
#[derive(Clone, Debug)]
pub struct Replica {
    /// The apiserver ID (also its identity Lease's name).
    pub id: String,
    /// The Lease's `spec.holderIdentity`: `<ID>_<uuid>`.
    pub holder: String,
    pub hostname: String,
    /// When this incarnation started; before its first status call it writes with what the
    /// plugin reported then.
    pub booted: Instant,
    pub first_status: Instant,
    /// Down (restarting) until then.
    pub down_until: Option<Instant>,
    /// Bumped at each restart: connections made before it are the dead process's.
    pub generation: u64,
    /// (transformation, KMS v2 key id) -> (count, Unix time of the last use).
    pub counters: BTreeMap<(Transformation, Arc<str>), (u64, f64)>,
    /// When its identity Lease was found deleted (it recreates it some seconds later).
    pub lease_gone_since: Option<Instant>,
    /// Storage labels whose data key this incarnation holds in memory (it encrypted or
    /// decrypted with them): KMS v2 decrypts those without calling the plugin, so a vault out
    /// of reach stops its reads only of keys it has not used since it started.
    pub dek_cache: std::collections::BTreeSet<Arc<str>>,
}

/// `sha256:` + lowercase hex of SHA-256, as kube-apiserver labels key ids and apiserver IDs.
pub fn sha256_label(text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// kube-apiserver's ID for a host: `apiserver-` + lowercase unpadded base32 of the first 16
/// bytes of SHA-256(hostname) (26 characters).
pub fn apiserver_id(hostname: &str) -> String {
    use sha2::Digest;
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let digest = sha2::Sha256::digest(hostname.as_bytes());
    let (mut bits, mut acc, mut out) = (0u32, 0u32, String::with_capacity(26));
    for b in &digest[..16] {
        acc = (acc << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    format!("apiserver-{out}")
}

impl Replica {
    pub fn new(booted: Instant, first_status: Instant) -> Self {
        // An AKS control-plane pod's name: a new one at each restart.
        let hostname = format!(
            "kube-apiserver-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let id = apiserver_id(&hostname);
        Replica {
            holder: format!("{id}_{}", uuid::Uuid::new_v4()),
            id,
            hostname,
            booted,
            first_status,
            down_until: None,
            generation: 0,
            counters: BTreeMap::new(),
            lease_gone_since: None,
            dek_cache: Default::default(),
        }
    }

    pub fn up(&self, now: Instant) -> bool {
        self.down_until.is_none_or(|t| t <= now)
    }

    pub fn id_hash(&self) -> String {
        sha256_label(&self.id)
    }
}

fn rfc3339_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

pub fn identity_lease(r: &Replica) -> serde_json::Value {
    let now = rfc3339_now();
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": r.id, "namespace": "kube-system",
                      "labels": { "apiserver.kubernetes.io/identity": "kube-apiserver", "kubernetes.io/hostname": r.hostname } },
        "spec": { "holderIdentity": r.holder, "leaseDurationSeconds": 3600, "acquireTime": now, "renewTime": now }
    })
}

impl World {
    /// Brings the replicas up to `now`: a restarted replica whose down time is over comes back
    /// as a new incarnation, and a live replica recreates its identity Lease
    /// `lease_recreate_seconds` after it went missing. Called before anything observes them.
    pub fn tick(&mut self, now: Instant) {
        let recreate = Duration::from_secs(self.opts.lease_recreate_seconds);
        for i in 0..self.replicas.len() {
            if let Some(back) = self.replicas[i].down_until.filter(|t| *t <= now) {
                let generation = self.replicas[i].generation;
                // A starting kube-apiserver calls its plugin's Status at once.
                let mut fresh = Replica::new(back, back);
                fresh.generation = generation;
                self.objects
                    .create("leases", "kube-system", identity_lease(&fresh))
                    .ok();
                self.replicas[i] = fresh;
            }
            let r = &self.replicas[i];
            if !r.up(now) {
                continue;
            }
            let present = self.objects.get("leases", "kube-system", &r.id).is_some();
            match (present, r.lease_gone_since) {
                (true, _) => self.replicas[i].lease_gone_since = None,
                (false, None) => self.replicas[i].lease_gone_since = Some(now),
                (false, Some(since)) if now >= since + recreate => {
                    let lease = identity_lease(&self.replicas[i]);
                    self.objects.create("leases", "kube-system", lease).ok();
                    self.replicas[i].lease_gone_since = None;
                }
                (false, Some(_)) => {}
            }
        }
    }

    /// A Lease of replica `holder` was deleted now (so it is recreated on time, not from when
    /// the twin next noticed).
    pub fn lease_deleted(&mut self, name: &str) {
        let now = Instant::now();
        if let Some(r) = self.replicas.iter_mut().find(|r| r.id == name) {
            r.lease_gone_since = Some(now);
        }
    }

    /// The replica the balancer sends a new connection to, and its incarnation.
    pub fn pick_replica(&mut self) -> (usize, u64) {
        let now = Instant::now();
        self.tick(now);
        let n = self.replicas.len();
        let live: Vec<usize> = (0..n).filter(|i| self.replicas[*i].up(now)).collect();
        let pick = if live.is_empty() {
            // Every replica is down: the connection reaches one that answers 503.
            self.balancer.next_rr % n
        } else {
            match self.opts.balancer {
                Balancer::RoundRobin => (0..n)
                    .map(|k| (self.balancer.next_rr + k) % n)
                    .find(|i| live.contains(i))
                    .unwrap_or(live[0]),
                Balancer::Random => live[self.balancer.rng.below(live.len() as u64) as usize],
                Balancer::Sticky => match self.balancer.last {
                    Some(last) if live.contains(&last) && self.balancer.rng.below(2) == 0 => last,
                    _ => live[self.balancer.rng.below(live.len() as u64) as usize],
                },
            }
        };
        self.balancer.next_rr = pick + 1;
        self.balancer.last = Some(pick);
        (pick, self.replicas[pick].generation)
    }

    /// Whether a connection made to incarnation `generation` of replica `r` is still served.
    pub fn serving(&mut self, r: usize, generation: u64) -> bool {
        let now = Instant::now();
        self.tick(now);
        self.replicas
            .get(r)
            .is_some_and(|x| x.generation == generation && x.up(now))
    }

    /// Replica `r` stops now for `down`: no new connection reaches it, its connections answer
    /// 503, its Lease is no longer renewed; then it comes back as a new incarnation.
    pub fn restart_replica(&mut self, r: usize, down: Duration) -> Result<(), String> {
        let n = self.replicas.len();
        let replica = self
            .replicas
            .get_mut(r)
            .ok_or_else(|| format!("no replica {r}: the twin has {n} (0..{n})"))?;
        replica.down_until = Some(Instant::now() + down);
        replica.generation += 1;
        replica.counters.clear();
        replica.dek_cache.clear();
        Ok(())
    }

    /// Counts `n` uses of the key a storage label names by replica `r` (KMS v2 only, as
    /// kube-apiserver's envelope metrics).
    pub fn count_use(&mut self, r: usize, t: Transformation, label: &str, n: u64) {
        if n == 0 {
            return;
        }
        if label.starts_with("kms:")
            && let Some(replica) = self.replicas.get_mut(r)
            && !replica.dek_cache.contains(label)
        {
            replica.dek_cache.insert(Arc::from(label));
        }
        let Some(kid) = label.strip_prefix("kms:v2:") else {
            return;
        };
        let at = super::world::now_unix_f64();
        if let Some(replica) = self.replicas.get_mut(r) {
            let entry = replica
                .counters
                .entry((t, Arc::from(kid)))
                .or_insert((0, at));
            entry.0 += n;
            entry.1 = at;
        }
    }
}

/// The balancer's own state.
pub struct BalancerState {
    pub next_rr: usize,
    pub last: Option<usize>,
    pub rng: super::seed::Rng,
}

/// The write counters of replica `r`, in kube-apiserver's exposition format.
pub fn counter_metrics(r: &Replica) -> String {
    let total = "apiserver_envelope_encryption_key_id_hash_total";
    let last = "apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds";
    let mut out = format!(
        "# HELP {total} [ALPHA] Number of times a keyID is used split by transformation type, provider, and apiserver identity.\n# TYPE {total} counter\n"
    );
    let apiserver = r.id_hash();
    let labels = |t: &Transformation, kid: &str| {
        format!(
            "{{apiserver_id_hash=\"{apiserver}\",key_id_hash=\"{}\",provider_name=\"azurekmsprovider\",transformation_type=\"{}\"}}",
            sha256_label(kid),
            t.as_str()
        )
    };
    for ((t, kid), (n, _)) in &r.counters {
        out.push_str(&format!("{total}{} {n}\n", labels(t, kid)));
    }
    out.push_str(&format!(
        "# HELP {last} [ALPHA] The last time in seconds when a keyID was used.\n# TYPE {last} gauge\n"
    ));
    for ((t, kid), (_, at)) in &r.counters {
        out.push_str(&format!("{last}{} {at:.3}\n", labels(t, kid)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apiserver_ids_are_26_base32_characters_of_the_host_hash() {
        let id = apiserver_id("aks-control-plane-0");
        let suffix = id.strip_prefix("apiserver-").unwrap();
        assert_eq!(suffix.len(), 26);
        assert!(suffix.chars().all(|c| matches!(c, 'a'..='z' | '2'..='7')));
        assert_eq!(id, apiserver_id("aks-control-plane-0"));
        assert_ne!(id, apiserver_id("aks-control-plane-1"));
        // RFC 4648 base32 of 16 zero bytes is 26 'A's; the first 5 bits of SHA-256("") are 11100.
        assert!(apiserver_id("").starts_with("apiserver-4"));
    }
}
