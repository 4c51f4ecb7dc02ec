//! A cluster's credentials as Resource Manager hands them out (`az aks get-credentials`):
//! `listClusterUserCredential` (for an Entra ID cluster, a kubeconfig whose user runs kubelogin
//! for the AKS server application) and `listClusterAdminCredential` (the local admin account's
//! static token, refused when local accounts are disabled), in the service's response shape
//! `{"kubeconfigs":[{"name","value":<base64 kubeconfig>}]}`. The API server then accepts what
//! each kubeconfig leads to: the static token, or an Entra token for the server application.

use super::http::{Resp, arm_error, json_resp};
use super::world::World;
use base64::Engine;
use hyper::StatusCode;
use serde_json::json;

/// The AKS Entra ID server application ("Azure Kubernetes Service AAD Server"): kubelogin's
/// `--server-id`, the audience of the tokens an Entra ID cluster's API server accepts.
pub const AKS_SERVER_APP: &str = "6dae42f8-4368-4678-94ff-3960e28e3630";
/// The Azure CLI's public client, which kubelogin's devicecode login uses.
const KUBELOGIN_CLIENT: &str = "80faf920-1908-4b52-b5ef-a8e7bedfc67a";

pub fn entra_cluster(w: &World) -> bool {
    w.cluster["properties"]["aadProfile"]["managed"].as_bool() == Some(true)
}

pub fn local_accounts_disabled(w: &World) -> bool {
    w.cluster["properties"]["disableLocalAccounts"].as_bool() == Some(true)
}

/// The API server host a kubeconfig names: the private FQDN of a private cluster without a
/// public one, else the fqdn.
pub fn server_host(w: &World) -> String {
    let p = &w.cluster["properties"];
    p["fqdn"]
        .as_str()
        .or(p["privateFQDN"].as_str())
        .unwrap_or(&w.ids.api_server_host)
        .to_string()
}

/// Whether `bearer` authenticates to this cluster's API server.
pub fn kube_authenticated(w: &World, bearer: Option<&str>) -> bool {
    let Some(t) = bearer else {
        return false;
    };
    (t == w.ids.kube_token && !local_accounts_disabled(w))
        || (entra_cluster(w) && w.token_ok(t, AKS_SERVER_APP))
}

fn kubeconfig(w: &World, context: &str, user: &str, user_body: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(&w.endpoint.ca_pem);
    let c = &w.ids.cluster;
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {c}\n  cluster:\n    server: https://{host}:443\n    proxy-url: http://{addr}\n    certificate-authority-data: {ca}\ncontexts:\n- name: {context}\n  context:\n    cluster: {c}\n    user: {user}\ncurrent-context: {context}\npreferences: {{}}\nusers:\n- name: {user}\n  user:\n{user_body}",
        host = server_host(w),
        addr = w.endpoint.addr,
    )
}

fn answer(name: &str, kubeconfig: &str) -> Resp {
    let value = base64::engine::general_purpose::STANDARD.encode(kubeconfig);
    json_resp(
        StatusCode::OK,
        &json!({ "kubeconfigs": [{ "name": name, "value": value }] }),
    )
}

/// `POST .../listClusterUserCredential`.
pub fn user(w: &World) -> Resp {
    let user = format!("clusterUser_{}_{}", w.ids.resource_group, w.ids.cluster);
    let body = if entra_cluster(w) {
        format!(
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      args:\n      - get-token\n      - --login\n      - devicecode\n      - --server-id\n      - {AKS_SERVER_APP}\n      - --client-id\n      - {KUBELOGIN_CLIENT}\n      - --tenant-id\n      - {tenant}\n      - --environment\n      - AzurePublicCloud\n      command: kubelogin\n      env: null\n      installHint: |2\n\n        kubelogin is not installed which is required to connect to AAD enabled cluster.\n\n        To learn more, please go to https://aka.ms/aks/kubelogin\n      interactiveMode: IfAvailable\n      provideClusterInfo: false\n",
            tenant = w.ids.tenant
        )
    } else {
        // A cluster with local accounts only: the user credential is a static token too.
        format!("    token: {}\n", w.ids.kube_token)
    };
    answer("clusterUser", &kubeconfig(w, &w.ids.cluster, &user, &body))
}

/// `POST .../listClusterAdminCredential`.
pub fn admin(w: &World) -> Resp {
    if local_accounts_disabled(w) {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Getting static credential is not allowed because this cluster is set to disable local accounts.",
        );
    }
    let user = format!("clusterAdmin_{}_{}", w.ids.resource_group, w.ids.cluster);
    let body = format!("    token: {}\n", w.ids.kube_token);
    answer(
        "clusterAdmin",
        &kubeconfig(w, &format!("{}-admin", w.ids.cluster), &user, &body),
    )
}
