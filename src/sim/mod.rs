//! `kmsctl sim`: a local, faithful twin of Azure Resource Manager (managedClusters, vaults, role
//! assignments), the Key Vault keys data plane, Entra ID's token endpoint and a Kubernetes API
//! server whose Secret storage remembers which key encrypted each object. Everything is served
//! over TLS on one port under the real host names; see `Twin::env_lines` for what a client needs.

mod admin;
mod aks_rules;
mod arm;
mod arm_keys;
mod authz;
pub mod credentials;
mod entra;
pub mod faults;
pub mod fleet;
pub mod fleet_members;
mod http;
mod identities;
mod keyvault;
mod kubeapi;
mod missing;
mod objects;
pub mod operator_network;
mod private_link;
mod protobuf;
mod ratelimit;
pub mod replicas;
mod resources;
pub mod scenarios;
pub mod secrets;
mod seed;
mod server;
mod tls;
mod tunnel;
pub mod world;

use anyhow::Context;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkAccess {
    Public,
    Private,
}

impl NetworkAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkAccess::Public => "Public",
            NetworkAccess::Private => "Private",
        }
    }
}

/// How the twin's world starts and behaves.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub kubernetes_version: String,
    pub kms: bool,
    pub network_access: NetworkAccess,
    pub vnet_integration: bool,
    pub konnectivity: bool,
    pub system_assigned_identity: bool,
    pub apiserver_guard: bool,
    pub namespaces: usize,
    pub secrets: usize,
    pub latency_ms: u64,
    pub lro_seconds: u64,
    pub kms_propagation_seconds: u64,
    /// kube-apiserver replicas behind the cluster's one address (each connection is served by one).
    pub apiserver_replicas: usize,
    /// How often each replica asks its KMS plugin for the key id (0: at once).
    pub kms_status_period_seconds: u64,
    /// How the balancer assigns each new connection to a live replica.
    pub balancer: replicas::Balancer,
    /// A replica writes with a key id this long after its Status call first returned it (0: at
    /// once), as an API server configured identity-first does.
    pub write_lag_seconds: u64,
    /// A replica recreates its deleted identity Lease this long after (kube-apiserver: ~10 s).
    pub lease_recreate_seconds: u64,
    /// Whether /metrics answers (on AKS a user may be denied it).
    pub metrics_readable: bool,
    pub write_qps: Option<f64>,
    pub key_expires_in: Option<Duration>,
    pub continue_ttl_seconds: u64,
    pub faults: Vec<faults::FaultRule>,
    pub seed: u64,
    /// Other clusters the credential can see, each with its own key (fleet-wide checks).
    pub fleet: Vec<fleet::Member>,
    /// A Secrets Provider scenario to stage (`kmsctl sim scenarios`).
    pub scenario: Option<String>,
    /// Grant kmsctl's Kubernetes user and Azure principal only what `kmsctl rbac` prints.
    pub least_privilege: bool,
    /// Where kmsctl's requests to the vault's data plane come from.
    pub operator_network: operator_network::OperatorNetwork,
    /// Serve a fleet of complete clusters instead of one (`--fleet-clusters N` and the
    /// `--fleet-*` counts); every other option applies to each member.
    pub fleet_clusters: fleet_members::FleetSpec,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            kubernetes_version: "1.33.5".into(),
            kms: true,
            network_access: NetworkAccess::Public,
            vnet_integration: false,
            konnectivity: true,
            system_assigned_identity: false,
            apiserver_guard: false,
            namespaces: 10,
            secrets: 1000,
            latency_ms: 0,
            lro_seconds: 5,
            kms_propagation_seconds: 0,
            apiserver_replicas: 1,
            kms_status_period_seconds: 0,
            balancer: replicas::Balancer::RoundRobin,
            write_lag_seconds: 0,
            lease_recreate_seconds: 10,
            metrics_readable: true,
            write_qps: None,
            key_expires_in: None,
            continue_ttl_seconds: 300,
            faults: Vec::new(),
            seed: 1,
            fleet: Vec::new(),
            scenario: None,
            least_privilege: false,
            operator_network: Default::default(),
            fleet_clusters: Default::default(),
        }
    }
}

/// A running twin.
pub struct Twin {
    pub addr: SocketAddr,
    /// The (first) cluster's world.
    pub shared: world::Shared,
    /// Every cluster's world (one for a single-cluster twin).
    pub members: fleet_members::Members,
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Twin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A world with its Secrets seeded.
fn member(w: world::World) -> world::Shared {
    let opts = &w.opts;
    let write_limiter = Arc::new(ratelimit::WriteLimiter::new(opts.write_qps));
    let (secret_count, namespace_count, seed_value) =
        (opts.secrets, opts.namespaces.max(1), opts.seed);
    let label = w.label_for_cluster();
    let mut store = secrets::SecretStore::default();
    let mut rng = seed::Rng::new(seed_value);
    for i in 0..secret_count {
        let ns = seed::namespace_name(i % namespace_count);
        store.insert_seeded(
            &ns,
            seed::secret(&mut rng, &ns, i / namespace_count),
            label.clone(),
        );
    }
    for i in 0..namespace_count.min(secret_count.max(namespace_count)) {
        store.namespaces.insert(seed::namespace_name(i));
    }
    world::Shared {
        world: Arc::new(std::sync::Mutex::new(w)),
        secrets: Arc::new(std::sync::RwLock::new(store)),
        write_limiter,
    }
}

impl Twin {
    /// One cluster, or a fleet of them when `opts.fleet_clusters` names any.
    pub async fn start(opts: SimOptions) -> anyhow::Result<Twin> {
        let base = world::Ids::generate();
        let spec = opts.fleet_clusters.clone();
        let worlds: Vec<world::World> = if spec.total() == 0 {
            vec![world::World::new(base, opts.clone())]
        } else {
            let subs = [
                uuid::Uuid::new_v4().to_string(),
                uuid::Uuid::new_v4().to_string(),
            ];
            let tokens = world::Tokens::default();
            (1..=spec.total())
                .map(|i| {
                    let role = spec.role(i);
                    let ids = fleet_members::member_ids(&base, &subs, &spec, i);
                    let mut o = opts.clone();
                    o.fleet = Vec::new();
                    o.faults = Vec::new();
                    o.fleet_clusters = Default::default();
                    if role.private_vault {
                        o.network_access = NetworkAccess::Private;
                        o.vnet_integration = true;
                        o.konnectivity = false;
                    }
                    let mut w = world::World::new(ids, o);
                    w.tokens = tokens.clone();
                    fleet_members::dress(&mut w, role);
                    w
                })
                .collect()
        };
        let hosts: Vec<String> = worlds
            .iter()
            .map(|w| w.ids.api_server_host.clone())
            .collect();
        let tls = tls::generate(&hosts).context("generating the twin's certificates")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the twin's port")?;
        let addr = listener.local_addr()?;
        let list: Vec<world::Shared> = worlds
            .into_iter()
            .map(|mut w| {
                w.endpoint = world::Endpoint {
                    addr: addr.to_string(),
                    ca_pem: tls.ca_pem.clone(),
                };
                member(w)
            })
            .collect();
        let members = fleet_members::Members::new(list, spec.total() > 0);
        if members.fleet {
            members
                .faults
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(opts.faults.iter().cloned());
        }
        let shared = members.first().clone();
        let task = tokio::spawn(server::serve(listener, tls.server.clone(), members.clone()));
        Ok(Twin {
            addr,
            shared,
            members,
            ca_pem: tls.ca_pem,
            ca_der: tls.ca_der,
            task,
        })
    }

    /// A fleet of `n` rotatable clusters (see `fleet_members::FleetSpec` for the others).
    pub async fn start_fleet(mut opts: SimOptions, n: usize) -> anyhow::Result<Twin> {
        opts.fleet_clusters.clusters = n;
        Twin::start(opts).await
    }

    /// The member named `name` (a fleet's cluster), if there is one.
    pub fn member(&self, name: &str) -> Option<&world::Shared> {
        self.members.by_name(name).map(|i| &self.members.list[i])
    }

    /// `sim inspect --all`: every cluster's state, in member order.
    pub fn inspect_all(&self) -> Value {
        let clusters: Vec<Value> = self.members.list.iter().map(admin::inspect).collect();
        serde_json::json!({ "clusters": clusters })
    }

    pub fn ids(&self) -> world::Ids {
        self.shared.world().ids.clone()
    }

    pub fn inspect(&self) -> Value {
        admin::inspect(&self.shared)
    }

    /// Adds fault rules: to the cluster, or to every member of a fleet.
    pub fn add_faults(&self, rules: Vec<faults::FaultRule>) {
        if self.members.fleet {
            self.members
                .faults
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(rules);
        } else {
            self.shared.world().faults.extend(rules);
        }
    }

    /// Adds fault rules for one member of a fleet (its ARM paths, vault and API server).
    pub fn add_faults_to(&self, name: &str, rules: Vec<faults::FaultRule>) -> anyhow::Result<()> {
        let m = self
            .member(name)
            .with_context(|| format!("the twin has no cluster '{name}'"))?;
        m.world().faults.extend(rules);
        Ok(())
    }

    /// The cluster's kubeconfig, as `az aks get-credentials` writes it, with the twin's port as
    /// the HTTP proxy that reaches the API server's host name (kubectl and kmsctl honour
    /// `proxy-url`; the name itself resolves nowhere, as a private cluster's would not).
    pub fn kubeconfig(&self) -> String {
        if self.members.fleet {
            return fleet_kubeconfig(self);
        }
        use base64::Engine;
        let ids = self.ids();
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {c}\n  cluster:\n    server: https://{host}\n    proxy-url: http://{addr}\n    certificate-authority-data: {ca}\ncontexts:\n- name: {c}\n  context:\n    cluster: {c}\n    user: clusterUser_{rg}_{c}\n    namespace: default\ncurrent-context: {c}\nusers:\n- name: clusterUser_{rg}_{c}\n  user:\n    token: {t}\n",
            c = ids.cluster,
            host = ids.api_server_host,
            addr = self.addr,
            rg = ids.resource_group,
            t = ids.kube_token
        )
    }

    /// The variables kmsctl needs to target this twin, `KEY=value` each.
    pub fn env_vars(&self, dir: &Path) -> Vec<(String, String)> {
        let ids = self.ids();
        if self.members.fleet {
            // Nothing names one cluster: kmsctl finds them through Resource Manager.
            return vec![
                ("AZURE_SUBSCRIPTION_ID".into(), ids.subscription),
                ("AZURE_TENANT_ID".into(), ids.tenant),
                ("AZURE_CLIENT_ID".into(), ids.client_id),
                ("AZURE_CLIENT_SECRET".into(), ids.client_secret),
                ("KMSCTL_AZURE_ROUTE".into(), self.addr.to_string()),
                (
                    "KMSCTL_CA_FILE".into(),
                    dir.join("ca.pem").display().to_string(),
                ),
            ];
        }
        vec![
            ("AZURE_SUBSCRIPTION_ID".into(), ids.subscription),
            ("AZURE_TENANT_ID".into(), ids.tenant),
            ("AZURE_CLIENT_ID".into(), ids.client_id),
            ("AZURE_CLIENT_SECRET".into(), ids.client_secret),
            ("KMSCTL_RESOURCE_GROUP".into(), ids.resource_group),
            ("KMSCTL_CLUSTER".into(), ids.cluster),
            (
                "KUBECONFIG".into(),
                dir.join("kubeconfig").display().to_string(),
            ),
            ("KMSCTL_AZURE_ROUTE".into(), self.addr.to_string()),
            (
                "KMSCTL_CA_FILE".into(),
                dir.join("ca.pem").display().to_string(),
            ),
        ]
    }

    /// Writes `ca.pem`, `kubeconfig`, `env` and `sim.json` (for `sim inspect` / `sim fault`).
    pub fn write_files(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let private = |name: &str, text: &str| -> anyhow::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let path = dir.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))
        };
        private("ca.pem", &self.ca_pem)?;
        private("kubeconfig", &self.kubeconfig())?;
        let env: String = self
            .env_vars(dir)
            .iter()
            .map(|(k, v)| format!("export {k}='{v}'\n"))
            .collect();
        private("env", &env)?;
        let sim = serde_json::json!({ "address": self.addr.to_string(), "adminToken": self.ids().admin_token, "pid": std::process::id() });
        private("sim.json", &sim.to_string())
    }
}

/// Every member's context (with its static admin token where local accounts are enabled), for
/// kubectl against a fleet twin.
fn fleet_kubeconfig(twin: &Twin) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(&twin.ca_pem);
    let (mut clusters, mut contexts, mut users) = (String::new(), String::new(), String::new());
    for m in twin.members.list.iter() {
        let w = m.world();
        if credentials::local_accounts_disabled(&w) {
            continue;
        }
        let c = &w.ids.cluster;
        clusters.push_str(&format!(
            "- name: {c}\n  cluster:\n    server: https://{}\n    proxy-url: http://{}\n    certificate-authority-data: {ca}\n",
            w.ids.api_server_host, twin.addr
        ));
        contexts.push_str(&format!(
            "- name: {c}\n  context:\n    cluster: {c}\n    user: clusterAdmin_{rg}_{c}\n",
            rg = w.ids.resource_group
        ));
        users.push_str(&format!(
            "- name: clusterAdmin_{rg}_{c}\n  user:\n    token: {}\n",
            w.ids.kube_token,
            rg = w.ids.resource_group
        ));
    }
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n{clusters}contexts:\n{contexts}users:\n{users}"
    )
}

/// What `sim inspect` prints for one cluster's world.
pub fn inspect_shared(shared: &world::Shared) -> Value {
    admin::inspect(shared)
}

/// Talks to a running twin's admin endpoints, from the files it wrote into DIR.
pub async fn admin_request(
    dir: &Path,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let sim: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("sim.json"))
            .with_context(|| format!("no running twin in {} (sim.json missing)", dir.display()))?,
    )?;
    let ca = std::fs::read(dir.join("ca.pem"))?;
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca)?])
        .build()?;
    let url = format!(
        "https://{}{path}",
        sim["address"].as_str().unwrap_or_default()
    );
    let mut req = client
        .request(method, url)
        .bearer_auth(sim["adminToken"].as_str().unwrap_or_default());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.context("reaching the twin")?;
    let status = resp.status();
    let value: Value = resp.json().await?;
    anyhow::ensure!(status.is_success(), "twin answered {status}: {value}");
    Ok(value)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::checks::expiry::parse_duration(s)
}
