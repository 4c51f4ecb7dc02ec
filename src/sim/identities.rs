//! Microsoft.ManagedIdentity as the twin serves it, read-only: user-assigned identities (list in
//! the subscription, get) and their federated identity credentials.

use super::http::{Resp, arm_error, json_resp};
use super::world::World;
use hyper::StatusCode;
use serde_json::{Value, json};

fn public(identity: &Value) -> Value {
    let mut v = identity.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("federatedIdentityCredentials");
    }
    v
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// `s`: the path's segments after `/subscriptions/{id}`.
pub fn handle(w: &World, s: &[&str]) -> Resp {
    let named = |rg: &str, name: &str| {
        w.identities.iter().find(|i| {
            let id = i["id"].as_str().unwrap_or_default().to_ascii_lowercase();
            eq(i["name"].as_str().unwrap_or_default(), name)
                && id.contains(&format!("/resourcegroups/{}/", rg.to_ascii_lowercase()))
        })
    };
    let not_found = |name: &str| {
        arm_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!(
                "The Resource 'Microsoft.ManagedIdentity/userAssignedIdentities/{name}' was not found."
            ),
        )
    };
    match s {
        ["providers", p, "userAssignedIdentities"] if eq(p, "Microsoft.ManagedIdentity") => {
            let list: Vec<Value> = w.identities.iter().map(public).collect();
            json_resp(StatusCode::OK, &json!({ "value": list }))
        }
        [rg_, rg, "providers", p, "userAssignedIdentities", name]
            if eq(rg_, "resourceGroups") && eq(p, "Microsoft.ManagedIdentity") =>
        {
            match named(rg, name) {
                Some(i) => json_resp(StatusCode::OK, &public(i)),
                None => not_found(name),
            }
        }
        [rg_, rg, "providers", p, "userAssignedIdentities", name, f]
            if eq(rg_, "resourceGroups")
                && eq(p, "Microsoft.ManagedIdentity")
                && eq(f, "federatedIdentityCredentials") =>
        {
            match named(rg, name) {
                Some(i) => json_resp(
                    StatusCode::OK,
                    &json!({ "value": i["federatedIdentityCredentials"] }),
                ),
                None => not_found(name),
            }
        }
        _ => arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            "The twin serves user-assigned identities and their federated credentials read-only.",
        ),
    }
}
