//! Turning command-line targets into a run context: the Kubernetes client, and (for commands
//! that touch Azure) the credential, ARM client and transport.

use super::Refusal;
pub use super::kube_from_azure::Unreachable;
use crate::azure::arm::{ApiVersions, ArmClient};
use crate::azure::credential::{self, AuthMode};
use crate::azure::transport::Route;
use crate::checks::facts::cluster_path;
use crate::cli::TargetArgs;
use crate::engine::context::{Azure, Context};
use crate::engine::journal::{KubeCredentials, Target};
use crate::k8s::client;

pub fn target(t: &TargetArgs) -> Target {
    Target {
        subscription: t.subscription.clone(),
        resource_group: t.resource_group.clone(),
        cluster: t.cluster.clone(),
        kubeconfig: t.kube.kubeconfig.clone(),
        context: t.kube.context.clone(),
        kube_credentials: t.kube_credentials.unwrap_or_default(),
    }
}

/// The Azure side alone: credential, ARM client, and the named cluster's path.
pub fn azure(target: &Target, auth: AuthMode, aks_api: &str) -> anyhow::Result<Azure> {
    let (Some(sub), Some(rg), Some(name)) = (
        &target.subscription,
        &target.resource_group,
        &target.cluster,
    ) else {
        return Err(Refusal("name the cluster: --subscription (or AZURE_SUBSCRIPTION_ID), -g/--resource-group (or KMSCTL_RESOURCE_GROUP), -n/--name (or KMSCTL_CLUSTER)".into()).into());
    };
    let mut az = azure_any(auth, aks_api)?;
    az.subscription = sub.clone();
    az.cluster_path = cluster_path(sub, rg, name);
    Ok(az)
}

/// Azure access that names no one cluster (fleet-wide checks): subscription and cluster path
/// stay empty.
pub fn azure_any(auth: AuthMode, aks_api: &str) -> anyhow::Result<Azure> {
    let options = Route::from_env()?.client_options()?;
    let credential =
        credential::credential(auth, &options).map_err(|e| Refusal(format!("{e:#}")))?;
    let api = ApiVersions {
        aks: aks_api.to_string(),
        ..Default::default()
    };
    let arm = ArmClient::new(credential.clone(), options.clone(), api);
    Ok(Azure {
        arm,
        credential,
        options,
        subscription: String::new(),
        cluster_path: String::new(),
        vault_ids: Default::default(),
    })
}

pub async fn context(
    target: &Target,
    auth: AuthMode,
    aks_api: &str,
    need_azure: bool,
) -> anyhow::Result<Context> {
    let (cluster, azure) = match target.kube_credentials {
        KubeCredentials::Kubeconfig => {
            // Nothing has changed yet: a kubeconfig or context that cannot be used is a
            // refusal (exit 2).
            let cluster = client::connect(target.kubeconfig.as_deref(), target.context.as_deref())
                .await
                .map_err(|e| Refusal(kubeconfig_refusal(&e, target)))?;
            let azure = if need_azure {
                let az = azure(target, auth, aks_api)?;
                cluster_exists(&az, target).await?;
                Some(az)
            } else {
                None
            };
            (cluster, azure)
        }
        mode => {
            let az = azure(target, auth, aks_api)?;
            cluster_exists(&az, target).await?;
            let cluster = super::kube_from_azure::connect(&az, mode).await?;
            (cluster, need_azure.then_some(az))
        }
    };
    Ok(Context {
        azure,
        kube_server_endpoint: client::server_endpoint(&cluster.server),
        kube_server: cluster.server,
        kubeconfig: cluster.kubeconfig,
        kube_context: cluster.context,
        kube_config: cluster.config,
        kube: cluster.client,
    })
}

/// What a kubeconfig problem says, with how to get the cluster's kubeconfig or context.
pub fn kubeconfig_refusal(e: &anyhow::Error, target: &Target) -> String {
    let get = format!(
        "az aks get-credentials -g {} -n {}",
        target.resource_group.as_deref().unwrap_or("RESOURCE_GROUP"),
        target.cluster.as_deref().unwrap_or("CLUSTER")
    );
    match e.downcast_ref::<client::KubeconfigProblem>() {
        Some(client::KubeconfigProblem::Missing(_)) => format!(
            "{e}: get the cluster's credentials with `{get}` (it writes ~/.kube/config), or name a file with --kubeconfig or KUBECONFIG"
        ),
        Some(client::KubeconfigProblem::UnknownContext { .. }) => {
            format!("{e}: pick one with --context, or add the cluster's with `{get}`")
        }
        None => format!("{e:#}"),
    }
}

/// A cluster or resource group that is not there is a refusal before anything else is read or
/// changed, naming the flags and what the subscription holds: a raw 404 says neither.
async fn cluster_exists(az: &Azure, target: &Target) -> anyhow::Result<()> {
    // One attempt: anything but a 404 is met again, with retries, by the reads that follow; a
    // retried 503 here would only delay the run's lease and journal.
    let e = match az.arm.get_once(&az.cluster_path, &az.arm.api.aks).await {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    if e.status() != Some(404) {
        // Anything else (a denial, a network error) is reported where it is met, as before.
        return Ok(());
    }
    let found = az
        .arm
        .list_all(
            &format!(
                "/subscriptions/{}/providers/Microsoft.ContainerService/managedClusters",
                az.subscription
            ),
            &az.arm.api.aks,
        )
        .await
        .map(|cs| {
            cs.iter()
                .filter_map(|c| {
                    let id = c["id"].as_str()?;
                    let rg = id.split('/').nth(4)?;
                    Some(format!("-g {rg} -n {}", c["name"].as_str()?))
                })
                .collect()
        })
        .map_err(|e| e.to_string());
    Err(Refusal(not_found_message(target, e.code(), &found)).into())
}

/// The refusal for a 404 on the cluster: which of -g/-n/--subscription is wrong and what exists.
pub fn not_found_message(
    target: &Target,
    code: &str,
    found: &Result<Vec<String>, String>,
) -> String {
    let (sub, rg, name) = (
        target.subscription.as_deref().unwrap_or_default(),
        target.resource_group.as_deref().unwrap_or_default(),
        target.cluster.as_deref().unwrap_or_default(),
    );
    let what = if code.eq_ignore_ascii_case("ResourceGroupNotFound") {
        format!(
            "resource group '{rg}' (-g/--resource-group) does not exist in subscription {sub} (--subscription)"
        )
    } else {
        format!(
            "no AKS cluster '{name}' (-n/--name) in resource group '{rg}' (-g) of subscription {sub} (--subscription)"
        )
    };
    let seen = match found {
        Ok(list) if list.is_empty() => "this credential sees no AKS cluster in that subscription: check --subscription (or AZURE_SUBSCRIPTION_ID)".to_string(),
        Ok(list) => format!("AKS clusters in that subscription: {}", list.join(", ")),
        Err(e) => format!("the subscription's clusters could not be listed ({e})"),
    };
    format!(
        "{what}; {seen}. Name the cluster with -g and -n (or KMSCTL_RESOURCE_GROUP and KMSCTL_CLUSTER)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Target {
        Target {
            subscription: Some("sub-1".into()),
            resource_group: Some("rg-nope".into()),
            cluster: Some("aks-x".into()),
            kubeconfig: None,
            context: None,
            kube_credentials: Default::default(),
        }
    }

    #[test]
    fn a_missing_group_or_cluster_names_the_flags_and_what_exists() {
        let m = not_found_message(
            &t(),
            "ResourceGroupNotFound",
            &Ok(vec!["-g rg-a -n aks-a".into()]),
        );
        assert!(
            m.contains("'rg-nope'")
                && m.contains("-g/--resource-group")
                && m.contains("-g rg-a -n aks-a"),
            "{m}"
        );
        let m = not_found_message(&t(), "ResourceNotFound", &Ok(vec![]));
        assert!(
            m.contains("'aks-x'") && m.contains("-n/--name") && m.contains("--subscription"),
            "{m}"
        );
        let m = not_found_message(&t(), "ResourceNotFound", &Err("HTTP 403".into()));
        assert!(m.contains("could not be listed (HTTP 403)"), "{m}");
    }
}
