//! The twin's state: one AKS cluster, its Key Vault (vault resource and keys), role
//! assignments, issued tokens, and the Kubernetes storage. ARM resources are kept as raw JSON so
//! that fields the twin does not understand survive a GET -> PUT round trip, as on the real service.

use super::SimOptions;
use super::faults::FaultRule;
use super::objects::ObjectStore;
use super::secrets::SecretStore;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const AKS_API_DEFAULT: &str = "2025-10-01";
pub const KEY_NAME: &str = "kms-key";

/// Names and credentials of this twin's tenant; written to DIR/env for kmsctl.
#[derive(Clone, Debug)]
pub struct Ids {
    pub subscription: String,
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    pub resource_group: String,
    pub cluster: String,
    pub location: String,
    pub vault: String,
    /// The API server's own host name (the cluster's fqdn): unique per twin, so a kubeconfig
    /// of another twin is told apart as another AKS cluster's would be.
    pub api_server_host: String,
    pub kube_token: String,
    pub admin_token: String,
    pub identity_id: String,
    pub identity_principal: String,
    pub identity_client: String,
}

impl Ids {
    pub fn generate() -> Self {
        let u = || uuid::Uuid::new_v4().to_string();
        let subscription = u();
        let resource_group = "rg-kmsctl-twin".to_string();
        let identity_id = format!(
            "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aks-control-plane"
        );
        Ids {
            subscription,
            tenant: u(),
            client_id: u(),
            client_secret: format!("twin-secret-{}", uuid::Uuid::new_v4().simple()),
            resource_group,
            cluster: "aks-twin".into(),
            location: "westeurope".into(),
            vault: "kv-kmsctl-twin".into(),
            // As AKS names it: <dnsPrefix>-<8 hex>.hcp.<location>.azmk8s.io
            api_server_host: format!(
                "aks-twin-dns-{}.hcp.westeurope.azmk8s.io",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            kube_token: format!("twin-kube-{}", uuid::Uuid::new_v4().simple()),
            admin_token: format!("twin-admin-{}", uuid::Uuid::new_v4().simple()),
            identity_id,
            identity_principal: u(),
            identity_client: u(),
        }
    }
    pub fn cluster_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ContainerService/managedClusters/{}",
            self.subscription, self.resource_group, self.cluster
        )
    }
    pub fn vault_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.KeyVault/vaults/{}",
            self.subscription, self.resource_group, self.vault
        )
    }
    pub fn vault_host(&self) -> String {
        format!("{}.vault.azure.net", self.vault)
    }
}

/// One version of a Key Vault key.
#[derive(Clone, Debug)]
pub struct KeyVersion {
    pub version: String,
    pub kty: String,
    pub key_ops: Vec<String>,
    pub enabled: bool,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub created: i64,
    pub updated: i64,
    pub modulus: String,
    pub tags: Value,
}

#[derive(Clone, Debug, Default)]
pub struct KeyRecord {
    /// Oldest first; the last one is the current version.
    pub versions: Vec<KeyVersion>,
    pub rotation_policy: Option<Value>,
}

/// Why the KMS plugin cannot use a key version right now (the texts are the ones AKS shows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyProblem {
    Missing,
    Disabled,
    Expired,
}

/// A long-running ARM operation on the cluster.
#[derive(Clone, Debug)]
pub struct Operation {
    pub id: String,
    pub status: &'static str,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    pub error: Option<Value>,
}

/// What the KMS plugin reports over time: a storage label (`identity`, `kms:v1:<kid>`,
/// `kms:v2:<kid>`) from the moment the plugin reports it. The first entry is the twin's start.
#[derive(Clone, Debug)]
pub struct KmsTimeline {
    pub changes: Vec<(Instant, Arc<str>)>,
}

impl KmsTimeline {
    pub fn at(&self, t: Instant) -> Arc<str> {
        self.changes
            .iter()
            .rev()
            .find(|(from, _)| *from <= t)
            .or(self.changes.first())
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| Arc::from("identity"))
    }
}

pub use super::replicas::Replica;

pub struct World {
    pub ids: Ids,
    pub opts: SimOptions,
    pub cluster: Value,
    pub operations: HashMap<String, Operation>,
    pub running_op: Option<String>,
    pub vault: Value,
    pub keys: BTreeMap<String, KeyRecord>,
    pub role_assignments: Vec<Value>,
    /// Other clusters the credential can see (read-only), and the second subscription some of
    /// them are in ("" without a fleet).
    pub fleet: Vec<Value>,
    pub second_subscription: String,
    /// Container logs: (namespace, pod, container) -> (Unix time, line), oldest first.
    pub logs: BTreeMap<(String, String, String), Vec<(i64, String)>>,
    /// Microsoft.ManagedIdentity user-assigned identities (with their federated credentials
    /// under `federatedIdentityCredentials`).
    pub identities: Vec<Value>,
    /// With `--least-privilege`: what kmsctl's user and principal may do (None: everything).
    pub policy: Option<Arc<super::authz::Policy>>,
    /// Tokens Entra ID issued: one registry for a whole fleet (one tenant, one token endpoint).
    pub tokens: Tokens,
    /// How a client reaches this twin: its port (a kubeconfig's proxy-url) and CA, for the
    /// kubeconfigs Resource Manager hands out.
    pub endpoint: Endpoint,
    pub timeline: KmsTimeline,
    pub replicas: Vec<Replica>,
    pub balancer: super::replicas::BalancerState,
    pub started: Instant,
    pub started_unix: f64,
    pub objects: ObjectStore,
    pub faults: Vec<FaultRule>,
    pub fail_next_operations: u32,
}

/// Issued tokens: token -> (audience, valid until).
pub type Tokens = Arc<std::sync::Mutex<HashMap<String, (String, Instant)>>>;

/// The twin's address and CA, as a kubeconfig names them.
#[derive(Clone, Debug, Default)]
pub struct Endpoint {
    pub addr: String,
    pub ca_pem: String,
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn now_unix_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub fn new_etag() -> String {
    format!("\"{}\"", uuid::Uuid::new_v4())
}

/// `1.33.2` -> (1, 33); tolerant of `1.33`.
pub fn minor_of(version: &str) -> Option<(u32, u32)> {
    let mut it = version.trim_start_matches('v').split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

pub fn random_modulus() -> String {
    use base64::Engine;
    let mut bytes = Vec::with_capacity(256);
    while bytes.len() < 256 {
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    bytes[0] |= 0x80;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes)
}

pub fn new_key_version(kty: &str, exp: Option<i64>) -> KeyVersion {
    let now = now_unix();
    KeyVersion {
        version: uuid::Uuid::new_v4().simple().to_string(),
        kty: kty.to_string(),
        key_ops: [
            "encrypt",
            "decrypt",
            "sign",
            "verify",
            "wrapKey",
            "unwrapKey",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        enabled: true,
        exp,
        nbf: None,
        created: now,
        updated: now,
        modulus: random_modulus(),
        tags: json!({}),
    }
}

impl World {
    pub fn new(ids: Ids, opts: SimOptions) -> Self {
        let exp = opts.key_expires_in.map(|d| now_unix() + d.as_secs() as i64);
        let mut key = KeyRecord::default();
        key.versions.push(new_key_version("RSA", exp));
        let mut keys = BTreeMap::new();
        keys.insert(KEY_NAME.to_string(), key);
        let cluster = super::resources::initial_cluster(&ids, &opts, &keys);
        let vault = super::resources::initial_vault(&ids, &opts);
        let role_assignments = super::resources::initial_role_assignments(&ids);
        let opts_seed = opts.seed;
        let mut w = World {
            ids,
            opts,
            cluster,
            operations: HashMap::new(),
            running_op: None,
            vault,
            keys,
            role_assignments,
            tokens: Default::default(),
            endpoint: Endpoint::default(),
            timeline: KmsTimeline {
                changes: Vec::new(),
            },
            replicas: Vec::new(),
            balancer: super::replicas::BalancerState {
                next_rr: 0,
                last: None,
                rng: super::seed::Rng::new(opts_seed),
            },
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            objects: ObjectStore::default(),
            faults: Vec::new(),
            fail_next_operations: 0,
            fleet: Vec::new(),
            second_subscription: String::new(),
            logs: BTreeMap::new(),
            identities: Vec::new(),
            policy: None,
        };
        if w.opts.least_privilege {
            w.policy = Some(Arc::new(super::authz::Policy::kmsctl()));
        }
        let members = w.opts.fleet.clone();
        super::fleet::seed(&mut w, &members);
        let label = w.label_for_cluster();
        w.timeline.changes.push((w.started, label.clone()));
        let n = w.opts.apiserver_replicas.max(1);
        let period = Duration::from_secs(w.opts.kms_status_period_seconds);
        let started = w.started;
        w.replicas = (0..n)
            // Spread over the period (a third of it in, then evenly), as replicas started at
            // different moments would be.
            .map(|i| {
                Replica::new(
                    started,
                    started + period.mul_f64((i as f64 + 1.0 / 3.0) / n as f64),
                )
            })
            .collect();
        // The replicas wrote the seeded Secrets: they hold that key's data key.
        if label.starts_with("kms:") {
            for r in &mut w.replicas {
                r.dek_cache.insert(label.clone());
            }
        }
        // A twin that starts in private mode starts with the endpoint AKS would have made.
        if let Err(e) = super::private_link::reconcile(&mut w) {
            tracing::warn!("the twin's private endpoint was not created: {e}");
        }
        w.objects.seed_system(&w.opts);
        let replicas = w.replicas.clone();
        w.objects.seed_apiserver_identities(&replicas);
        if let Some(s) = w.opts.scenario.clone()
            && let Err(e) = super::scenarios::apply(&mut w, &s)
        {
            tracing::error!("the twin could not stage scenario {s}: {e}");
        }
        w
    }

    pub fn kms(&self) -> Value {
        self.cluster
            .pointer("/properties/securityProfile/azureKeyVaultKms")
            .cloned()
            .unwrap_or(Value::Null)
    }

    pub fn kubernetes_version(&self) -> String {
        let p = &self.cluster["properties"];
        p["currentKubernetesVersion"]
            .as_str()
            .or(p["kubernetesVersion"].as_str())
            .unwrap_or("1.33.0")
            .to_string()
    }

    /// The storage label the API server uses with the cluster's current configuration.
    pub fn label_for_cluster(&self) -> Arc<str> {
        storage_label(&self.cluster)
    }

    /// The last status call of replica `r` at or before `now` (its start, before its first).
    pub fn last_status_call(&self, r: usize, now: Instant) -> Instant {
        let replica = &self.replicas[r % self.replicas.len()];
        let period = self.opts.kms_status_period_seconds;
        if period == 0 {
            return now.max(replica.booted);
        }
        let first = replica.first_status;
        if now < first {
            return replica.booted;
        }
        let period = Duration::from_secs(period);
        let calls = (now - first).as_secs_f64() / period.as_secs_f64();
        first + period.mul_f64(calls.floor())
    }

    /// The storage label replica `r` reports to Status now (the status metric's key).
    pub fn status_label(&self, r: usize, now: Instant) -> Arc<str> {
        self.timeline.at(self.last_status_call(r, now))
    }

    /// The storage label replica `r` writes with now: what the plugin reported at its last
    /// status call at least `write_lag_seconds` ago (an identity-first API server takes a new
    /// key id for writes only then); a replica that just started writes with what it learned
    /// at its start.
    pub fn replica_label(&self, r: usize, now: Instant) -> Arc<str> {
        let booted = self.replicas[r % self.replicas.len()].booted;
        let lagged = now
            .checked_sub(Duration::from_secs(self.opts.write_lag_seconds))
            .unwrap_or(booted)
            .max(booted);
        self.timeline.at(self.last_status_call(r, lagged))
    }

    /// The cluster's configuration changed: the plugin reports the new key after the
    /// configured propagation delay; each replica learns it at its next status call.
    pub fn plugin_changed(&mut self, label: Arc<str>) {
        let at = Instant::now() + Duration::from_secs(self.opts.kms_propagation_seconds);
        self.timeline.changes.push((at, label));
    }

    pub fn unix_of(&self, t: Instant) -> f64 {
        self.started_unix + t.saturating_duration_since(self.started).as_secs_f64()
    }

    /// The stored name of key `name` (Key Vault key names are case-insensitive).
    pub fn key_name(&self, name: &str) -> Option<String> {
        self.keys
            .keys()
            .find(|k| k.eq_ignore_ascii_case(name))
            .cloned()
    }

    /// Version `version` of key `name`, both compared case-insensitively as Key Vault does.
    pub fn key_version(&self, name: &str, version: &str) -> Option<&KeyVersion> {
        let name = self.key_name(name)?;
        let versions = &self.keys[&name].versions;
        if version.is_empty() {
            // A versionless key id (platform-managed rotation): the current version.
            return versions.last();
        }
        versions
            .iter()
            .find(|v| v.version.eq_ignore_ascii_case(version))
    }

    /// Looks up the key version a storage label names, as the KMS plugin would.
    pub fn key_problem(&self, label: &str, for_encrypt: bool) -> Option<KeyProblem> {
        let kid = label.splitn(3, ':').nth(2)?;
        let Some((name, version)) = parse_kid(kid, &self.ids.vault_host()) else {
            return Some(KeyProblem::Missing);
        };
        let Some(v) = self.key_version(&name, &version) else {
            return Some(KeyProblem::Missing);
        };
        if !v.enabled {
            return Some(KeyProblem::Disabled);
        }
        if for_encrypt && v.exp.is_some_and(|e| e <= now_unix()) {
            return Some(KeyProblem::Expired);
        }
        None
    }

    pub fn issue_token(&mut self, audience: &str) -> String {
        let token = format!("twin.{}", uuid::Uuid::new_v4().simple());
        let until = Instant::now() + Duration::from_secs(3600);
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.clone(), (audience.to_string(), until));
        token
    }

    pub fn token_ok(&self, token: &str, audience: &str) -> bool {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .is_some_and(|(aud, until)| aud == audience && Instant::now() < *until)
    }
}

/// The storage label a cluster resource's KMS configuration writes with: `identity` when KMS
/// is off, else `kms:v1:<keyId>` below Kubernetes 1.27 and `kms:v2:<keyId>` from 1.27.
pub fn storage_label(resource: &Value) -> Arc<str> {
    let kms = resource
        .pointer("/properties/securityProfile/azureKeyVaultKms")
        .unwrap_or(&Value::Null);
    if kms["enabled"].as_bool() != Some(true) {
        return Arc::from("identity");
    }
    let p = &resource["properties"];
    let version = p["currentKubernetesVersion"]
        .as_str()
        .or(p["kubernetesVersion"].as_str())
        .unwrap_or_default();
    let v2 = minor_of(version).is_some_and(|v| v >= (1, 27));
    let key_id = kms["keyId"].as_str().unwrap_or_default();
    Arc::from(format!("kms:{}:{key_id}", if v2 { "v2" } else { "v1" }).as_str())
}

/// `https://<vault>.vault.azure.net/keys/<name>/<version>` -> (name, version), when the host is ours.
pub fn parse_kid(kid: &str, vault_host: &str) -> Option<(String, String)> {
    let rest = kid.strip_prefix("https://")?;
    let mut parts = rest.split('/');
    let host = parts.next()?;
    if !host.eq_ignore_ascii_case(vault_host) || !parts.next()?.eq_ignore_ascii_case("keys") {
        return None;
    }
    let name = parts.next()?.to_string();
    // No version: a versionless key id (the current version).
    let version = parts.next().unwrap_or_default().to_string();
    if parts.next().is_some() {
        return None;
    }
    Some((name, version))
}

/// Shared handle the server tasks use. Secrets live apart from the rest so that the hot
/// re-encryption path does not contend with ARM and Key Vault traffic.
#[derive(Clone)]
pub struct Shared {
    pub world: Arc<std::sync::Mutex<World>>,
    pub secrets: Arc<std::sync::RwLock<SecretStore>>,
    pub write_limiter: Arc<super::ratelimit::WriteLimiter>,
}

impl Shared {
    pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn secrets_read(&self) -> std::sync::RwLockReadGuard<'_, SecretStore> {
        self.secrets.read().unwrap_or_else(|e| e.into_inner())
    }
    /// Restarts replica `r`: down for `down`, then back as a new incarnation (new ID and Lease).
    pub fn restart_replica(&self, r: usize, down: Duration) -> Result<(), String> {
        self.world().restart_replica(r, down)
    }
    pub fn secrets_write(&self) -> std::sync::RwLockWriteGuard<'_, SecretStore> {
        self.secrets.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the KMS plugin can do right now, snapshotted for one request.
pub struct KmsView {
    /// The storage label new writes get.
    pub write: Arc<str>,
    /// Why writes fail, with the message the API server would return.
    pub write_error: Option<String>,
    /// Why decrypting a KMS label fails: the vault cannot be reached (checked first, as the
    /// plugin's call fails before Key Vault looks at the key).
    unreachable: Option<String>,
    /// Every key version the vault holds: (lowercase name, lowercase version) -> enabled.
    versions: HashMap<(String, String), bool>,
    vault_host: String,
    /// Labels the replica decrypts without the plugin (data keys it holds since it started).
    pub cached: std::collections::BTreeSet<Arc<str>>,
}

impl World {
    /// What the KMS plugin lets replica `replica` do now.
    pub fn kms_view(&self, replica: usize) -> KmsView {
        let write = self.replica_label(replica, Instant::now());
        let write_error = match self.key_problem(&write, true) {
            None => None,
            Some(KeyProblem::Expired) => {
                Some("KeyExpired: Operation encrypt is not allowed on an expired key".to_string())
            }
            Some(KeyProblem::Disabled) => {
                Some("KeyDisabled: Operation encrypt is not allowed on a disabled key".to_string())
            }
            Some(KeyProblem::Missing) => Some(format!(
                "KeyNotFound: the key version of {} was not found in the key vault",
                &write
            )),
        }
        .or_else(|| {
            write
                .starts_with("kms:")
                .then(|| super::private_link::unreachable(self))
                .flatten()
        });
        let versions = self
            .keys
            .iter()
            .flat_map(|(name, k)| {
                let current = k
                    .versions
                    .last()
                    .map(|v| ((name.to_ascii_lowercase(), String::new()), v.enabled));
                k.versions
                    .iter()
                    .map(move |v| {
                        (
                            (name.to_ascii_lowercase(), v.version.to_ascii_lowercase()),
                            v.enabled,
                        )
                    })
                    .chain(current)
            })
            .collect();
        KmsView {
            write,
            write_error,
            unreachable: super::private_link::unreachable_for_decrypt(self),
            versions,
            vault_host: self.ids.vault_host(),
            cached: self
                .replicas
                .get(replica)
                .map(|r| r.dek_cache.clone())
                .unwrap_or_default(),
        }
    }
}

impl KmsView {
    /// Why the plugin cannot decrypt what is stored under `label` (the API server's message),
    /// if it cannot: the vault is out of reach, or the key version is missing or disabled.
    pub fn decrypt_error(&self, label: &str) -> Option<String> {
        let kid = label
            .strip_prefix("kms:v2:")
            .or_else(|| label.strip_prefix("kms:v1:"))?;
        // Key Vault's refusals of a disabled or missing version are kept strict (as the twin
        // always modelled them); a vault out of reach matters only without the data key cached.
        let unreachable = self
            .unreachable
            .clone()
            .filter(|_| !self.cached.iter().any(|c| &**c == label));
        let problem = unreachable.or_else(|| {
            let found = parse_kid(kid, &self.vault_host).and_then(|(name, version)| {
                self.versions
                    .get(&(name.to_ascii_lowercase(), version.to_ascii_lowercase()))
            });
            match found {
                Some(true) => None,
                Some(false) => Some(
                    "KeyDisabled: Operation decrypt is not allowed on a disabled key".to_string(),
                ),
                None => Some(format!(
                    "KeyNotFound: the key version of {kid} was not found in the key vault"
                )),
            }
        })?;
        Some(format!(
            "Internal error occurred: failed to decrypt data: {problem}"
        ))
    }
}
