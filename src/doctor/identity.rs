//! Workload identity end to end (shared/domain.md §6): the ServiceAccount's client-id
//! annotation, a federated credential on that identity with the cluster's OIDC issuer and the
//! ServiceAccount's subject, the pods labelled for it; and an identity's access to the vault for
//! the object types it reads.

use super::{Finding, Severity};
use crate::engine::context::Azure;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;

const IDENTITY_API: &str = "2023-01-31";
const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
const USE_LABEL: &str = "azure.workload.identity/use";

pub fn core(kind: &str, plural: &str) -> kube::discovery::ApiResource {
    kube::discovery::ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

pub fn spc_resource() -> kube::discovery::ApiResource {
    kube::discovery::ApiResource {
        group: "secrets-store.csi.x-k8s.io".into(),
        version: "v1".into(),
        api_version: "secrets-store.csi.x-k8s.io/v1".into(),
        kind: "SecretProviderClass".into(),
        plural: "secretproviderclasses".into(),
    }
}

/// The object types (`secret`, `key`, `cert`) a SecretProviderClass's `objects` parameter reads.
pub fn object_types(parameters: &Value) -> Vec<String> {
    parameters["objects"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("objectType:")
                .map(|t| t.trim().to_string())
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// `doctor identity`: the ServiceAccount's workload identity, and its access to the vaults of
/// the SecretProviderClasses in its namespace that name its client id.
pub async fn for_service_account(
    ctx: &crate::engine::context::Context,
    ns: &str,
    name: &str,
) -> anyhow::Result<Vec<Finding>> {
    let az = ctx.azure()?;
    let cluster = az.arm.get(&az.cluster_path, &az.arm.api.aks).await?.body;
    let (mut out, ident) = workload(&ctx.kube, az, &cluster, ns, name, None).await;
    let Some(i) = ident else { return Ok(out) };
    let client = i["properties"]["clientId"].as_str().unwrap_or_default();
    let principal = i["properties"]["principalId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let who = format!("identity {}", i["name"].as_str().unwrap_or_default());
    let spcs: Api<DynamicObject> = Api::namespaced_with(ctx.kube.clone(), ns, &spc_resource());
    let list = spcs
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for s in &list {
        let p = &s.data["spec"]["parameters"];
        if p["clientID"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case(client))
        {
            let vault = p["keyvaultName"].as_str().unwrap_or_default();
            out.extend(vault_access(az, &principal, &who, vault, &object_types(p)).await);
        }
    }
    Ok(out)
}

/// The user-assigned identity with this client id, among those the credential can see in the
/// cluster's subscription.
pub async fn by_client_id(az: &Azure, client_id: &str) -> anyhow::Result<Option<Value>> {
    let path = format!(
        "/subscriptions/{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities",
        az.subscription
    );
    Ok(az
        .arm
        .list_all(&path, IDENTITY_API)
        .await?
        .into_iter()
        .find(|i| {
            i["properties"]["clientId"]
                .as_str()
                .is_some_and(|c| c.eq_ignore_ascii_case(client_id))
        }))
}

fn issuer_eq(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// The ServiceAccount `ns/name`'s workload identity: annotation, identity, federated credential,
/// pods. Returns the findings and the identity (when found) for the vault check.
pub async fn workload(
    kube: &kube::Client,
    az: &Azure,
    cluster: &Value,
    ns: &str,
    name: &str,
    client_id_in_use: Option<&str>,
) -> (Vec<Finding>, Option<Value>) {
    let mut out = Vec::new();
    let sas: Api<DynamicObject> =
        Api::namespaced_with(kube.clone(), ns, &core("ServiceAccount", "serviceaccounts"));
    let sa = match sas.get_opt(name).await {
        Ok(Some(sa)) => sa,
        Ok(None) => {
            out.push(Finding::new(Severity::Error, format!("ServiceAccount {ns}/{name} does not exist"), format!("GET serviceaccounts/{name} in {ns}: not found"), format!("create it: kubectl create serviceaccount {name} -n {ns}, annotated {CLIENT_ID_ANNOTATION}=<client id>")));
            return (out, None);
        }
        Err(e) => {
            out.push(Finding::new(
                Severity::Warning,
                "the ServiceAccount could not be read",
                e.to_string(),
                "give kmsctl get on serviceaccounts",
            ));
            return (out, None);
        }
    };
    let issuer = cluster["properties"]["oidcIssuerProfile"]["issuerURL"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if cluster["properties"]["oidcIssuerProfile"]["enabled"].as_bool() != Some(true)
        || issuer.is_empty()
    {
        out.push(Finding::new(
            Severity::Error,
            "the cluster's OIDC issuer is not enabled",
            "managedCluster properties.oidcIssuerProfile.enabled is not true",
            "az aks update -g <rg> -n <cluster> --enable-oidc-issuer --enable-workload-identity",
        ));
    }
    if cluster["properties"]["securityProfile"]["workloadIdentity"]["enabled"].as_bool()
        != Some(true)
    {
        out.push(Finding::new(
            Severity::Error,
            "workload identity is not enabled on the cluster",
            "managedCluster properties.securityProfile.workloadIdentity.enabled is not true",
            "az aks update -g <rg> -n <cluster> --enable-workload-identity",
        ));
    }
    let Some(client_id) = sa
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CLIENT_ID_ANNOTATION))
        .cloned()
    else {
        out.push(Finding::new(Severity::Error, format!("ServiceAccount {ns}/{name} has no {CLIENT_ID_ANNOTATION} annotation"), format!("serviceaccount/{name} annotations: {:?}", sa.metadata.annotations.clone().unwrap_or_default()), format!("kubectl annotate serviceaccount {name} -n {ns} {CLIENT_ID_ANNOTATION}=<the identity's client id>")));
        return (out, None);
    };
    if let Some(used) = client_id_in_use.filter(|u| !u.eq_ignore_ascii_case(&client_id)) {
        out.push(Finding::new(Severity::Error, "the SecretProviderClass's clientID is not the ServiceAccount's identity", format!("SecretProviderClass clientID {used}, ServiceAccount {CLIENT_ID_ANNOTATION}={client_id}"), "use the same client id in both"));
    }
    let identity = match by_client_id(az, &client_id).await {
        Ok(Some(i)) => i,
        Ok(None) => {
            out.push(Finding::new(Severity::Error, format!("no user-assigned identity has client id {client_id}"), format!("GET /subscriptions/{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities: none with that clientId", az.subscription), "fix the annotation, or create the identity (az identity create)"));
            return (out, None);
        }
        Err(e) => {
            out.push(Finding::new(Severity::Warning, "the identities could not be listed", format!("{e:#}"), "give kmsctl Reader on the subscription (Microsoft.ManagedIdentity/userAssignedIdentities/read)"));
            return (out, None);
        }
    };
    let id = identity["id"].as_str().unwrap_or_default();
    let subject = format!("system:serviceaccount:{ns}:{name}");
    match az
        .arm
        .list_all(&format!("{id}/federatedIdentityCredentials"), IDENTITY_API)
        .await
    {
        Err(e) => out.push(Finding::new(
            Severity::Warning,
            "the federated credentials could not be read",
            format!("{e:#}"),
            "give kmsctl Reader on the identity",
        )),
        Ok(fics) => {
            let same_subject: Vec<&Value> = fics
                .iter()
                .filter(|f| f["properties"]["subject"].as_str() == Some(subject.as_str()))
                .collect();
            let seen: Vec<String> = fics
                .iter()
                .map(|f| {
                    format!(
                        "{} (issuer {}, subject {})",
                        f["name"].as_str().unwrap_or_default(),
                        f["properties"]["issuer"].as_str().unwrap_or_default(),
                        f["properties"]["subject"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            let fic_cmd = format!(
                "az identity federated-credential create --name kmsctl-{name} --identity-name {} --resource-group <rg> --issuer {issuer} --subject {subject} --audiences api://AzureADTokenExchange",
                identity["name"].as_str().unwrap_or_default()
            );
            match same_subject.iter().find(|f| issuer_eq(f["properties"]["issuer"].as_str().unwrap_or_default(), &issuer)) {
                Some(f) => {
                    let aud = f["properties"]["audiences"].as_array().is_some_and(|a| a.iter().any(|x| x == "api://AzureADTokenExchange"));
                    if aud {
                        out.push(Finding::info(format!("federated credential {} trusts {subject} from the cluster's issuer", f["name"].as_str().unwrap_or_default()), id));
                    } else {
                        out.push(Finding::new(Severity::Error, "the federated credential's audience is not api://AzureADTokenExchange", format!("{:?}", f["properties"]["audiences"]), "set its audiences to api://AzureADTokenExchange"));
                    }
                }
                None if !same_subject.is_empty() => out.push(Finding::new(Severity::Error, format!("the federated credential for {subject} names another issuer than the cluster's ({issuer})"), seen.join("; "), fic_cmd)),
                None => out.push(Finding::new(Severity::Error, format!("no federated credential on {} has subject {subject}", identity["name"].as_str().unwrap_or_default()), if seen.is_empty() { "none".into() } else { seen.join("; ") }, fic_cmd)),
            }
        }
    }
    // Pods that run as the ServiceAccount must carry the label, or the webhook injects nothing.
    let pods: Api<DynamicObject> = Api::namespaced_with(kube.clone(), ns, &core("Pod", "pods"));
    if let Ok(list) = pods.list(&ListParams::default()).await {
        for p in list
            .items
            .iter()
            .filter(|p| p.data["spec"]["serviceAccountName"].as_str() == Some(name))
        {
            let labelled = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(USE_LABEL))
                .is_some_and(|v| v == "true");
            if !labelled {
                let pod = p.metadata.name.clone().unwrap_or_default();
                out.push(Finding::new(Severity::Error, format!("pod {ns}/{pod} runs as {name} but is not labelled {USE_LABEL}=true"), format!("pod/{pod} labels: {:?}", p.metadata.labels.clone().unwrap_or_default()), format!("add the label {USE_LABEL}: \"true\" to the pod template and restart the pods")));
            }
        }
    }
    (out, Some(identity))
}

const SECRET_ROLES: &[(&str, &str)] = &[
    (
        "4633458b-17de-408a-b874-0445c86b69e6",
        "Key Vault Secrets User",
    ),
    (
        "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
        "Key Vault Secrets Officer",
    ),
    (
        "00482a5a-887f-4fb3-b363-3b7fe8e74483",
        "Key Vault Administrator",
    ),
];
const CERT_ROLES: &[(&str, &str)] = &[
    (
        "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba",
        "Key Vault Certificate User",
    ),
    (
        "a4417e6f-fecd-4de8-b567-7b0420556985",
        "Key Vault Certificates Officer",
    ),
    (
        "00482a5a-887f-4fb3-b363-3b7fe8e74483",
        "Key Vault Administrator",
    ),
];

/// The principal may get each object type it reads from the vault named `vault_name`.
pub async fn vault_access(
    az: &Azure,
    principal: &str,
    who: &str,
    vault_name: &str,
    types: &[String],
) -> Vec<Finding> {
    let vault = match crate::checks::facts::find_vault(&az.arm, &az.subscription, vault_name).await
    {
        Ok(Some(v)) => v,
        Ok(None) => {
            return vec![Finding::new(
                Severity::Error,
                format!("no vault named {vault_name} in any subscription the credential can see"),
                "the SecretProviderClass's keyvaultName",
                "fix keyvaultName, or give kmsctl Reader on the vault",
            )];
        }
        Err(e) => {
            return vec![Finding::new(
                Severity::Warning,
                "the vault could not be looked up",
                format!("{e:#}"),
                "give kmsctl Reader on the vault",
            )];
        }
    };
    let vault_id = vault["id"].as_str().unwrap_or_default().to_string();
    let mut out = Vec::new();
    let rbac = vault["properties"]["enableRbacAuthorization"].as_bool() == Some(true);
    let assignments = if rbac {
        match az.arm.role_assignments(&vault_id, Some(principal)).await {
            Ok(a) => a,
            Err(e) => {
                return vec![Finding::new(
                    Severity::Warning,
                    "the identity's role assignments could not be read",
                    format!("{e:#}"),
                    "give kmsctl Microsoft.Authorization/roleAssignments/read on the vault",
                )];
            }
        }
    } else {
        Vec::new()
    };
    for t in types {
        let (roles, perms, role_name) = match t.as_str() {
            "secret" => (SECRET_ROLES, "secrets", "Key Vault Secrets User"),
            "key" => (CERT_ROLES, "keys", "Key Vault Certificate User"),
            _ => (CERT_ROLES, "certificates", "Key Vault Certificate User"),
        };
        let ok = if rbac {
            crate::checks::preflight::has_role(&assignments, roles).map(str::to_string)
        } else {
            vault["properties"]["accessPolicies"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| {
                    p["objectId"].as_str() == Some(principal)
                        && p["permissions"][perms].as_array().is_some_and(|a| {
                            a.iter().any(|x| {
                                x.as_str().is_some_and(|x| {
                                    x.eq_ignore_ascii_case("get") || x.eq_ignore_ascii_case("all")
                                })
                            })
                        })
                })
                .map(|_| format!("an access policy with get on {perms}"))
        };
        match ok {
            Some(how) => out.push(Finding::info(format!("{who} may read {t} objects from {vault_name}"), how)),
            None if rbac => {
                let held: Vec<String> = assignments.iter().filter_map(|a| a["properties"]["roleDefinitionId"].as_str().map(|d| d.rsplit('/').next().unwrap_or(d).to_string())).collect();
                out.push(Finding::new(Severity::Error, format!("{who} has no role on {vault_name} that reads {t} objects"), format!("role assignments for principal {principal} on the vault: {}", if held.is_empty() { "none".into() } else { held.join(", ") }), format!("az role assignment create --role \"{role_name}\" --assignee-object-id {principal} --assignee-principal-type ServicePrincipal --scope {vault_id}")));
            }
            None => out.push(Finding::new(Severity::Error, format!("no access policy lets {who} get {perms} from {vault_name}"), format!("accessPolicies of {vault_id} for object id {principal}: none with get on {perms}"), format!("az keyvault set-policy -n {vault_name} --{}-permissions get --object-id {principal}", &perms[..perms.len() - 1]))),
        }
    }
    out
}
