//! `kmsctl sim ...`: the twin's command line.

use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// Serve a twin until SIGINT/SIGTERM; writes ca.pem, kubeconfig, env into DIR, then prints `ready`.
    Serve(ServeArgs),
    /// Print the twin's state (cluster, vault, keys, storage) as one JSON document.
    Inspect {
        /// The folder `sim serve --dir` wrote into.
        #[arg(long)]
        dir: PathBuf,
        /// Every cluster of a fleet twin: `{"clusters": [<what inspect prints for one>, ...]}`.
        #[arg(long, conflicts_with = "cluster")]
        all: bool,
        /// One cluster of a fleet twin (default: its first).
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Add a fault rule to a running twin (or clear them all with --clear).
    Fault(FaultArgs),
    /// Restart one API server replica of a running twin: it is down for --down-seconds (the
    /// balancer sends it no new connection, its open connections answer 503, its identity Lease
    /// is no longer renewed), then comes back as a new kube-apiserver: a new apiserver ID and
    /// identity Lease, fresh metrics counters, and the cluster's current key from a Status call
    /// at its start.
    RestartReplica {
        /// The folder of the running twin (`sim serve --dir`).
        #[arg(long)]
        dir: PathBuf,
        /// Which replica (0-based, in the order they were started).
        #[arg(long, value_parser = super::non_negative::<usize>)]
        replica: usize,
        /// The cluster of a fleet twin whose replica it is (default: its first).
        #[arg(long)]
        cluster: Option<String>,
        /// How long it stays down.
        #[arg(long, default_value_t = 15, value_parser = super::positive::<u64>)]
        down_seconds: u64,
    },
    /// List the Secrets Provider scenarios `serve --scenario` stages, one per line.
    Scenarios,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OperatorNetworkArg {
    Outside,
    Inside,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Access {
    Public,
    Private,
}

/// How the twin's balancer assigns each new TCP connection to a live API server replica.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum BalancerKind {
    /// The next live replica in turn, skipping replicas that are down.
    RoundRobin,
    /// A live replica chosen uniformly at random (seeded by --seed).
    Random,
    /// The previous connection's replica with probability 1/2 while it is live, otherwise a
    /// live replica chosen uniformly at random (seeded by --seed): session affinity that
    /// re-balances now and then.
    Sticky,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Where to write ca.pem, kubeconfig, env and sim.json (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// The cluster's Kubernetes version (KMS v1 below 1.27, v2 from 1.27).
    #[arg(long, default_value = "1.33.5")]
    pub kubernetes_version: String,
    /// Whether the cluster starts with KMS enabled (with the vault's first key version).
    #[arg(long, value_enum, default_value = "on")]
    pub kms: OnOff,
    /// The vault's network mode the cluster's KMS starts with.
    #[arg(long, value_enum, default_value = "public")]
    pub network_access: Access,
    /// API server VNet integration (default: on with a private vault, off otherwise).
    #[arg(long, value_enum)]
    pub vnet_integration: Option<OnOff>,
    /// Give the cluster a system-assigned identity (which KMS does not support).
    #[arg(long)]
    pub system_assigned_identity: bool,
    /// Install AKS's last-resort API server throttle (FlowSchema aks-managed-apiserver-guard).
    #[arg(long)]
    pub apiserver_guard: bool,
    /// Namespaces the seeded Secrets are spread over.
    #[arg(long, default_value_t = 10, value_parser = super::positive::<usize>)]
    pub namespaces: usize,
    /// Secrets seeded (a realistic mix of sizes, Helm releases included).
    #[arg(long, default_value_t = 1000, value_parser = super::non_negative::<usize>)]
    pub secrets: usize,
    /// Added to every request, like a real network.
    #[arg(long, default_value_t = 0, value_parser = super::non_negative::<u64>)]
    pub latency_ms: u64,
    /// How long a cluster update takes.
    #[arg(long, default_value_t = 5, value_parser = super::non_negative::<u64>)]
    pub lro_seconds: u64,
    /// How long after a KMS change the API server keeps writing with the previous key.
    #[arg(long, default_value_t = 0, value_parser = super::non_negative::<u64>)]
    pub kms_propagation_seconds: u64,
    /// kube-apiserver replicas behind the one address; each connection is served by one of them.
    #[arg(long, default_value_t = 1, value_parser = super::positive::<usize>)]
    pub apiserver_replicas: usize,
    /// Each replica asks its KMS plugin for the key id this often (seconds; 0: at once), and
    /// writes with a new key only from its next such call (a real one: about 60 s).
    #[arg(long, default_value_t = 0, value_parser = super::non_negative::<u64>)]
    pub kms_status_period: u64,
    /// How each new connection is assigned a live replica: round-robin (the next in turn),
    /// random (uniform, seeded by --seed), sticky (the previous connection's replica with
    /// probability 1/2, otherwise uniform). A request and a /metrics read on one connection
    /// always reach the same replica.
    #[arg(long, value_enum, default_value = "round-robin")]
    pub balancer: BalancerKind,
    /// A replica reports a new key id to Status (the status metric) at its status call but
    /// writes with it only this many seconds later, as an API server configured identity-first
    /// does; until then it writes with the key it wrote with before.
    #[arg(long, default_value_t = 0, value_parser = super::non_negative::<u64>)]
    pub write_lag_seconds: u64,
    /// A replica recreates its identity Lease this many seconds after it was deleted.
    #[arg(long, default_value_t = 10, value_parser = super::non_negative::<u64>)]
    pub lease_recreate_seconds: u64,
    /// Answer /metrics with 403, as for a user without access to it.
    #[arg(long)]
    pub no_metrics: bool,
    /// Above this many writes per second the Kubernetes API answers 429.
    #[arg(long, value_parser = super::positive_f64)]
    pub write_qps: Option<f64>,
    /// The first key version expires after this long (e.g. 30d, 12h).
    #[arg(long, value_parser = crate::sim::parse_duration)]
    pub key_expires_in: Option<std::time::Duration>,
    /// How long a list continue token lives before it answers 410 Gone.
    #[arg(long, default_value_t = 300, value_parser = super::positive::<u64>)]
    pub continue_ttl_seconds: u64,
    /// Fault rules (YAML or JSON list).
    #[arg(long)]
    pub faults: Option<PathBuf>,
    /// Other clusters the credential can see, one per entry, in two subscriptions, each with its
    /// own key expiring after the given time: `90d,20d,none,auto:5d` (`auto:` = AKS's
    /// platform-managed rotation, a versionless key id).
    #[arg(long, value_delimiter = ',', value_parser = crate::sim::fleet::parse_member)]
    pub fleet: Vec<crate::sim::fleet::Member>,
    /// Serve N complete clusters instead of one (aks-fleet-01..), in two subscriptions (odd
    /// and even members) of one tenant, each with its own resource group, vault and key, API
    /// server (reached through listClusterUserCredential: Entra ID clusters), Secrets
    /// (--secrets each), replicas and Leases. DIR/env then names no cluster.
    #[arg(long, default_value_t = 0, value_parser = super::non_negative::<usize>, conflicts_with = "fleet")]
    pub fleet_clusters: usize,
    /// Of the N, the last K keep their key in a private vault (public access disabled, an
    /// approved private endpoint), as `--network-access private`.
    #[arg(long, default_value_t = 0, value_parser = super::non_negative::<usize>)]
    pub fleet_private_vaults: usize,
    /// Of the N, the first K have local accounts disabled (listClusterAdminCredential: 400).
    #[arg(long, default_value_t = 0, value_parser = super::non_negative::<usize>)]
    pub fleet_no_local_accounts: usize,
    /// K more members on AKS's platform-managed key rotation (a versionless key id).
    #[arg(long, default_value_t = 0, value_parser = super::non_negative::<usize>)]
    pub fleet_platform_managed: usize,
    /// K more members that are private clusters (enablePrivateCluster, a privateFQDN): from
    /// --operator-network outside their API server cannot be reached.
    #[arg(long, default_value_t = 0, value_parser = super::non_negative::<usize>)]
    pub fleet_private_api: usize,
    /// Stage a Key Vault Secrets Provider scenario (a pod default/app that mounts a
    /// SecretProviderClass, with one cause from the troubleshooting guide): see `sim scenarios`.
    #[arg(long, value_parser = scenario_name)]
    pub scenario: Option<String>,
    /// Grant kmsctl only what `kmsctl rbac` prints, and answer everything else 403.
    #[arg(long)]
    pub least_privilege: bool,
    /// Where kmsctl runs, for the vault's data plane: outside (an operator's machine on the
    /// internet, the default: a vault with public network access disabled answers 403
    /// ForbiddenByConnection, a default-Deny firewall 403 ForbiddenByFirewall unless an IP rule
    /// allows 127.0.0.1) or inside (a network with the vault's private endpoint). Resource
    /// Manager answers from both.
    #[arg(long, value_enum, default_value = "outside")]
    pub operator_network: OperatorNetworkArg,
    /// Seed for the generated Secrets.
    #[arg(long, default_value_t = 1, value_parser = super::non_negative::<u64>)]
    pub seed: u64,
}

/// A share of requests: above 0, at most 1.
fn probability(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 1.0 => Ok(p),
        _ => Err(format!(
            "'{s}' is not a share above 0 and at most 1 (e.g. 0.25)"
        )),
    }
}

fn scenario_name(s: &str) -> Result<String, String> {
    crate::sim::scenarios::SCENARIOS
        .iter()
        .any(|(n, _)| *n == s)
        .then(|| s.to_string())
        .ok_or_else(|| format!("no scenario '{s}'; `kmsctl sim scenarios` lists them"))
}

#[derive(Args, Debug, Clone)]
pub struct FaultArgs {
    /// The folder of the running twin (`sim serve --dir`).
    #[arg(long)]
    pub dir: PathBuf,
    /// Only this cluster of a fleet twin (its Resource Manager paths, its vault, its API
    /// server); without it a rule applies to every cluster. With --clear: only its rules.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Remove every rule instead of adding one.
    #[arg(long)]
    pub clear: bool,
    /// Only requests with this HTTP method (default: any).
    #[arg(long)]
    pub method: Option<String>,
    /// Path pattern: `*` one segment, `**` any number.
    #[arg(long, default_value = "/**")]
    pub path: String,
    /// Only requests to this host (e.g. management.azure.com; default: any).
    #[arg(long)]
    pub host: Option<String>,
    /// Answer with this HTTP status, in the service's own error shape.
    #[arg(long)]
    pub status: Option<u16>,
    /// Apply to this many matching requests, then stop (default: all).
    #[arg(long, value_parser = super::positive::<u64>)]
    pub count: Option<u64>,
    /// Apply to this share of matching requests (0..1; default: all).
    #[arg(long, value_parser = probability)]
    pub probability: Option<f64>,
    /// Delay matching requests by this many milliseconds.
    #[arg(long, value_parser = super::non_negative::<u64>)]
    pub latency_ms: Option<u64>,
    /// Drop the connection without answering.
    #[arg(long)]
    pub drop: bool,
    /// The long-running operation a matching cluster PUT starts ends Failed.
    #[arg(long)]
    pub fail_operation: bool,
}
