//! `kmsctl sim serve|inspect|fault|restart-replica`.

use crate::cli::sim::{
    Access, BalancerKind, FaultArgs, OnOff, OperatorNetworkArg, ServeArgs, SimCommand,
};
use crate::sim::operator_network::OperatorNetwork;
use crate::sim::replicas::Balancer;
use crate::sim::{NetworkAccess, SimOptions, Twin, admin_request, faults};
use anyhow::Context;

pub fn options(a: &ServeArgs) -> anyhow::Result<SimOptions> {
    let network_access = match a.network_access {
        Access::Public => NetworkAccess::Public,
        Access::Private => NetworkAccess::Private,
    };
    let vnet = a
        .vnet_integration
        .map(|v| v == OnOff::On)
        .unwrap_or(network_access == NetworkAccess::Private);
    let faults = match &a.faults {
        None => Vec::new(),
        Some(p) => faults::load(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
    };
    let fleet_clusters = crate::sim::fleet_members::FleetSpec {
        clusters: a.fleet_clusters,
        private_vaults: a.fleet_private_vaults,
        no_local_accounts: a.fleet_no_local_accounts,
        platform_managed: a.fleet_platform_managed,
        private_api: a.fleet_private_api,
    };
    let extras = a.fleet_private_vaults
        + a.fleet_no_local_accounts
        + a.fleet_platform_managed
        + a.fleet_private_api;
    if extras > 0 && a.fleet_clusters == 0 {
        anyhow::bail!("the --fleet-* counts need --fleet-clusters N");
    }
    if a.fleet_private_vaults > a.fleet_clusters || a.fleet_no_local_accounts > a.fleet_clusters {
        anyhow::bail!(
            "--fleet-private-vaults and --fleet-no-local-accounts count members of the --fleet-clusters {}",
            a.fleet_clusters
        );
    }
    Ok(SimOptions {
        fleet_clusters,
        kubernetes_version: a.kubernetes_version.clone(),
        kms: a.kms == OnOff::On,
        network_access,
        vnet_integration: vnet,
        konnectivity: !vnet,
        system_assigned_identity: a.system_assigned_identity,
        apiserver_guard: a.apiserver_guard,
        namespaces: a.namespaces,
        secrets: a.secrets,
        latency_ms: a.latency_ms,
        lro_seconds: a.lro_seconds,
        kms_propagation_seconds: a.kms_propagation_seconds,
        apiserver_replicas: a.apiserver_replicas.max(1),
        kms_status_period_seconds: a.kms_status_period,
        balancer: match a.balancer {
            BalancerKind::RoundRobin => Balancer::RoundRobin,
            BalancerKind::Random => Balancer::Random,
            BalancerKind::Sticky => Balancer::Sticky,
        },
        write_lag_seconds: a.write_lag_seconds,
        lease_recreate_seconds: a.lease_recreate_seconds,
        metrics_readable: !a.no_metrics,
        write_qps: a.write_qps,
        key_expires_in: a.key_expires_in,
        continue_ttl_seconds: a.continue_ttl_seconds,
        faults,
        seed: a.seed,
        fleet: a.fleet.clone(),
        scenario: a.scenario.clone(),
        least_privilege: a.least_privilege,
        operator_network: match a.operator_network {
            OperatorNetworkArg::Outside => OperatorNetwork::Outside,
            OperatorNetworkArg::Inside => OperatorNetwork::Inside,
        },
    })
}

pub async fn run(cmd: SimCommand) -> anyhow::Result<i32> {
    match cmd {
        SimCommand::Serve(a) => {
            let twin = Twin::start(options(&a)?).await?;
            twin.write_files(&a.dir)?;
            crate::output::out("ready\n");
            use std::io::Write;
            std::io::stdout().flush()?;
            tracing::info!(address = %twin.addr, dir = %a.dir.display(), "twin serving");
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            Ok(0)
        }
        SimCommand::Inspect { dir, all, cluster } => {
            let path = match (all, cluster) {
                (true, _) => "/_sim/inspect?all=true".to_string(),
                (false, Some(c)) => format!("/_sim/inspect?cluster={}", query_value(&c)),
                (false, None) => "/_sim/inspect".to_string(),
            };
            let doc = admin_request(&dir, reqwest::Method::GET, &path, None).await?;
            crate::output::out(&format!("{}\n", serde_json::to_string_pretty(&doc)?));
            Ok(0)
        }
        SimCommand::Fault(f) => fault(f).await,
        SimCommand::RestartReplica {
            dir,
            replica,
            down_seconds,
            cluster,
        } => {
            let doc = admin_request(
                &dir,
                reqwest::Method::POST,
                &format!("/_sim/replicas/{replica}/restart{}", scope(&cluster)),
                Some(serde_json::json!({ "downSeconds": down_seconds })),
            )
            .await?;
            crate::output::out(&format!("{doc}\n"));
            Ok(0)
        }
        SimCommand::Scenarios => {
            let names: Vec<&str> = crate::sim::scenarios::SCENARIOS
                .iter()
                .map(|(n, _)| *n)
                .collect();
            crate::output::out(&format!("{}\n", names.join("\n")));
            Ok(0)
        }
    }
}

fn query_value(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// `?cluster=NAME` for one member of a fleet twin.
fn scope(cluster: &Option<String>) -> String {
    cluster
        .as_deref()
        .map(|c| format!("?cluster={}", query_value(c)))
        .unwrap_or_default()
}

async fn fault(f: FaultArgs) -> anyhow::Result<i32> {
    let path = format!("/_sim/faults{}", scope(&f.cluster));
    if f.clear {
        admin_request(&f.dir, reqwest::Method::DELETE, &path, None).await?;
        return Ok(0);
    }
    let rule = faults::FaultRule {
        method: f.method,
        path: f.path,
        host: f.host,
        status: f.status,
        count: f.count,
        probability: f.probability,
        latency_ms: f.latency_ms,
        drop: f.drop,
        fail_operation: f.fail_operation,
        hits: Default::default(),
    };
    let doc = admin_request(
        &f.dir,
        reqwest::Method::POST,
        &path,
        Some(serde_json::to_value(&rule)?),
    )
    .await?;
    crate::output::out(&format!("{doc}\n"));
    Ok(0)
}
