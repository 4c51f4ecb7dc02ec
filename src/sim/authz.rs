//! Least privilege, enforced (`sim serve --least-privilege`): the twin's Kubernetes user and its
//! Azure principal get exactly what `kmsctl rbac` prints, and every request is authorized as the
//! real services do: Kubernetes RBAC by verb, API group, resource, namespace and name (and
//! non-resource URLs), Azure by the action or dataAction the request performs. A request outside
//! them answers 403 with the service's own message.

use super::http::{Req, Resp, arm_error, k8s_status};
use hyper::{Method, StatusCode};
use serde_json::Value;

pub struct Policy {
    /// (namespace the rule applies in: None = cluster-wide, the rule)
    kube: Vec<(Option<String>, Value)>,
    actions: Vec<String>,
    data_actions: Vec<String>,
}

impl Policy {
    /// What `kmsctl rbac` grants.
    pub fn kmsctl() -> Policy {
        let mut kube = Vec::new();
        for m in crate::commands::rbac::manifests() {
            let ns = m["metadata"]["namespace"].as_str().map(str::to_string);
            for r in m["rules"].as_array().into_iter().flatten() {
                kube.push((ns.clone(), r.clone()));
            }
        }
        let role = crate::commands::rbac::custom_role("/");
        let list = |k: &str| -> Vec<String> {
            role[k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_ascii_lowercase))
                .collect()
        };
        Policy {
            kube,
            actions: list("Actions"),
            data_actions: list("DataActions"),
        }
    }
}

fn has(list: &Value, want: &str) -> bool {
    list.as_array()
        .is_some_and(|a| a.iter().any(|v| v == "*" || v == want))
}

/// Discovery and version are open to every authenticated user (system:discovery).
fn open_non_resource(path: &str) -> bool {
    path == "/version"
        || path == "/api"
        || path == "/apis"
        || path.starts_with("/openapi/")
        || path == "/api/v1"
        || (path.starts_with("/apis/") && path.trim_end_matches('/').split('/').count() <= 4)
}

/// What a Kubernetes request asks for, as RBAC sees it.
struct Attributes {
    verb: String,
    group: String,
    resource: String,
    ns: Option<String>,
    name: Option<String>,
}

fn kube_attributes(req: &Req) -> Option<Attributes> {
    let s = req.segments();
    let (group, rest) = match s.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest.to_vec()),
        ["apis", g, _, rest @ ..] => (g.to_string(), rest.to_vec()),
        _ => return None,
    };
    let (ns, rest) = match rest.as_slice() {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest.to_vec()),
        _ => (None, rest),
    };
    let (resource, name) = match rest.as_slice() {
        [r] => (r.to_string(), None),
        [r, n] => (r.to_string(), Some(n.to_string())),
        [r, n, sub] => (format!("{r}/{sub}"), Some(n.to_string())),
        _ => return None,
    };
    let verb = match (&req.method, &name) {
        (&Method::GET, None) if req.query.get("watch").is_some_and(|w| w == "true") => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        (&Method::DELETE, None) => "deletecollection",
        _ => return None,
    };
    Some(Attributes {
        verb: verb.into(),
        group,
        resource,
        ns,
        name,
    })
}

/// Kubernetes RBAC: None when allowed, else the 403 the API server answers.
pub fn kube(policy: &Policy, req: &Req) -> Option<Resp> {
    let path = req.path.trim_end_matches('/');
    if open_non_resource(path) {
        return None;
    }
    let user = "kmsctl";
    let Some(Attributes {
        verb,
        group,
        resource,
        ns,
        name,
    }) = kube_attributes(req)
    else {
        let allowed = policy.kube.iter().any(|(ns, r)| {
            ns.is_none() && has(&r["nonResourceURLs"], path) && has(&r["verbs"], "get")
        });
        return (!allowed).then(|| {
            k8s_status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!("forbidden: User \"{user}\" cannot get path \"{path}\""),
                None,
            )
        });
    };
    let allowed = policy.kube.iter().any(|(in_ns, r)| {
        (in_ns.is_none() || in_ns.as_deref() == ns.as_deref())
            && has(&r["apiGroups"], &group)
            && has(&r["resources"], &resource)
            && has(&r["verbs"], &verb)
            && (r["resourceNames"].as_array().is_none_or(|n| n.is_empty())
                || name.as_deref().is_some_and(|n| has(&r["resourceNames"], n)))
    });
    if allowed {
        return None;
    }
    let target = match &name {
        Some(n) => format!("{resource} \"{n}\" is forbidden"),
        None => format!("{resource} is forbidden"),
    };
    let scope = match &ns {
        Some(n) => format!(" in the namespace \"{n}\""),
        None => " at the cluster scope".to_string(),
    };
    Some(k8s_status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!(
            "{target}: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\"{scope}"
        ),
        None,
    ))
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The Azure control-plane action a Resource Manager request performs.
fn arm_action(req: &Req) -> Option<String> {
    let s = req.segments();
    let read = req.method == Method::GET;
    let rw = if read { "read" } else { "write" };
    let providers = s.iter().rposition(|x| eq(x, "providers"));
    let Some(p) = providers else {
        // /subscriptions, /subscriptions/{id}, resource groups.
        return read.then(|| "microsoft.resources/subscriptions/read".into());
    };
    let rest: Vec<String> = s[p + 1..].iter().map(|x| x.to_ascii_lowercase()).collect();
    let r: Vec<&str> = rest.iter().map(String::as_str).collect();
    Some(match r.as_slice() {
        ["microsoft.resourcegraph", "resources"] => "microsoft.resourcegraph/resources/read".into(),
        ["microsoft.containerservice", "locations", _, kind, ..] => {
            format!("microsoft.containerservice/locations/{kind}/read")
        }
        [
            "microsoft.containerservice",
            "managedclusters",
            _,
            "upgradeprofiles",
            ..,
        ] => "microsoft.containerservice/managedclusters/upgradeprofiles/read".into(),
        [
            "microsoft.containerservice",
            "managedclusters",
            _,
            action @ ("listclusterusercredential" | "listclusteradmincredential"),
        ] => format!("microsoft.containerservice/managedclusters/{action}/action"),
        ["microsoft.containerservice", "managedclusters", ..] => {
            format!("microsoft.containerservice/managedclusters/{rw}")
        }
        ["microsoft.keyvault", "vaults", _, "keys", _, "versions", ..] => {
            format!("microsoft.keyvault/vaults/keys/versions/{rw}")
        }
        ["microsoft.keyvault", "vaults", _, "keys", ..] => {
            format!("microsoft.keyvault/vaults/keys/{rw}")
        }
        ["microsoft.keyvault", "vaults", ..] => format!("microsoft.keyvault/vaults/{rw}"),
        ["microsoft.authorization", kind, ..] => format!("microsoft.authorization/{kind}/{rw}"),
        [
            "microsoft.managedidentity",
            "userassignedidentities",
            _,
            "federatedidentitycredentials",
            ..,
        ] => {
            format!(
                "microsoft.managedidentity/userassignedidentities/federatedidentitycredentials/{rw}"
            )
        }
        ["microsoft.managedidentity", "userassignedidentities", ..] => {
            format!("microsoft.managedidentity/userassignedidentities/{rw}")
        }
        _ => return None,
    })
}

/// Azure RBAC for Resource Manager: None when allowed, else AuthorizationFailed.
pub fn arm(policy: &Policy, req: &Req, principal: &str) -> Option<Resp> {
    let action =
        arm_action(req).unwrap_or_else(|| format!("(unknown) {} {}", req.method, req.path));
    if policy.actions.contains(&action) {
        return None;
    }
    Some(arm_error(
        StatusCode::FORBIDDEN,
        "AuthorizationFailed",
        &format!(
            "The client '{principal}' with object id '{principal}' does not have authorization to perform action '{action}' over scope '{}' or the scope is invalid. If access was recently granted, please refresh your credentials.",
            req.path
        ),
    ))
}

/// The Key Vault data action a keys request performs.
fn kv_data_action(req: &Req) -> Option<&'static str> {
    let s = req.segments();
    Some(match (&req.method, s.as_slice()) {
        (&Method::GET, ["keys", _, "rotationpolicy"]) => {
            "microsoft.keyvault/vaults/keyrotationpolicies/read"
        }
        (&Method::PUT, ["keys", _, "rotationpolicy"]) => {
            "microsoft.keyvault/vaults/keyrotationpolicies/write"
        }
        (&Method::POST, ["keys", _, "rotate"]) => "microsoft.keyvault/vaults/keys/rotate/action",
        (&Method::POST, ["keys", _, "create"]) => "microsoft.keyvault/vaults/keys/create/action",
        (&Method::PATCH, ["keys", _, _]) => "microsoft.keyvault/vaults/keys/update/action",
        (&Method::DELETE, ["keys", ..]) => "microsoft.keyvault/vaults/keys/delete",
        (&Method::POST, ["keys", _, _, op]) => match *op {
            "encrypt" => "microsoft.keyvault/vaults/keys/encrypt/action",
            "decrypt" => "microsoft.keyvault/vaults/keys/decrypt/action",
            "wrapkey" => "microsoft.keyvault/vaults/keys/wrap/action",
            "unwrapkey" => "microsoft.keyvault/vaults/keys/unwrap/action",
            _ => return None,
        },
        (&Method::GET, ["keys", ..]) => "microsoft.keyvault/vaults/keys/read",
        _ => return None,
    })
}

/// Azure RBAC for the Key Vault data plane: None when allowed, else 403 Forbidden as Key Vault
/// answers an RBAC vault's caller without the data action.
pub fn key_vault(policy: &Policy, req: &Req, principal: &str) -> Option<Resp> {
    let action = kv_data_action(req)?;
    if policy.data_actions.iter().any(|a| a == action) {
        return None;
    }
    Some(arm_error(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!(
            "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: appid={principal};oid={principal}\r\nAction: '{action}'"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Req {
        Req {
            method: Method::GET,
            host: "management.azure.com".into(),
            path: path.into(),
            query: Default::default(),
            headers: Default::default(),
            body: Default::default(),
            replica: 0,
            version: hyper::Version::HTTP_11,
            peer: std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }

    const VAULT: &str = "/subscriptions/s/resourceGroups/g/providers/Microsoft.KeyVault/vaults/v";

    #[test]
    fn key_reads_through_resource_manager_need_their_own_actions() {
        let key = get(&format!("{VAULT}/keys/k"));
        let versions = get(&format!("{VAULT}/keys/k/versions"));
        let version = get(&format!("{VAULT}/keys/k/versions/abc"));
        assert_eq!(
            arm_action(&key).as_deref(),
            Some("microsoft.keyvault/vaults/keys/read")
        );
        for r in [&versions, &version] {
            assert_eq!(
                arm_action(r).as_deref(),
                Some("microsoft.keyvault/vaults/keys/versions/read")
            );
        }
        // kmsctl's role grants them; a role with only vault read does not.
        let granted = Policy::kmsctl();
        assert!(arm(&granted, &version, "p").is_none());
        assert!(arm(&granted, &key, "p").is_none());
        let vault_only = Policy {
            kube: Vec::new(),
            actions: vec!["microsoft.keyvault/vaults/read".into()],
            data_actions: Vec::new(),
        };
        assert!(arm(&vault_only, &get(VAULT), "p").is_none());
        let denied = arm(&vault_only, &versions, "p").expect("refused");
        assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    }
}
