//! The Key Vault Secrets Provider add-on as the twin stages it (shared/domain.md §5–6): the
//! driver and provider pods on each node, an application pod `default/app` that mounts a
//! SecretProviderClass with workload identity, the identities and federated credential behind
//! it, and named scenarios that each break one thing the way the troubleshooting guide shows it
//! (the log and event lines are the guide's own).

use super::world::{World, now_unix};
use serde_json::{Value, json};

/// (name, what it reproduces), listed by `kmsctl sim scenarios`.
pub const SCENARIOS: &[(&str, &str)] = &[
    ("healthy", "everything in place; the app's volume mounts"),
    (
        "nmi-404",
        "cause 1: aad-pod-identity's NMI answers 404 for the token",
    ),
    (
        "vault-unreachable",
        "cause 2: the provider cannot reach the vault (context deadline exceeded)",
    ),
    (
        "identity-not-found",
        "cause 3: the SecretProviderClass names an identity that is not on the nodes",
    ),
    (
        "forbidden-by-connection",
        "cause 4: the vault's private endpoint is in another VNet (ForbiddenByConnection)",
    ),
    (
        "no-driver-on-node",
        "cause 5: no CSI driver pod on the app's node",
    ),
    (
        "spc-not-found",
        "cause 6: the SecretProviderClass is in another namespace",
    ),
    (
        "provider-not-found",
        "cause 6': the driver cannot find the Azure provider",
    ),
    (
        "sync-rbac-missing",
        "cause 7': syncing as a Secret without the driver's cluster role",
    ),
    ("vault-401", "cause 7: Key Vault answers 401"),
    ("vault-429", "cause 8: Key Vault answers 429"),
    (
        "addon-disabled",
        "the add-on is disabled while a SecretProviderClass is in use",
    ),
    (
        "wi-annotation-missing",
        "the ServiceAccount lacks azure.workload.identity/client-id",
    ),
    (
        "wi-subject-mismatch",
        "the federated credential's subject names another ServiceAccount",
    ),
    (
        "wi-issuer-mismatch",
        "the federated credential's issuer is not the cluster's OIDC issuer",
    ),
    (
        "wi-pod-not-labelled",
        "the pod lacks the label azure.workload.identity/use=true",
    ),
    (
        "wi-no-vault-access",
        "the identity has no access policy on the vault",
    ),
    (
        "wi-wrong-role",
        "an RBAC vault where the identity holds a role for certificates, not secrets",
    ),
    (
        "mi-wrong-identity",
        "managed identity mode with another identity than the add-on's",
    ),
];

pub const NODES: [&str; 2] = [
    "aks-nodepool1-31718369-vmss000000",
    "aks-nodepool1-31718369-vmss000001",
];
const VOLUME: &str = "secrets-store01-inline";
const SPC: &str = "app-spc";
const OBJECTS: &str = "array:\n  - |\n    objectName: db-password\n    objectType: secret\n";

fn klog(level: char, at: i64, source: &str, message: &str) -> String {
    let t = chrono::DateTime::from_timestamp(at, 0).unwrap_or_default();
    format!(
        "{level}{} 1 {source}] {message}",
        t.format("%m%d %H:%M:%S%.6f")
    )
}

fn pod(name: &str, ns: &str, node: &str, labels: Value, containers: &[&str], ready: bool) -> Value {
    let cs: Vec<Value> = containers
        .iter()
        .map(|c| json!({ "name": c, "image": format!("mcr.microsoft.com/oss/kubernetes-csi/{c}:v1.5.3") }))
        .collect();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| json!({ "name": c, "ready": ready, "restartCount": 0, "started": ready }))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "labels": labels },
        "spec": { "nodeName": node, "containers": cs },
        "status": { "phase": if ready { "Running" } else { "Pending" },
                    "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
                    "containerStatuses": statuses }
    })
}

fn identity(w: &World, rg: &str, name: &str) -> Value {
    let sub = &w.ids.subscription;
    json!({
        "id": format!("/subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"),
        "name": name, "type": "Microsoft.ManagedIdentity/userAssignedIdentities", "location": w.ids.location,
        "properties": { "tenantId": w.ids.tenant, "principalId": uuid::Uuid::new_v4().to_string(),
                        "clientId": uuid::Uuid::new_v4().to_string() },
        "federatedIdentityCredentials": []
    })
}

fn event(ns: &str, pod: &str, kind: &str, reason: &str, message: &str, at: i64) -> Value {
    let t = chrono::DateTime::from_timestamp(at, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": { "name": format!("{pod}.{:x}", rand_suffix()), "namespace": ns },
        "involvedObject": { "kind": "Pod", "name": pod, "namespace": ns, "apiVersion": "v1" },
        "type": kind, "reason": reason, "message": message, "count": 3,
        "firstTimestamp": t, "lastTimestamp": t, "source": { "component": "kubelet", "host": NODES[0] }
    })
}

fn rand_suffix() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0 >> 16
}

fn log(w: &mut World, pod: &str, container: &str, line: String, at: i64) {
    w.logs
        .entry(("kube-system".into(), pod.into(), container.into()))
        .or_default()
        .push((at, line));
}

fn driver(node: usize) -> String {
    format!("aks-secrets-store-csi-driver-{}", ["7bhfz", "m2x9q"][node])
}

fn provider(node: usize) -> String {
    format!(
        "aks-secrets-store-provider-azure-{}",
        ["d4l8k", "r6t2w"][node]
    )
}

/// The mount error the kubelet reports for the app's volume, wrapping `cause`.
fn mount_failed(cause: &str) -> String {
    format!(
        "MountVolume.SetUp failed for volume \"{VOLUME}\" : rpc error: code = Unknown desc = failed to mount secrets store objects for pod default/app, err: rpc error: code = Unknown desc = failed to mount objects, error: {cause}"
    )
}

/// Stages the add-on and the app, then breaks what `name` says. Unknown names are an error.
pub fn apply(w: &mut World, name: &str) -> Result<(), String> {
    if !SCENARIOS.iter().any(|(n, _)| *n == name) {
        return Err(format!(
            "no scenario '{name}'; `kmsctl sim scenarios` lists them"
        ));
    }
    let now = now_unix();
    let node_rg = w.cluster["properties"]["nodeResourceGroup"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let issuer = w.cluster["properties"]["oidcIssuerProfile"]["issuerURL"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let addon = identity(
        w,
        &node_rg,
        &format!("azurekeyvaultsecretsprovider-{}", w.ids.cluster),
    );
    let mut app = identity(w, &w.ids.resource_group.clone(), "app-identity");
    let app_client = app["properties"]["clientId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let app_principal = app["properties"]["principalId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    app["federatedIdentityCredentials"] = json!([{
        "id": format!("{}/federatedIdentityCredentials/app-fic", app["id"].as_str().unwrap_or_default()),
        "name": "app-fic", "type": "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials",
        "properties": { "issuer": issuer, "subject": "system:serviceaccount:default:app", "audiences": ["api://AzureADTokenExchange"] }
    }]);
    let addon_client = addon["properties"]["clientId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    w.cluster["properties"]["addonProfiles"]["azureKeyvaultSecretsProvider"] = json!({
        "enabled": true,
        "config": { "enableSecretRotation": "false", "rotationPollInterval": "2m" },
        "identity": { "resourceId": addon["id"], "clientId": addon_client, "objectId": addon["properties"]["principalId"] }
    });
    // The app's identity may read secrets (an access policy, as the twin's vault uses them).
    let policies = w.vault["properties"]["accessPolicies"].as_array_mut();
    if let Some(p) = policies {
        p.push(json!({ "tenantId": w.ids.tenant, "objectId": app_principal,
                       "permissions": { "keys": [], "secrets": ["get"], "certificates": [] } }));
    }
    let vault_name = w.ids.vault.clone();
    let tenant = w.ids.tenant.clone();
    let mut spc = json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
        "metadata": { "name": SPC, "namespace": "default" },
        "spec": { "provider": "azure", "parameters": {
            "usePodIdentity": "false", "clientID": app_client, "keyvaultName": vault_name,
            "tenantId": tenant, "objects": OBJECTS } }
    });
    let mut sa = json!({ "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": { "name": "app", "namespace": "default", "annotations": { "azure.workload.identity/client-id": app_client } } });
    let healthy = name == "healthy";
    let mut app_pod = pod(
        "app",
        "default",
        NODES[0],
        json!({ "app": "app", "azure.workload.identity/use": "true" }),
        &["app"],
        healthy,
    );
    app_pod["spec"]["serviceAccountName"] = json!("app");
    app_pod["spec"]["volumes"] = json!([{ "name": VOLUME, "csi": { "driver": "secrets-store.csi.k8s.io", "readOnly": true, "volumeAttributes": { "secretProviderClass": SPC } } }]);
    let mut driver_on = [true, true];
    let mut cluster_role = true;
    let mut app_events = vec![event(
        "default",
        "app",
        "Normal",
        "Scheduled",
        &format!("Successfully assigned default/app to {}", NODES[0]),
        now - 600,
    )];
    let t = now - 300;
    let mut fail = |w: &mut World,
                    provider_line: Option<String>,
                    driver_line: Option<String>,
                    ev: Option<String>| {
        if let Some(l) = provider_line {
            log(
                w,
                &provider(0),
                "provider-azure-installer",
                klog('E', t, "server.go:54", &l),
                t,
            );
        }
        if let Some(l) = driver_line {
            log(w, &driver(0), "secrets-store", l, t);
        }
        if let Some(m) = ev {
            app_events.push(event("default", "app", "Warning", "FailedMount", &m, t));
        }
    };
    let vault_url = format!("https://{}", w.ids.vault_host());
    match name {
        "nmi-404" => fail(w, None, None, Some(format!(
            "MountVolume.SetUp failed for volume \"{VOLUME}\" : kubernetes.io/csi: mounter.SetupAt failed: rpc error: code = Unknown desc = mount secrets store objects for pod default/app, err: rpc error: code = Unknown desc = failed to mount objects, error: failed to get keyvault client: failed to get key vault token: nmi response failed with status code: 404, err: <nil>"
        ))),
        "vault-unreachable" => fail(w, Some("failed to process mount request, error: keyvault.BaseClient#GetSecret: Failure sending request: StatusCode=0 -- Original Error: context deadline exceeded".into()), None, None),
        "identity-not-found" => {
            let wrong = uuid::Uuid::new_v4().to_string();
            spc["spec"]["parameters"] = json!({ "usePodIdentity": "false", "useVMManagedIdentity": "true",
                "userAssignedIdentityID": wrong, "keyvaultName": vault_name, "tenantId": tenant, "objects": OBJECTS });
            fail(w, None, None, Some(mount_failed(&format!(
                "failed to get objectType:secret, objectName:db-password, objectVersion:: azure.BearerAuthorizer#WithAuthorization: Failed to refresh the Token for request to {vault_url}/secrets/db-password/?api-version=2016-10-01: StatusCode=400 -- Original Error: adal: Refresh request failed. Status Code = '400'. Response body: {{\"error\":\"invalid_request\",\"error_description\":\"Identity not found\"}} Endpoint http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&client_id={wrong}&resource=https%3A%2F%2Fvault.azure.net"
            ))));
        }
        "forbidden-by-connection" => fail(w, None, None, Some(mount_failed(&format!(
            "failed to get objectType:secret, objectName:db-password, objectVersion:: keyvault.BaseClient#GetSecret: Failure responding to request: StatusCode=403 -- Original Error: autorest/azure: Service returned an error. Status=403 Code=\"Forbidden\" Message=\"Public network access is disabled and request is not from a trusted service nor via an approved private link.\\r\\nCaller: appid={app_client};oid={app_principal};iss=https://sts.windows.net/{tenant}/\\r\\nVault: {vault_name};location=eastus\" InnerError={{\"code\":\"ForbiddenByConnection\"}}"
        )))),
        "no-driver-on-node" | "addon-disabled" => {
            driver_on[0] = false;
            if name == "addon-disabled" {
                driver_on[1] = false;
                w.cluster["properties"]["addonProfiles"]["azureKeyvaultSecretsProvider"] = json!({ "enabled": false });
            }
            fail(w, None, None, Some(format!(
                "MountVolume.SetUp failed for volume \"{VOLUME}\" : kubernetes.io/csi: mounter.SetUpAt failed to get CSI client: driver name secrets-store.csi.k8s.io not found in the list of registered CSI drivers"
            )));
        }
        "spc-not-found" => {
            spc["metadata"]["namespace"] = json!("other");
            let line = format!("failed to get secretproviderclass default/{SPC}, error: SecretProviderClass.secrets-store.csi.x-k8s.io \"{SPC}\" not found");
            fail(w, None, Some(klog('E', t, "nodeserver.go:151", &line)), Some(mount_failed(&line)));
        }
        "provider-not-found" => {
            let line = "failed to find provider binary azure, err: stat /etc/kubernetes/secrets-store-csi-providers/azure/provider-azure: no such file or directory";
            fail(w, None, Some(klog('E', t, "nodeserver.go:230", line)), Some(mount_failed(line)));
        }
        "sync-rbac-missing" => {
            spc["spec"]["secretObjects"] = json!([{ "secretName": "db-credentials", "type": "Opaque", "data": [{ "objectName": "db-password", "key": "password" }] }]);
            cluster_role = false;
            fail(w, None, Some(klog('E', t, "secretproviderclasspodstatus_controller.go:325",
                "\"failed to create Kubernetes secret\" err=\"secrets is forbidden: User \\\"system:serviceaccount:kube-system:secrets-store-csi-driver\\\" cannot create resource \\\"secrets\\\" in API group \\\"\\\" in the namespace \\\"default\\\"\" spc=\"default/app-spc\" pod=\"default/app\" secret=\"default/db-credentials\" spcps=\"default/app-default-app-spc\"")), None);
        }
        "vault-401" => fail(w, None, None, Some(mount_failed(
            "failed to get objectType:secret, objectName:db-password, objectVersion:: keyvault.BaseClient#GetSecret: Failure responding to request: StatusCode=401 -- Original Error: autorest/azure: Service returned an error. Status=401 Code=\"Unauthorized\" Message=\"AKV10032: Invalid issuer. Expected one of https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/, found https://sts.windows.net/00000000-0000-0000-0000-000000000000/.\""
        ))),
        "vault-429" => fail(w, None, None, Some(mount_failed(
            "failed to get objectType:secret, objectName:db-password, objectVersion:: keyvault.BaseClient#GetSecret: Failure responding to request: StatusCode=429 -- Original Error: autorest/azure: Service returned an error. Status=429 Code=\"Throttled\" Message=\"Request was not processed because too many requests were received. Reason: A1\""
        ))),
        "wi-annotation-missing" => {
            sa["metadata"]["annotations"] = json!({});
        }
        "wi-subject-mismatch" => {
            app["federatedIdentityCredentials"][0]["properties"]["subject"] = json!("system:serviceaccount:default:app-old");
        }
        "wi-issuer-mismatch" => {
            app["federatedIdentityCredentials"][0]["properties"]["issuer"] = json!("https://eastus.oic.prod-aks.azure.com/00000000-0000-0000-0000-000000000000/11111111-1111-1111-1111-111111111111/");
        }
        "wi-pod-not-labelled" => {
            app_pod["metadata"]["labels"] = json!({ "app": "app" });
        }
        "wi-no-vault-access" => {
            if let Some(p) = w.vault["properties"]["accessPolicies"].as_array_mut() {
                p.retain(|ap| ap["objectId"].as_str() != Some(app_principal.as_str()));
            }
        }
        "wi-wrong-role" => {
            w.vault["properties"]["enableRbacAuthorization"] = json!(true);
            let vault_id = w.ids.vault_id();
            // Key Vault Certificate User: reads certificates (and their keys), not secrets.
            let r = super::resources::role_assignment(&w.ids, "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba", &app_principal, &vault_id);
            w.role_assignments.push(r);
        }
        "mi-wrong-identity" => {
            spc["spec"]["parameters"] = json!({ "usePodIdentity": "false", "useVMManagedIdentity": "true",
                "userAssignedIdentityID": app_client, "keyvaultName": vault_name, "tenantId": tenant, "objects": OBJECTS });
        }
        _ => {}
    }
    if healthy {
        app_events.push(event(
            "default",
            "app",
            "Normal",
            "Started",
            "Started container app",
            now - 580,
        ));
    }
    for (i, node) in NODES.iter().enumerate() {
        if driver_on[i] {
            let d = pod(
                &driver(i),
                "kube-system",
                node,
                json!({ "app": "secrets-store-csi-driver" }),
                &["node-driver-registrar", "secrets-store", "liveness-probe"],
                true,
            );
            w.objects
                .create("pods", "kube-system", d)
                .map_err(|e| format!("{e:?}"))?;
            log(
                w,
                &driver(i),
                "secrets-store",
                klog('I', now - 900, "main.go:195", "\"starting manager\""),
                now - 900,
            );
        }
        if w.cluster["properties"]["addonProfiles"]["azureKeyvaultSecretsProvider"]["enabled"]
            == true
        {
            let p = pod(
                &provider(i),
                "kube-system",
                node,
                json!({ "app": "secrets-store-provider-azure" }),
                &["provider-azure-installer"],
                true,
            );
            w.objects
                .create("pods", "kube-system", p)
                .map_err(|e| format!("{e:?}"))?;
            log(
                w,
                &provider(i),
                "provider-azure-installer",
                klog(
                    'I',
                    now - 900,
                    "main.go:91",
                    "\"Starting Azure Key Vault Provider\" version=\"v1.6.2\"",
                ),
                now - 900,
            );
        }
    }
    if healthy {
        log(
            w,
            &provider(0),
            "provider-azure-installer",
            klog(
                'I',
                now - 590,
                "server.go:129",
                "\"mount request succeeded\" pod=\"default/app\"",
            ),
            now - 590,
        );
    }
    // An old error, more than an hour ago: not what is wrong now.
    log(
        w,
        &driver(1),
        "secrets-store",
        klog(
            'E',
            now - 7200,
            "nodeserver.go:230",
            "\"failed to mount\" err=\"rpc error: code = Canceled\"",
        ),
        now - 7200,
    );
    let spc_ns = spc["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    w.objects
        .create("secretproviderclasses", &spc_ns, spc)
        .map_err(|e| format!("{e:?}"))?;
    w.objects
        .create("serviceaccounts", "default", sa)
        .map_err(|e| format!("{e:?}"))?;
    w.objects
        .create("pods", "default", app_pod)
        .map_err(|e| format!("{e:?}"))?;
    for e in app_events {
        w.objects
            .create("events", "default", e)
            .map_err(|e| format!("{e:?}"))?;
    }
    if cluster_role {
        w.objects.create("clusterroles", "", json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": { "name": "secretprovidersyncing-role" },
            "rules": [{ "apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"] }] }))
            .map_err(|e| format!("{e:?}"))?;
        w.objects.create("clusterrolebindings", "", json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": { "name": "secretprovidersyncing-rolebinding" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "secretprovidersyncing-role" },
            "subjects": [{ "kind": "ServiceAccount", "name": "secrets-store-csi-driver", "namespace": "kube-system" }] }))
            .map_err(|e| format!("{e:?}"))?;
    }
    w.identities = vec![addon, app];
    Ok(())
}
