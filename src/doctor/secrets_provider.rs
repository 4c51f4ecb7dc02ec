//! `kmsctl doctor secrets-provider [--pod NS/NAME]`: the guide's checklist (shared/domain.md
//! §5): the add-on and its identity; the driver and provider pods on the application pod's node,
//! their readiness and last hour of error lines; the pod's warning events; each line matched
//! against the guide's causes; the SecretProviderClass, its identity and the vault access; the
//! sync-as-Secret RBAC.

use super::identity::{self, core, object_types, spc_resource};
use super::{Finding, Severity, signatures};
use crate::engine::context::Azure;
use kube::api::{Api, DynamicObject, ListParams, LogParams};
use serde_json::Value;

const PROVIDER_SELECTOR: &str =
    "app in (secrets-store-provider-azure, csi-secrets-store-provider-azure)";
const DRIVER_SELECTOR: &str = "app=secrets-store-csi-driver";
const CSI_DRIVER: &str = "secrets-store.csi.k8s.io";

fn rbac(kind: &str, plural: &str) -> kube::discovery::ApiResource {
    kube::discovery::ApiResource {
        group: "rbac.authorization.k8s.io".into(),
        version: "v1".into(),
        api_version: "rbac.authorization.k8s.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Matches one line against the guide; unknown error lines are reported as they are.
fn judge_line(line: &str, source: &str, findings: &mut Vec<Finding>) {
    match signatures::matching(line) {
        Some(sig) => {
            // The same cause seen again: one finding, with at most two pieces of evidence.
            if let Some(f) = findings.iter_mut().find(|f| f.guide == Some(sig.guide)) {
                if !f.evidence.contains(" | ") {
                    f.evidence = format!(
                        "{} | {}",
                        f.evidence,
                        super::redact::redact(&format!("{source}: {line}"))
                    );
                }
                return;
            }
            findings.push(sig.finding(format!("{source}: {line}")));
        }
        None => findings.push(Finding::new(
            Severity::Warning,
            "an error line the troubleshooting guide does not list",
            format!("{source}: {line}"),
            "read it in context: kubectl logs or kubectl describe on the source named",
        )),
    }
}

pub async fn run(
    kube: &kube::Client,
    az: &Azure,
    pod_ref: Option<(String, String)>,
) -> anyhow::Result<Vec<Finding>> {
    let mut out = Vec::new();
    let cluster = az.arm.get(&az.cluster_path, &az.arm.api.aks).await?.body;
    let addon = &cluster["properties"]["addonProfiles"]["azureKeyvaultSecretsProvider"];
    let addon_client = addon["identity"]["clientId"].as_str().map(str::to_string);
    let cluster_name = cluster["name"].as_str().unwrap_or("<cluster>");
    if addon["enabled"].as_bool() == Some(true) {
        out.push(Finding::info(
            "the Key Vault Secrets Provider add-on is enabled",
            format!(
                "identity clientId {}",
                addon_client.as_deref().unwrap_or("(none)")
            ),
        ));
    } else {
        out.push(Finding::new(Severity::Error, "the Key Vault Secrets Provider add-on is disabled", "managedCluster addonProfiles.azureKeyvaultSecretsProvider.enabled is not true", format!("az aks enable-addons --addons azure-keyvault-secrets-provider -g <rg> -n {cluster_name} (pods restarted meanwhile fail to start)")));
    }
    let Some((ns, name)) = pod_ref else {
        return Ok(out);
    };
    let pods: Api<DynamicObject> = Api::namespaced_with(kube.clone(), &ns, &core("Pod", "pods"));
    let Some(pod) = pods.get_opt(&name).await? else {
        out.push(Finding::new(
            Severity::Error,
            format!("pod {ns}/{name} does not exist"),
            format!("GET pods/{name} in {ns}: not found"),
            "name the application pod: --pod NAMESPACE/NAME",
        ));
        return Ok(out);
    };
    let node = pod.data["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let system: Api<DynamicObject> =
        Api::namespaced_with(kube.clone(), "kube-system", &core("Pod", "pods"));
    let on_node = |selector: &'static str| {
        let system = system.clone();
        let fields = format!("spec.nodeName={node}");
        async move {
            system
                .list(&ListParams::default().labels(selector).fields(&fields))
                .await
        }
    };
    let drivers = on_node(DRIVER_SELECTOR).await?.items;
    let providers = on_node(PROVIDER_SELECTOR).await?.items;
    if drivers.is_empty() {
        out.push(signatures::guide("5").finding(format!(
            "no pod with {DRIVER_SELECTOR} on node {node} (kube-system)"
        )));
    }
    if providers.is_empty() {
        let mut f = Finding::new(
            Severity::Error,
            "no Azure provider pod runs on the application pod's node",
            format!("no pod with {PROVIDER_SELECTOR} on node {node} (kube-system)"),
            signatures::guide("6'").remedy,
        );
        f.guide = Some("6'");
        out.push(f);
    }
    // The driver's `secrets-store` container and the provider's containers: last hour, E lines.
    let mut sources: Vec<(String, String)> = drivers
        .iter()
        .map(|p| {
            (
                p.metadata.name.clone().unwrap_or_default(),
                "secrets-store".to_string(),
            )
        })
        .collect();
    for p in &providers {
        for c in p.data["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            sources.push((
                p.metadata.name.clone().unwrap_or_default(),
                c["name"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    for p in drivers.iter().chain(providers.iter()) {
        let ready = p.data["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if !ready {
            out.push(Finding::new(
                Severity::Warning,
                format!(
                    "{} is not ready",
                    p.metadata.name.clone().unwrap_or_default()
                ),
                format!(
                    "kube-system/{} status: {}",
                    p.metadata.name.clone().unwrap_or_default(),
                    p.data["status"]
                ),
                "kubectl describe pod -n kube-system <pod>; its restarts and events say why",
            ));
        }
    }
    let logs: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(kube.clone(), "kube-system");
    for (pod_name, container) in &sources {
        let params = LogParams {
            container: Some(container.clone()),
            since_seconds: Some(3600),
            ..Default::default()
        };
        match logs.logs(pod_name, &params).await {
            Ok(text) => {
                for line in text.lines().filter(|l| l.starts_with('E')) {
                    judge_line(
                        line,
                        &format!("kube-system/{pod_name} [{container}] log"),
                        &mut out,
                    );
                }
            }
            Err(e) => out.push(Finding::new(
                Severity::Warning,
                format!("the log of {pod_name} [{container}] could not be read"),
                e.to_string(),
                "give kmsctl get on pods/log in kube-system",
            )),
        }
    }
    let events: Api<DynamicObject> =
        Api::namespaced_with(kube.clone(), &ns, &core("Event", "events"));
    let fields = format!("involvedObject.kind=Pod,involvedObject.name={name}");
    for e in events
        .list(&ListParams::default().fields(&fields))
        .await?
        .items
    {
        if e.data["type"].as_str() == Some("Warning") {
            let reason = e.data["reason"].as_str().unwrap_or_default();
            judge_line(
                e.data["message"].as_str().unwrap_or_default(),
                &format!("event {reason} on pod {ns}/{name}"),
                &mut out,
            );
        }
    }
    spc_checks(
        kube,
        az,
        &pod,
        &ns,
        addon_client.as_deref(),
        &cluster,
        &mut out,
    )
    .await?;
    Ok(out)
}

async fn spc_checks(
    kube: &kube::Client,
    az: &Azure,
    pod: &DynamicObject,
    ns: &str,
    addon_client: Option<&str>,
    cluster: &Value,
    out: &mut Vec<Finding>,
) -> anyhow::Result<()> {
    let spcs: Api<DynamicObject> = Api::namespaced_with(kube.clone(), ns, &spc_resource());
    let volumes = pod.data["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for v in volumes
        .iter()
        .filter(|v| v["csi"]["driver"].as_str() == Some(CSI_DRIVER))
    {
        let Some(spc_name) = v["csi"]["volumeAttributes"]["secretProviderClass"].as_str() else {
            continue;
        };
        let Some(spc) = spcs.get_opt(spc_name).await? else {
            if !out.iter().any(|f| f.guide == Some("6")) {
                out.push(signatures::guide("6").finding(format!(
                    "volume {} names SecretProviderClass {spc_name}, which does not exist in namespace {ns}",
                    v["name"].as_str().unwrap_or_default()
                )));
            }
            continue;
        };
        let p = &spc.data["spec"]["parameters"];
        let flag = |k: &str| {
            p[k].as_str()
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        };
        let types = object_types(p);
        let vault = p["keyvaultName"].as_str().unwrap_or_default().to_string();
        if flag("usePodIdentity") {
            out.push(Finding::new(Severity::Warning, format!("SecretProviderClass {ns}/{spc_name} uses aad-pod-identity, which is deprecated"), "parameters.usePodIdentity: \"true\"", "move to workload identity: clientID in the SecretProviderClass, an annotated ServiceAccount, a federated credential"));
        } else if flag("useVMManagedIdentity") {
            let uid = p["userAssignedIdentityID"].as_str().unwrap_or_default();
            match addon_client {
                Some(a) if a.eq_ignore_ascii_case(uid) => {
                    out.push(Finding::info(format!("SecretProviderClass {ns}/{spc_name} uses the add-on's identity"), format!("userAssignedIdentityID {uid}")));
                    if let Ok(Some(i)) = identity::by_client_id(az, uid).await {
                        let principal = i["properties"]["principalId"].as_str().unwrap_or_default().to_string();
                        out.extend(identity::vault_access(az, &principal, "the add-on identity", &vault, &types).await);
                    }
                }
                _ if out.iter().any(|f| f.guide == Some("3")) => {}
                _ => out.push(Finding::new(Severity::Warning, format!("SecretProviderClass {ns}/{spc_name}'s userAssignedIdentityID is not the add-on's identity"), format!("userAssignedIdentityID {uid}; addonProfiles.azureKeyvaultSecretsProvider.identity.clientId {}", addon_client.unwrap_or("(none)")), "use the add-on identity's client id (az aks show --query addonProfiles.azureKeyvaultSecretsProvider.identity.clientId), unless that identity is attached to the node pools' scale sets")),
            }
        } else {
            let client = p["clientID"].as_str();
            let sa = pod.data["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default");
            let (findings, ident) = identity::workload(kube, az, cluster, ns, sa, client).await;
            out.extend(findings);
            if let Some(i) = ident {
                let principal = i["properties"]["principalId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let who = format!("identity {}", i["name"].as_str().unwrap_or_default());
                out.extend(identity::vault_access(az, &principal, &who, &vault, &types).await);
            }
        }
        if spc.data["spec"]["secretObjects"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
        {
            let roles: Api<DynamicObject> =
                Api::all_with(kube.clone(), &rbac("ClusterRole", "clusterroles"));
            let bindings: Api<DynamicObject> = Api::all_with(
                kube.clone(),
                &rbac("ClusterRoleBinding", "clusterrolebindings"),
            );
            let role = roles.get_opt("secretprovidersyncing-role").await?.is_some();
            let binding = bindings
                .get_opt("secretprovidersyncing-rolebinding")
                .await?
                .is_some();
            let in_place = role && binding;
            let reported = out.iter().any(|f| f.guide == Some("7'"));
            if !(in_place || reported) {
                out.push(signatures::guide("7'").finding(format!(
                    "SecretProviderClass {ns}/{spc_name} syncs secretObjects; clusterrole/secretprovidersyncing-role {}, clusterrolebinding/secretprovidersyncing-rolebinding {}",
                    if role { "exists" } else { "missing" },
                    if binding { "exists" } else { "missing" }
                )));
            }
        }
    }
    Ok(())
}
