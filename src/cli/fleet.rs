//! `kmsctl fleet plan|rotate|resume|status`: the command line of fleet runs.

use super::{ReencryptArgs, StateArgs, non_negative, positive};
use crate::azure::credential::AuthMode;
use crate::fleet::waves::{Order, Shard, parse_order, parse_shard, parse_waves};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand, Debug, Clone)]
pub enum FleetCommand {
    /// Print the clusters selected and the waves they would be rotated in; change nothing.
    Plan(FleetRotateArgs),
    /// Rotate every selected cluster's key (twice with --twice) in waves, each cluster's run an
    /// ordinary kmsctl run with the same preflight, lease, journal, proofs and ledger.
    Rotate(FleetRotateArgs),
    /// Continue the newest unfinished fleet run (or --run ID): unfinished cluster runs are
    /// resumed, failed ones retried first, then the waves not started.
    Resume(FleetResumeArgs),
    /// Show a fleet run's waves and each cluster's outcome, from its journal.
    Status(FleetStatusArgs),
}

fn tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("'{s}': KEY=VALUE")),
    }
}

fn waves(s: &str) -> Result<String, String> {
    parse_waves(s).map(|_| s.to_string())
}

/// What narrows the fleet. Only these flags do: the environment's single-cluster variables
/// (AZURE_SUBSCRIPTION_ID, KMSCTL_RESOURCE_GROUP, KMSCTL_CLUSTER) are not read.
#[derive(Args, Debug, Clone)]
pub struct SelectArgs {
    /// Only this subscription (repeatable); default: every one the credential can see.
    #[arg(long = "subscription", value_name = "ID")]
    pub subscriptions: Vec<String>,
    /// Only this resource group (repeatable).
    #[arg(long = "resource-group", short = 'g', value_name = "RG")]
    pub resource_groups: Vec<String>,
    /// Only clusters with this tag (repeatable; all must match).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = tag)]
    pub tags: Vec<(String, String)>,
    /// A Resource Graph filter appended to the query, e.g. "location =~ 'westeurope'".
    #[arg(long = "where", value_name = "KQL")]
    pub where_: Option<String>,
    /// Only the clusters in this file (one ARM id per line; # comments).
    #[arg(long = "clusters", value_name = "FILE")]
    pub clusters: Option<PathBuf>,
    /// Take only this share of the selection, I/N (0-based I): a stable split (a hash of each
    /// lowercased ARM id), so N processes (an Indexed Job) each take a disjoint part.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
}

#[derive(Args, Debug, Clone)]
pub struct AccessArgs {
    /// How to authenticate to Azure; `auto` tries env, workload, managed, then cli.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "KMSCTL_AUTH",
        ignore_case = true
    )]
    pub auth: AuthMode,
    /// The managedClusters API version.
    #[arg(long, default_value = super::DEFAULT_AKS_API, env = "KMSCTL_AKS_API_VERSION")]
    pub aks_api_version: String,
    #[command(flatten)]
    pub state: StateArgs,
    /// Also write the fleet's Prometheus metrics into this file, atomically (after each wave and at the end).
    #[arg(long, value_name = "PATH")]
    pub textfile: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct FleetRotateArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// The size of each wave, in order: a count or a percentage of the selection (rounded up);
    /// the last (or a 100%) takes the rest.
    #[arg(long, default_value = "1,10%,50%,100%", value_parser = waves)]
    pub waves: String,
    /// The rollout order: name, random (seeded; the seed is journaled) or tag:KEY.
    #[arg(long, default_value = "name", value_parser = parse_order)]
    pub order: Order,
    /// Clusters at once within a wave (default: sized to the memory available, ~40 MiB each).
    #[arg(long, value_parser = positive::<usize>)]
    pub max_parallel: Option<usize>,
    /// Stop after the wave in which more than this many clusters failed.
    #[arg(long, default_value_t = 0, value_parser = non_negative::<usize>)]
    pub max_failures: usize,
    /// Rotate twice, so the oldest version is no longer needed.
    #[arg(long)]
    pub twice: bool,
    /// After a complete double rotation, disable (never delete) the oldest version.
    #[arg(long, requires = "twice")]
    pub retire_old: bool,
    /// Reach each cluster with listClusterAdminCredential (local accounts) instead of the
    /// user credential and an Entra ID token.
    #[arg(long)]
    pub admin: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Key versions in use must not expire within this many days (0: only not expired).
    #[arg(long, default_value_t = 7, value_parser = non_negative::<u32>)]
    pub margin_days: u32,
    /// How long to wait for every API server replica to write with the new key.
    #[arg(long, default_value_t = 600, value_parser = positive::<u64>)]
    pub switch_timeout_seconds: u64,
    /// How often an API server replica asks its KMS plugin for the key id (60 s upstream).
    #[arg(long, default_value_t = 60, env = "KMSCTL_KMS_STATUS_PERIOD_SECONDS", value_parser = positive::<u64>)]
    pub kms_status_period_seconds: u64,
    #[arg(long, default_value_t = 2000, hide = true, env = "KMSCTL_BARRIER_POLL_MILLIS", value_parser = positive::<u64>)]
    pub barrier_poll_millis: u64,
    #[command(flatten)]
    pub reencrypt: ReencryptArgs,
    #[command(flatten)]
    pub access: AccessArgs,
}

#[derive(Args, Debug, Clone)]
pub struct FleetResumeArgs {
    /// The fleet run to continue (default: the newest unfinished one, of --shard's if given).
    #[arg(long = "run", value_name = "FLEET_RUN")]
    pub run_id: Option<String>,
    /// Continue the newest unfinished fleet run of this shard.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// Clusters at once within a wave (default: what the fleet run was started with).
    #[arg(long, value_parser = positive::<usize>)]
    pub max_parallel: Option<usize>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub access: AccessArgs,
}

#[derive(Args, Debug, Clone)]
pub struct FleetStatusArgs {
    /// The fleet run to show (default: the newest).
    #[arg(long = "run", value_name = "FLEET_RUN")]
    pub run_id: Option<String>,
    #[command(flatten)]
    pub state: StateArgs,
}
