//! The Key Vault keys data plane: challenge-based authentication, create, get (latest or by
//! version), list versions, rotate, update attributes, rotation policy, and the crypto
//! operations the KMS plugin uses, with the service's rules for disabled and expired keys.

use super::http::{Req, Resp, json_resp, kv_error, with_header};
use super::resources::{key_attributes, key_bundle, kid};
use super::world::{KeyVersion, Shared, World, new_key_version, now_unix};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

pub const AUDIENCE: &str = "https://vault.azure.net";

fn challenge(w: &World, message: &str) -> Resp {
    let resp = kv_error(StatusCode::UNAUTHORIZED, "Unauthorized", message, None);
    let value = format!(
        "Bearer authorization=\"https://login.microsoftonline.com/{}\", resource=\"{AUDIENCE}\"",
        w.ids.tenant
    );
    with_header(resp, "www-authenticate", &value)
}

fn not_found(name: &str) -> Resp {
    kv_error(
        StatusCode::NOT_FOUND,
        "KeyNotFound",
        &format!(
            "A key with (name/id) {name} was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
        ),
        None,
    )
}

fn disabled(op: &str) -> Resp {
    kv_error(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!("Operation {op} is not allowed on a disabled key."),
        Some("KeyDisabled"),
    )
}

fn expired(op: &str) -> Resp {
    kv_error(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!("Operation {op} is not allowed on an expired key."),
        Some("KeyExpired"),
    )
}

pub fn handle(shared: &Shared, req: &Req) -> Resp {
    let mut w = shared.world();
    if req.host != w.ids.vault_host() {
        return kv_error(
            StatusCode::NOT_FOUND,
            "VaultNotFound",
            &format!("The vault '{}' was not found.", req.host),
            None,
        );
    }
    match req.bearer() {
        None => return challenge(&w, "AKV10000: Request is missing a Bearer or PoP token."),
        Some(t) if !w.token_ok(t, AUDIENCE) => {
            return challenge(&w, "AKV10022: Invalid audience or expired token.");
        }
        Some(_) => {}
    }
    // Key names are case-insensitive in Key Vault: a route names the stored key in any case.
    let mut segs = req.segments();
    let canonical = segs.get(1).and_then(|n| w.key_name(n));
    if let Some(n) = canonical.as_deref() {
        segs[1] = n;
    }
    match (&req.method, segs.as_slice()) {
        (&Method::GET, ["keys"]) => list_keys(&w),
        (&Method::GET, ["keys", name]) => get(&w, name, None),
        (&Method::POST, ["keys", name, "create"]) => create(&mut w, name, req),
        (&Method::POST, ["keys", name, "rotate"]) => rotate(&mut w, name),
        (&Method::GET, ["keys", name, "versions"]) => versions(&w, name, req),
        (&Method::GET, ["keys", name, "rotationpolicy"]) => rotation_policy(&w, name),
        (&Method::PUT, ["keys", name, "rotationpolicy"]) => put_rotation_policy(&mut w, name, req),
        (&Method::GET, ["keys", name, version]) => get(&w, name, Some(version)),
        (&Method::PATCH, ["keys", name, version]) => update(&mut w, name, version, req),
        (&Method::POST, ["keys", name, version, op]) => {
            crypto(&w, name, version, &op.to_ascii_lowercase(), req)
        }
        _ => kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The request URI contains an invalid name or operation.",
            None,
        ),
    }
}

fn find<'a>(w: &'a World, name: &str, version: Option<&str>) -> Option<&'a KeyVersion> {
    let k = w.keys.get(name)?;
    match version.filter(|v| !v.is_empty()) {
        None => k.versions.last(),
        Some(v) => k
            .versions
            .iter()
            .find(|kv| kv.version.eq_ignore_ascii_case(v)),
    }
}

fn list_keys(w: &World) -> Resp {
    let value: Vec<Value> = w
        .keys
        .iter()
        .filter_map(|(n, k)| k.versions.last().map(|v| json!({ "kid": format!("https://{}/keys/{n}", w.ids.vault_host()), "attributes": key_attributes(v) })))
        .collect();
    json_resp(StatusCode::OK, &json!({ "value": value, "nextLink": null }))
}

fn get(w: &World, name: &str, version: Option<&str>) -> Resp {
    match find(w, name, version) {
        None => not_found(name),
        Some(v) if !v.enabled => disabled("get"),
        Some(v) => json_resp(StatusCode::OK, &key_bundle(&w.ids, name, v)),
    }
}

fn apply_attributes(v: &mut KeyVersion, attrs: &Value) {
    if let Some(e) = attrs["enabled"].as_bool() {
        v.enabled = e;
    }
    if attrs.get("exp").is_some() {
        v.exp = attrs["exp"].as_i64();
    }
    if attrs.get("nbf").is_some() {
        v.nbf = attrs["nbf"].as_i64();
    }
}

fn create(w: &mut World, name: &str, req: &Req) -> Resp {
    let Ok(body) = req.json() else {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The request body is not valid JSON.",
            None,
        );
    };
    let kty = body["kty"].as_str().unwrap_or("RSA");
    if !["RSA", "RSA-HSM", "EC", "EC-HSM"].contains(&kty) {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            &format!("Invalid key type '{kty}'."),
            None,
        );
    }
    let mut v = new_key_version(kty, None);
    apply_attributes(&mut v, &body["attributes"]);
    if let Some(ops) = body["key_ops"].as_array() {
        v.key_ops = ops
            .iter()
            .filter_map(|o| o.as_str().map(str::to_string))
            .collect();
    }
    if body["tags"].is_object() {
        v.tags = body["tags"].clone();
    }
    let bundle = key_bundle(&w.ids, name, &v);
    w.keys.entry(name.to_string()).or_default().versions.push(v);
    json_resp(StatusCode::OK, &bundle)
}

/// `P90D`, `P2Y`, `P3M` (as days) -> seconds.
fn iso_days(d: &str) -> Option<i64> {
    let body = d.strip_prefix('P')?;
    let (n, unit) = body.split_at(body.len().checked_sub(1)?);
    let n: i64 = n.parse().ok()?;
    Some(
        match unit {
            "D" => n,
            "M" => n * 30,
            "Y" => n * 365,
            _ => return None,
        } * 86_400,
    )
}

fn rotate(w: &mut World, name: &str) -> Resp {
    let Some(record) = w.keys.get_mut(name) else {
        return not_found(name);
    };
    let Some(last) = record.versions.last() else {
        return not_found(name);
    };
    let exp = record
        .rotation_policy
        .as_ref()
        .and_then(|p| p["attributes"]["expiryTime"].as_str())
        .and_then(iso_days)
        .map(|s| now_unix() + s);
    let mut v = new_key_version(&last.kty.clone(), exp);
    v.key_ops = last.key_ops.clone();
    v.tags = last.tags.clone();
    record.versions.push(v.clone());
    json_resp(StatusCode::OK, &key_bundle(&w.ids, name, &v))
}

fn versions(w: &World, name: &str, req: &Req) -> Resp {
    let Some(record) = w.keys.get(name) else {
        return not_found(name);
    };
    let max = req
        .query
        .get("maxresults")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(25)
        .clamp(1, 25);
    let skip = req
        .query
        .get("$skiptoken")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    let value: Vec<Value> = record
        .versions
        .iter()
        .skip(skip)
        .take(max)
        .map(|v| json!({ "kid": kid(&w.ids, name, &v.version), "attributes": key_attributes(v), "tags": v.tags }))
        .collect();
    let next = (skip + max < record.versions.len()).then(|| {
        let api = req
            .query
            .get("api-version")
            .cloned()
            .unwrap_or_else(|| "2025-07-01".into());
        format!(
            "https://{}:443/keys/{name}/versions?api-version={api}&$skiptoken={}&maxresults={max}",
            w.ids.vault_host(),
            skip + max
        )
    });
    json_resp(StatusCode::OK, &json!({ "value": value, "nextLink": next }))
}

fn default_policy(w: &World, name: &str) -> Value {
    json!({
        "id": format!("https://{}/keys/{name}/rotationpolicy", w.ids.vault_host()),
        "lifetimeActions": [{ "trigger": { "timeBeforeExpiry": "P30D" }, "action": { "type": "Notify" } }],
        "attributes": { "created": now_unix(), "updated": now_unix() }
    })
}

fn rotation_policy(w: &World, name: &str) -> Resp {
    match w.keys.get(name) {
        None => not_found(name),
        Some(k) => json_resp(
            StatusCode::OK,
            &k.rotation_policy
                .clone()
                .unwrap_or_else(|| default_policy(w, name)),
        ),
    }
}

fn put_rotation_policy(w: &mut World, name: &str, req: &Req) -> Resp {
    let Ok(mut body) = req.json() else {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The request body is not valid JSON.",
            None,
        );
    };
    if !w.keys.contains_key(name) {
        return not_found(name);
    }
    body["id"] = json!(format!(
        "https://{}/keys/{name}/rotationpolicy",
        w.ids.vault_host()
    ));
    body["attributes"]["updated"] = json!(now_unix());
    if body["attributes"]["created"].is_null() {
        body["attributes"]["created"] = json!(now_unix());
    }
    if let Some(k) = w.keys.get_mut(name) {
        k.rotation_policy = Some(body.clone());
    }
    json_resp(StatusCode::OK, &body)
}

fn update(w: &mut World, name: &str, version: &str, req: &Req) -> Resp {
    let Ok(body) = req.json() else {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The request body is not valid JSON.",
            None,
        );
    };
    let ids = w.ids.clone();
    let Some(v) = w
        .keys
        .get_mut(name)
        .and_then(|k| k.versions.iter_mut().find(|v| v.version == version))
    else {
        return not_found(name);
    };
    apply_attributes(v, &body["attributes"]);
    if let Some(ops) = body["key_ops"].as_array() {
        v.key_ops = ops
            .iter()
            .filter_map(|o| o.as_str().map(str::to_string))
            .collect();
    }
    if body["tags"].is_object() {
        v.tags = body["tags"].clone();
    }
    v.updated = now_unix();
    json_resp(StatusCode::OK, &key_bundle(&ids, name, v))
}

fn crypto(w: &World, name: &str, version: &str, op: &str, req: &Req) -> Resp {
    let Some(v) = find(w, name, Some(version)) else {
        return not_found(name);
    };
    if !v.enabled {
        return disabled(op);
    }
    let protects = matches!(op, "encrypt" | "wrapkey" | "sign");
    if protects && v.exp.is_some_and(|e| e <= now_unix()) {
        return expired(op);
    }
    if !v.key_ops.iter().any(|o| o.eq_ignore_ascii_case(op)) {
        return kv_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!("Operation {op} is not permitted on this key."),
            Some("KeyOperationForbidden"),
        );
    }
    // The twin does no real cryptography; it echoes the value so a round trip works.
    let value = req
        .json()
        .ok()
        .and_then(|b| b["value"].as_str().map(str::to_string))
        .unwrap_or_default();
    json_resp(
        StatusCode::OK,
        &json!({ "kid": kid(&w.ids, name, version), "value": value }),
    )
}
