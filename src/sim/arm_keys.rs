//! Key Vault keys as Azure Resource Manager serves them (`Microsoft.KeyVault/vaults/keys` and
//! `.../keys/{key}/versions`, read-only here): the key's metadata and attributes, never its
//! material, paged with `nextLink` as the service pages. Resource Manager does not go through
//! the vault's firewall or private link, so these answer from any network.

use super::http::{Req, Resp, arm_error, json_resp};
use super::resources::key_attributes;
use super::world::{KeyVersion, World};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// Items per page: small, so that a client which does not follow `nextLink` misses versions.
const PAGE: usize = 2;

fn uri(w: &World, name: &str) -> String {
    // The service writes the vault host with its port.
    format!("https://{}:443/keys/{name}", w.ids.vault_host())
}

fn properties(w: &World, name: &str, v: &KeyVersion) -> Value {
    let mut p = json!({
        "attributes": key_attributes(v),
        "kty": v.kty,
        "keyOps": v.key_ops,
        "keyUri": uri(w, name),
        "keyUriWithVersion": format!("{}/{}", uri(w, name), v.version),
    });
    if v.kty.starts_with("RSA") {
        p["keySize"] = json!(2048);
    } else {
        p["curveName"] = json!("P-256");
    }
    p
}

/// The data plane's rotation policy as Resource Manager shows it (action types in lowercase).
fn rotation_policy(policy: &Value) -> Value {
    let actions: Vec<Value> = policy["lifetimeActions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            json!({ "trigger": a["trigger"],
                    "action": { "type": a["action"]["type"].as_str().unwrap_or_default().to_ascii_lowercase() } })
        })
        .collect();
    json!({ "attributes": policy["attributes"], "lifetimeActions": actions })
}

fn key_resource(w: &World, name: &str) -> Option<Value> {
    let record = w.keys.get(name)?;
    let newest = record.versions.last()?;
    let mut p = properties(w, name, newest);
    if let Some(policy) = &record.rotation_policy {
        p["rotationPolicy"] = rotation_policy(policy);
    }
    Some(json!({
        "id": format!("{}/keys/{name}", w.ids.vault_id()),
        "name": name, "type": "Microsoft.KeyVault/vaults/keys",
        "location": w.ids.location, "tags": newest.tags, "properties": p
    }))
}

fn version_resource(w: &World, name: &str, v: &KeyVersion) -> Value {
    json!({
        "id": format!("{}/keys/{name}/versions/{}", w.ids.vault_id(), v.version),
        "name": v.version, "type": "Microsoft.KeyVault/vaults/keys/versions",
        "location": w.ids.location, "tags": v.tags, "properties": properties(w, name, v)
    })
}

fn not_found(w: &World, what: &str) -> Resp {
    arm_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!(
            "The Resource 'Microsoft.KeyVault/vaults/{}/{what}' under resource group '{}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            w.ids.vault, w.ids.resource_group
        ),
    )
}

/// One page of `items`, from `$skiptoken`, with the next page's link.
fn page(req: &Req, items: Vec<Value>) -> Resp {
    let skip = req
        .query
        .get("$skiptoken")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    let total = items.len();
    let value: Vec<Value> = items.into_iter().skip(skip).take(PAGE).collect();
    let mut out = json!({ "value": value });
    if skip + PAGE < total {
        let api = req.query.get("api-version").cloned().unwrap_or_default();
        out["nextLink"] = json!(format!(
            "https://management.azure.com{}?api-version={api}&$skiptoken={}",
            req.path,
            skip + PAGE
        ));
    }
    json_resp(StatusCode::OK, &out)
}

/// `rest`: the path after `.../vaults/{vault}/keys` (the vault is the twin's).
pub fn handle(w: &World, req: &Req, rest: &[&str]) -> Resp {
    if req.method != Method::GET {
        return arm_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The twin serves keys read-only through Resource Manager; change them on the data plane.",
        );
    }
    let canonical = rest.first().and_then(|n| w.key_name(n));
    match (rest, canonical) {
        ([], _) => page(
            req,
            w.keys.keys().filter_map(|n| key_resource(w, n)).collect(),
        ),
        ([n], None) | ([n, ..], None) => not_found(w, &format!("keys/{n}")),
        ([_], Some(name)) => match key_resource(w, &name) {
            Some(k) => json_resp(StatusCode::OK, &k),
            None => not_found(w, &format!("keys/{name}")),
        },
        ([_, v], Some(name)) if v.eq_ignore_ascii_case("versions") => page(
            req,
            w.keys[&name]
                .versions
                .iter()
                .map(|v| version_resource(w, &name, v))
                .collect(),
        ),
        ([_, v, version], Some(name)) if v.eq_ignore_ascii_case("versions") => {
            match w.key_version(&name, version) {
                Some(kv) => json_resp(StatusCode::OK, &version_resource(w, &name, kv)),
                None => not_found(w, &format!("keys/{name}/versions/{version}")),
            }
        }
        _ => arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            "The resource type could not be found in the twin.",
        ),
    }
}
