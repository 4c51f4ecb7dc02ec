//! Other clusters the credential can see, for fleet-wide checks: read-only managedClusters in
//! the twin's subscription and in a second one, each with KMS on and its own key in the twin's
//! vault, found through Azure Resource Graph's resources query as `az graph query` finds them.

use super::http::{Req, Resp, arm_error, json_resp};
use super::world::{KeyRecord, World, new_key_version, now_unix};
use hyper::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// One extra cluster: its key's first version expires after `expires_in` (None: never);
/// `platform_managed` puts it on AKS's self-rotating KMS experience (a versionless key id).
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub expires_in: Option<Duration>,
    pub platform_managed: bool,
}

/// `90d`, `none`, `auto:5d` (platform-managed rotation).
pub fn parse_member(s: &str) -> Result<Member, String> {
    let (platform_managed, rest) = match s.strip_prefix("auto:") {
        Some(r) => (true, r),
        None => (false, s),
    };
    let expires_in = match rest {
        "none" => None,
        d => Some(crate::checks::expiry::parse_duration(d)?),
    };
    Ok(Member {
        expires_in,
        platform_managed,
    })
}

/// Adds the fleet's clusters and keys to a new world.
pub fn seed(w: &mut World, members: &[Member]) {
    if members.is_empty() {
        return;
    }
    w.second_subscription = uuid::Uuid::new_v4().to_string();
    for (i, m) in members.iter().enumerate() {
        let n = i + 1;
        let key_name = format!("fleet-key-{n}");
        let exp = m.expires_in.map(|d| now_unix() + d.as_secs() as i64);
        let mut key = KeyRecord::default();
        key.versions.push(new_key_version("RSA", exp));
        let version = key.versions[0].version.clone();
        w.keys.insert(key_name.clone(), key);
        // Odd members in the twin's subscription, even ones in the second.
        let sub = if n % 2 == 1 {
            w.ids.subscription.clone()
        } else {
            w.second_subscription.clone()
        };
        let name = format!("aks-fleet-{n}");
        let mut c = w.cluster.clone();
        c["id"] = json!(format!(
            "/subscriptions/{sub}/resourceGroups/rg-fleet/providers/Microsoft.ContainerService/managedClusters/{name}"
        ));
        c["name"] = json!(name);
        // Each cluster its own API server host, as AKS names them: a kubeconfig for aks-twin
        // is not this cluster's, and the wrong-cluster guards can tell.
        let dns = format!("{name}-dns");
        c["properties"]["dnsPrefix"] = json!(dns);
        c["properties"]["fqdn"] = json!(format!(
            "{dns}-{}.hcp.{}.azmk8s.io",
            &uuid::Uuid::new_v4().simple().to_string()[..8],
            w.ids.location
        ));
        let kid = super::resources::kid(&w.ids, &key_name, &version);
        let sp = &mut c["properties"]["securityProfile"];
        if m.platform_managed {
            sp["azureKeyVaultKms"] = json!({
                "enabled": true,
                "keyId": kid.rsplit_once('/').map(|(k, _)| k).unwrap_or(&kid),
                "keyVaultNetworkAccess": "Public"
            });
            sp["kubernetesResourceObjectEncryptionProfile"] =
                json!({ "infrastructureEncryption": "Enabled" });
        } else {
            sp["azureKeyVaultKms"] =
                json!({ "enabled": true, "keyId": kid, "keyVaultNetworkAccess": "Public" });
        }
        w.fleet.push(c);
    }
}

fn subscription_of(c: &Value) -> String {
    c["id"]
        .as_str()
        .unwrap_or_default()
        .split('/')
        .nth(2)
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Every cluster (the twin's own first) in `subscription`.
pub fn clusters_in<'a>(w: &'a World, subscription: &str) -> Vec<&'a Value> {
    std::iter::once(&w.cluster)
        .chain(w.fleet.iter())
        .filter(|c| subscription_of(c) == subscription.to_ascii_lowercase())
        .collect()
}

/// The subscriptions the credential can see.
pub fn subscriptions(w: &World) -> Vec<Value> {
    let mut subs = vec![w.ids.subscription.clone()];
    if !w.fleet.is_empty() {
        subs.push(w.second_subscription.clone());
    }
    subs.iter()
        .enumerate()
        .map(|(i, s)| {
            json!({ "id": format!("/subscriptions/{s}"), "subscriptionId": s, "tenantId": w.ids.tenant,
                    "displayName": format!("kmsctl twin {}", i + 1), "state": "Enabled" })
        })
        .collect()
}

/// Requests in the second subscription: its cluster list and its clusters (read-only).
pub fn handle_second(w: &World, req: &Req, s: &[&str]) -> Resp {
    let list = |v: Vec<&Value>| json_resp(StatusCode::OK, &json!({ "value": v }));
    match s {
        [_, _, "providers", p, "managedClusters"]
            if p.eq_ignore_ascii_case("Microsoft.ContainerService") =>
        {
            list(clusters_in(w, &w.second_subscription))
        }
        [
            _,
            sub,
            "resourceGroups",
            _,
            "providers",
            _,
            "managedClusters",
            name,
        ] if req.method == hyper::Method::GET => {
            match clusters_in(w, sub).into_iter().find(|c| {
                c["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            }) {
                Some(c) => json_resp(StatusCode::OK, c),
                None => arm_error(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFound",
                    &format!(
                        "The Resource 'Microsoft.ContainerService/managedClusters/{name}' was not found."
                    ),
                ),
            }
        }
        _ => arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            "The twin serves only managedClusters (read-only) in this subscription.",
        ),
    }
}

/// `POST /providers/Microsoft.ResourceGraph/resources`: the twin understands queries over
/// managedClusters (optionally only those with KMS), in the subscriptions asked for, paged with
/// `$top` and `$skipToken` as the service pages.
pub fn graph_query(w: &World, req: &Req) -> Resp {
    let clusters: Vec<Value> = std::iter::once(&w.cluster)
        .chain(w.fleet.iter())
        .cloned()
        .collect();
    graph_over(req, &subscriptions(w), &clusters)
}

/// The query over `clusters`, with `subscriptions` visible to the credential.
pub fn graph_over(req: &Req, subscriptions: &[Value], clusters: &[Value]) -> Resp {
    let Ok(body) = req.json() else {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The request content was invalid and could not be deserialized.",
        );
    };
    let query = body["query"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let Some(subs) = body["subscriptions"].as_array() else {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Please provide below info when asking for support: ... The subscriptions of the query are missing.",
        );
    };
    let visible: Vec<String> = subscriptions
        .iter()
        .filter_map(|s| s["subscriptionId"].as_str().map(str::to_ascii_lowercase))
        .collect();
    let mut rows: Vec<Value> = Vec::new();
    if query.contains("microsoft.containerservice/managedclusters") {
        for sub in subs.iter().filter_map(Value::as_str) {
            if !visible.contains(&sub.to_ascii_lowercase()) {
                continue;
            }
            for c in clusters
                .iter()
                .filter(|c| subscription_of(c) == sub.to_ascii_lowercase())
            {
                let p = &c["properties"]["securityProfile"];
                let kms = p["azureKeyVaultKms"]["enabled"].as_bool() == Some(true)
                    || p["kubernetesResourceObjectEncryptionProfile"].is_object();
                if query.contains("azurekeyvaultkms") && !kms {
                    continue;
                }
                let id = c["id"].as_str().unwrap_or_default();
                let rg = id.split('/').nth(4).unwrap_or_default();
                rows.push(json!({ "id": id, "name": c["name"], "type": "microsoft.containerservice/managedclusters",
                                  "location": c["location"], "resourceGroup": rg.to_ascii_lowercase(),
                                  "subscriptionId": subscription_of(c), "properties": c["properties"] }));
            }
        }
    }
    let top = body["options"]["$top"]
        .as_u64()
        .unwrap_or(100)
        .clamp(1, 1000) as usize;
    let skip = body["options"]["$skipToken"]
        .as_str()
        .and_then(|t| t.strip_prefix("twin-"))
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0);
    let total = rows.len();
    let page: Vec<Value> = rows.into_iter().skip(skip).take(top).collect();
    let mut out = json!({ "totalRecords": total, "count": page.len(), "resultTruncated": "false",
                          "data": page, "facets": [] });
    if skip + top < total {
        out["$skipToken"] = json!(format!("twin-{}", skip + top));
    }
    json_resp(StatusCode::OK, &out)
}
