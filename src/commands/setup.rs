//! Turning command-line targets into a run context: the Kubernetes client, and (for commands
//! that touch Azure) the credential, ARM client and transport.

use super::Refusal;
use crate::azure::arm::{ApiVersions, ArmClient};
use crate::azure::credential::{self, AuthMode};
use crate::azure::transport::Route;
use crate::checks::facts::cluster_path;
use crate::cli::TargetArgs;
use crate::engine::context::{Azure, Context};
use crate::engine::journal::Target;
use crate::k8s::client;

pub fn target(t: &TargetArgs) -> Target {
    Target {
        subscription: t.subscription.clone(),
        resource_group: t.resource_group.clone(),
        cluster: t.cluster.clone(),
        kubeconfig: t.kube.kubeconfig.clone(),
        context: t.kube.context.clone(),
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
    // Nothing has changed yet: a kubeconfig or context that cannot be used is a refusal (exit 2).
    let cluster = client::connect(target.kubeconfig.as_deref(), target.context.as_deref())
        .await
        .map_err(|e| Refusal(format!("{e:#}")))?;
    let azure = if need_azure {
        Some(azure(target, auth, aks_api)?)
    } else {
        None
    };
    Ok(Context {
        azure,
        kube_server_host: client::server_host(&cluster.server),
        kube_server: cluster.server,
        kubeconfig: cluster.kubeconfig,
        kube_context: cluster.context,
        kube_config: cluster.config,
        kube: cluster.client,
    })
}
