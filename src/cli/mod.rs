//! The command line surface: clap types only. Command bodies live in `commands/`.

mod complete;
pub use complete::registration;
pub mod examples;
pub mod fleet;
pub mod sim;

use crate::azure::credential::AuthMode;
use crate::output::Format;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// The managedClusters API version kmsctl speaks unless told otherwise.
pub const DEFAULT_AKS_API: &str = "2025-10-01";

#[derive(Parser, Debug)]
#[command(
    name = "kmsctl",
    version,
    about = "Runs the lifecycle of KMS etcd encryption on AKS: enable, rotate, re-encrypt, verify"
)]
pub struct Cli {
    /// Output: human text, or JSON on stdout.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "text",
        global = true,
        ignore_case = true
    )]
    pub output: Format,
    /// Say more on stderr: -v what kmsctl decided and why (the credential `--auth auto` picked),
    /// -vv every request. RUST_LOG, when set, wins.
    #[arg(short = 'v', long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Progress on stderr while a run goes: auto (a live view on a terminal, else plain lines),
    /// plain (lines, at least every 10 s during any wait), json (one event per line; see README).
    #[arg(long, value_enum, default_value = "auto", global = true)]
    pub progress: crate::output::events::Progress,
    #[command(subcommand)]
    pub command: Command,
}

/// The command line as parsed, completed and documented: the derive's definitions plus each
/// command's Examples, and `-o prometheus|html` offered only where they are written.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    fn decorate(cmd: clap::Command, path: &str) -> clap::Command {
        let mut cmd = match examples::for_path(path) {
            Some(e) => cmd.after_help(e),
            None => cmd,
        };
        // `--margin-days -1` reaches the value's parser, which says what is allowed, instead
        // of clap's "unexpected argument '-1'".
        cmd = cmd.mut_args(|a| {
            if a.get_action().takes_values() && !a.is_positional() {
                a.allow_negative_numbers(true)
            } else {
                a
            }
        });
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        for n in names {
            let sub = if path == "kmsctl" {
                n.clone()
            } else {
                format!("{path} {n}")
            };
            cmd = cmd.mut_subcommand(&n, |s| decorate(s, &sub));
        }
        cmd
    }
    // check-expiry's own -o (same id, so the global one is not propagated to it and its value
    // still lands in `Cli::output`) lists the formats only it writes.
    complete::values(decorate(Cli::command(), "kmsctl"))
        // plan changes nothing: --yes and --dry-run (shared with the commands that change)
        // are not offered; `--yes` is refused, `--dry-run` is what plan always is.
        .mut_subcommand("plan", |c| {
            c.mut_arg("yes", |a| a.hide(true))
                .mut_arg("dry_run", |a| a.hide(true))
        })
        .mut_subcommand("check-expiry", |c| {
        use clap::builder::TypedValueParser;
        c.arg(
            clap::Arg::new("output")
                .short('o')
                .long("output")
                .help("Output: human text, JSON on stdout, Prometheus text exposition, or (with --all) one HTML page.")
                .default_value("text")
                .value_parser(
                    clap::builder::PossibleValuesParser::new(["text", "json", "prometheus", "html"])
                        .map(|s| <Format as ValueEnum>::from_str(&s, true).unwrap_or_default()),
                ),
        )
    })
}

/// Parses the process's arguments (exits with clap's message and code 2 when they are wrong).
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit())
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the cluster's KMS configuration, key, vault and key ledger.
    Status(TargetArgs),
    /// Enable KMS etcd encryption with a versioned Key Vault key, then re-encrypt every Secret.
    Enable(EnableArgs),
    /// Disable KMS etcd encryption, then re-encrypt every Secret out of the key.
    Disable(ChangeArgs),
    /// Rotate the key (twice with --twice), re-encrypting every Secret after each rotation.
    Rotate(RotateArgs),
    /// Re-encrypt every Secret with the cluster's current key.
    Reencrypt(ReencryptCommand),
    /// Switch the KMS vault between public and private mode: KMS off, rewrite, vault change,
    /// KMS on in the new mode, rewrite.
    VaultMode(VaultModeArgs),
    /// Migrate KMS v1 to v2: KMS off, rewrite, upgrade to 1.27+ one minor at a time, KMS on,
    /// rewrite.
    #[command(name = "migrate-v2")]
    MigrateV2(MigrateArgs),
    /// Run a playbook file (the format of the built-in ones; see README).
    Run(RunArgs),
    /// Check the expiry of the key versions the cluster depends on (exit 0 OK, 1 WARNING,
    /// 2 CRITICAL, 3 UNKNOWN), for monitoring; -o text|json|prometheus.
    CheckExpiry(ExpiryArgs),
    /// Diagnose KMS, the Key Vault Secrets Provider add-on, or a workload identity; reads only.
    #[command(subcommand)]
    Doctor(DoctorCommand),
    /// Print the least privilege kmsctl needs: a Kubernetes ClusterRole and Role (and bindings
    /// with --user/--group) and an Azure custom role.
    Rbac(RbacArgs),
    /// Print a playbook's resolved steps and their preflight results; change nothing.
    Plan(PlanArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a command's man page, or write every command's page into a folder.
    Man(ManArgs),
    /// Continue the newest unfinished run (or --run ID) from its journal.
    Resume(ResumeArgs),
    /// List runs and their state (running, interrupted, failed, succeeded, abandoned).
    Runs(RunsArgs),
    /// Rotate many clusters in waves (plan, rotate, resume, status), each with the same proofs.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// Start a twin in-process and run `rotate --twice` on it.
    Demo(DemoArgs),
    /// The local twin of AKS, Key Vault, Entra ID and the Kubernetes API.
    #[command(subcommand)]
    Sim(sim::SimCommand),
}

#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    /// Where run journals live (default: $XDG_STATE_HOME/kmsctl, else ~/.local/state/kmsctl).
    #[arg(long, env = "KMSCTL_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct KubeArgs {
    /// Kubeconfig file (default: KUBECONFIG, else ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// The cluster's Azure subscription id.
    #[arg(long, env = "AZURE_SUBSCRIPTION_ID")]
    pub subscription: Option<String>,
    /// The cluster's resource group.
    #[arg(short = 'g', long, env = "KMSCTL_RESOURCE_GROUP")]
    pub resource_group: Option<String>,
    /// The AKS cluster's name.
    #[arg(short = 'n', long = "name", env = "KMSCTL_CLUSTER")]
    pub cluster: Option<String>,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Where the API server's address and credential come from: `kubeconfig` (default), `azure`
    /// (Resource Manager's listClusterUserCredential, then a token from the --auth credential
    /// for the AKS Entra ID server app, as kubelogin gets one; no kubeconfig needed) or
    /// `azure-admin` (listClusterAdminCredential, where local accounts are enabled). `resume`
    /// reuses the run's.
    #[arg(long, value_enum, env = "KMSCTL_KUBE_CREDENTIALS")]
    pub kube_credentials: Option<crate::engine::journal::KubeCredentials>,
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
    #[arg(long, default_value = DEFAULT_AKS_API, env = "KMSCTL_AKS_API_VERSION")]
    pub aks_api_version: String,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ReencryptArgs {
    /// Secrets per list page at most (fewer for large Secrets: pages aim at 1 MiB).
    #[arg(long, default_value_t = 50, value_parser = positive::<u32>)]
    pub batch_size: u32,
    /// Most requests in flight (lowered automatically on 429).
    #[arg(long, default_value_t = 64, value_parser = positive::<usize>)]
    pub concurrency: usize,
    /// A ceiling on writes per second.
    #[arg(long, value_parser = positive_f64)]
    pub max_qps: Option<f64>,
}

/// A whole number of at least `min`, with a message that says so: clap's own parsers answer
/// "invalid digit found in string" for `-1`.
pub fn whole<T: TryFrom<u64>>(s: &str, min: u64) -> Result<T, String> {
    let n: i128 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number (at least {min})"))?;
    if n < min as i128 {
        return Err(format!("{n} is not allowed: it must be at least {min}"));
    }
    u64::try_from(n)
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{n} is too large"))
}

/// At least 1: `--concurrency 0` would never write, a timeout of 0 never wait.
pub fn positive<T: TryFrom<u64>>(s: &str) -> Result<T, String> {
    whole(s, 1)
}

/// 0 or more.
pub fn non_negative<T: TryFrom<u64>>(s: &str) -> Result<T, String> {
    whole(s, 0)
}

/// A rate that must be above 0 (and a finite number).
pub fn positive_f64(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        Ok(x) => Err(format!("{x} is not allowed: it must be above 0")),
        Err(_) => Err(format!("'{s}' is not a number (above 0)")),
    }
}

#[derive(Args, Debug, Clone)]
pub struct ChangeArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub reencrypt: ReencryptArgs,
    /// Not offered: a lifecycle command re-encrypts the whole cluster. Accepted only to refuse
    /// it with the reason and the command that does scope (`reencrypt --namespace`).
    #[arg(long = "namespace", value_name = "NS", hide = true)]
    pub namespaces: Vec<String>,
    /// Print the plan and every preflight result; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Key versions in use must not expire within this many days (0: only not expired).
    #[arg(long, default_value_t = 7, value_parser = non_negative::<u32>)]
    pub margin_days: u32,
    /// How long to wait for every API server replica to write with the new key.
    #[arg(long, default_value_t = 600, value_parser = positive::<u64>)]
    pub switch_timeout_seconds: u64,
    /// How often an API server replica asks its KMS plugin for the key id (60 s upstream). Only
    /// time-based evidence (replicas not identifiable on /metrics) waits on it: 1.5 of these
    /// plus 2 s without a rewrite of the canary, never less than with upstream's 60 s.
    #[arg(long, default_value_t = 60, env = "KMSCTL_KMS_STATUS_PERIOD_SECONDS", value_parser = positive::<u64>)]
    pub kms_status_period_seconds: u64,
    /// How often the key-switch barrier PUTs the canary, in milliseconds.
    #[arg(
        long,
        default_value_t = 2000,
        hide = true,
        env = "KMSCTL_BARRIER_POLL_MILLIS",
        value_parser = positive::<u64>
    )]
    pub barrier_poll_millis: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum NetworkAccess {
    Public,
    Private,
}

#[derive(Args, Debug, Clone)]
pub struct EnableArgs {
    /// Versioned key id: https://<vault>.vault.azure.net/keys/<name>/<version>
    #[arg(long)]
    pub key_id: String,
    /// How the KMS plugin reaches the vault: public, or private (a private endpoint AKS creates).
    /// Any case (`Public`, as status prints it).
    #[arg(long, value_enum, default_value = "public", ignore_case = true)]
    pub network_access: NetworkAccess,
    /// The vault's resource id (required for a private vault).
    #[arg(long)]
    pub vault_resource_id: Option<String>,
    #[command(flatten)]
    pub change: ChangeArgs,
}

#[derive(Args, Debug, Clone)]
pub struct VaultModeArgs {
    /// The mode to go to (any case: `Private`, as status prints it).
    #[arg(long, value_enum, ignore_case = true)]
    pub to: NetworkAccess,
    /// The key's vault (private mode; default: the vault that holds the cluster's key).
    #[arg(long)]
    pub vault_resource_id: Option<String>,
    /// A versioned key in a DIFFERENT vault: pointing KMS there is a plain update (no off/on),
    /// which kmsctl then runs as `enable`.
    #[arg(long)]
    pub key_id: Option<String>,
    #[command(flatten)]
    pub change: ChangeArgs,
}

#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// Upgrade to this version, 1.x or 1.x.y (default: the first 1.27+ minor, latest patch).
    #[arg(long)]
    pub target_version: Option<String>,
    #[command(flatten)]
    pub change: ChangeArgs,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The playbook file.
    pub file: PathBuf,
    /// A parameter, NAME=VALUE (repeatable): keyId, networkAccess, vaultResourceId,
    /// targetVersion, retireOld, marginDays, switchTimeoutSeconds, kmsStatusPeriodSeconds.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub change: ChangeArgs,
}

#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// A playbook file, or the name of a built-in one (enable, disable, rotate, rotate-twice,
    /// reencrypt, vault-mode, migrate-v2).
    pub playbook: String,
    /// A parameter, NAME=VALUE (repeatable), as for `run`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Only resolve the steps; do not read the cluster for preflight.
    #[arg(long)]
    pub offline: bool,
    /// Print the playbook's source (a built-in one's YAML, to start your own from) and nothing else.
    #[arg(long, conflicts_with_all = ["set", "offline"])]
    pub yaml: bool,
    #[command(flatten)]
    pub change: ChangeArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ExpiryArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// WARNING when a version the cluster needs expires within this (a unit is required: 30d,
    /// 12h, 90m, 45s).
    #[arg(long, default_value = "30d")]
    pub warn: String,
    /// CRITICAL when it expires within this.
    #[arg(long, default_value = "7d")]
    pub critical: String,
    /// Every AKS cluster with KMS the credential can see (Azure Resource Graph, all
    /// subscriptions), checked in parallel; -o html draws the fleet's timeline.
    #[arg(long)]
    pub all: bool,
    /// Remedy what makes the check fail: `extend=90d` (a new expiry, 90 days from now, on each
    /// version the cluster needs that is inside a window, the key ledger's included; never on a
    /// disabled version, never on one without an expiry) or `rotate` (the rotate playbook).
    /// Asks first unless --yes.
    /// `rotate` resumes an unfinished run of the cluster first, and rotates only when the check
    /// is WARNING or CRITICAL (so a schedule can carry it: `--cronjob --fix rotate`).
    #[arg(long, value_parser = crate::checks::expiry::parse_fix, conflicts_with = "all")]
    pub fix: Option<crate::checks::expiry::Fix>,
    /// Do not ask for confirmation (--fix).
    #[arg(long, short = 'y', requires = "fix")]
    pub yes: bool,
    /// Print a Kubernetes CronJob (and its ServiceAccount, Role, RoleBinding) that runs this
    /// check in the cluster with workload identity; changes nothing.
    #[arg(long)]
    pub cronjob: bool,
    /// The CronJob's schedule.
    #[arg(long, default_value = "0 6 * * *", requires = "cronjob")]
    pub schedule: String,
    /// The CronJob's namespace.
    #[arg(long, default_value = "kmsctl", requires = "cronjob")]
    pub namespace: String,
    /// The container image with kmsctl (build one from the README's Dockerfile).
    #[arg(long, default_value = concat!("kmsctl:", env!("CARGO_PKG_VERSION")), requires = "cronjob")]
    pub image: String,
    /// The client id of the user-assigned identity the CronJob runs as (workload identity).
    #[arg(long, requires = "cronjob")]
    pub client_id: Option<String>,
    /// Also write the Prometheus metrics into this file, atomically (node_exporter's textfile
    /// collector).
    #[arg(long, value_name = "PATH")]
    pub textfile: Option<PathBuf>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum DoctorCommand {
    /// KMS: state, key versions and expiry, identity access, network mode, API server guard.
    Kms(TargetArgs),
    /// The Secrets Store CSI driver and Azure provider for an application pod.
    SecretsProvider {
        #[command(flatten)]
        target: TargetArgs,
        /// The application pod, NAMESPACE/NAME.
        #[arg(long, value_name = "NS/NAME")]
        pod: Option<String>,
    },
    /// Workload identity for a ServiceAccount: annotation, federated credential, pods, vault access.
    Identity {
        #[command(flatten)]
        target: TargetArgs,
        /// The ServiceAccount, NAMESPACE/NAME.
        #[arg(long, value_name = "NS/NAME", default_value = "default/default")]
        service_account: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct RbacArgs {
    /// Bind the Kubernetes roles to this user.
    #[arg(long, conflicts_with = "group")]
    pub user: Option<String>,
    /// Bind the Kubernetes roles to this group (on AKS: an Entra ID group's object id).
    #[arg(long)]
    pub group: Option<String>,
    /// The Azure role's assignable scope is this subscription.
    #[arg(long, env = "AZURE_SUBSCRIPTION_ID")]
    pub subscription: Option<String>,
    /// The Azure role's assignable scope (default: the subscription).
    #[arg(long)]
    pub scope: Option<String>,
    /// Print only the Kubernetes manifests, for `| kubectl apply -f -`.
    #[arg(long, conflicts_with_all = ["azure", "out_dir"])]
    pub kubernetes: bool,
    /// Print only the Azure role definition (JSON), for
    /// `az role definition create --role-definition @kmsctl-role.json`.
    #[arg(long, conflicts_with = "out_dir")]
    pub azure: bool,
    /// Write both into this folder: kmsctl-rbac.yaml and kmsctl-role.json.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ManArgs {
    /// Write kmsctl.1 and kmsctl-<command>.1 for every command into this folder.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// The command whose page to print (default: kmsctl itself).
    pub command: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct RotateArgs {
    /// Rotate twice, so the oldest version is no longer needed.
    #[arg(long)]
    pub twice: bool,
    /// After a complete double rotation, disable (never delete) the oldest version.
    #[arg(long, requires = "twice")]
    pub retire_old: bool,
    #[command(flatten)]
    pub change: ChangeArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ReencryptCommand {
    /// Only these namespaces (repeatable); all by default.
    #[arg(long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub reencrypt: ReencryptArgs,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ResumeArgs {
    /// The run to continue (default: the newest unfinished run of the cluster named by
    /// --subscription/-g/-n or the environment). It must be that cluster's run.
    #[arg(long = "run")]
    pub run_id: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Wait this long for the key switch (default: what the run was started with, at least 600 s).
    #[arg(long, value_parser = positive::<u64>)]
    pub switch_timeout_seconds: Option<u64>,
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Args, Debug, Clone)]
pub struct RunsArgs {
    /// Mark this run abandoned: nobody will resume it (its journal stays, for the record).
    #[arg(long, value_name = "RUN")]
    pub abandon: Option<String>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Secrets the embedded twin starts with.
    #[arg(long, default_value_t = 5000, value_parser = positive::<usize>)]
    pub secrets: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 20, value_parser = positive::<usize>)]
    pub namespaces: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_durations_say_what_is_allowed() {
        assert_eq!(positive::<usize>("4"), Ok(4));
        assert!(positive::<usize>("0").unwrap_err().contains("at least 1"));
        assert!(positive::<u64>("-3").unwrap_err().contains("at least 1"));
        assert!(
            positive::<u32>("x")
                .unwrap_err()
                .contains("not a whole number")
        );
        assert!(
            positive::<u32>("99999999999")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(non_negative::<u32>("0"), Ok(0));
        assert!(
            non_negative::<u32>("-1")
                .unwrap_err()
                .contains("at least 0")
        );
        assert!(
            positive_f64("0").is_err()
                && positive_f64("-2.5").is_err()
                && positive_f64("nan").is_err()
        );
        assert_eq!(positive_f64("2.5"), Ok(2.5));
    }

    #[test]
    fn every_command_has_examples() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let has = c
                .get_after_help()
                .is_some_and(|h| h.to_string().starts_with("Examples:\n  "));
            if !has {
                missing.push(path.to_string());
            }
            for s in c.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&command(), "kmsctl", &mut missing);
        assert!(missing.is_empty(), "no Examples: {missing:?}");
        // Every example names a command that exists (no stale entry).
        for (path, _) in examples::EXAMPLES {
            let mut c = command();
            for part in path.split(' ').skip_while(|p| *p == "kmsctl") {
                c = c
                    .find_subcommand(part)
                    .unwrap_or_else(|| panic!("{path}"))
                    .clone();
            }
        }
        command().debug_assert();
    }
}
