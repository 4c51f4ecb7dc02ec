//! The twin's own endpoints under `/_sim/`, for `kmsctl sim inspect` and `kmsctl sim fault`:
//! never used by kmsctl's commands, which see only the real APIs.

use super::faults::FaultRule;
use super::fleet_members::Members;
use super::http::{Req, Resp, json_resp, k8s_status};
use super::world::Shared;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

pub fn handle(members: &Members, req: &Req) -> Resp {
    if req.bearer() != Some(members.first().world().ids.admin_token.as_str()) {
        return k8s_status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the twin's admin token is required",
            None,
        );
    }
    // `?cluster=NAME`: one member of a fleet (default: the first; fault rules: every member).
    let named = match req.query.get("cluster") {
        None => None,
        Some(n) => match members.by_name(n) {
            Some(i) => Some(i),
            None => {
                return k8s_status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!(
                        "the twin has no cluster '{n}'; its clusters: {}",
                        members.names().join(", ")
                    ),
                    None,
                );
            }
        },
    };
    let shared = &members.list[named.unwrap_or(0)];
    match (&req.method, req.path.as_str()) {
        (&Method::GET, "/_sim/inspect") if req.query.contains_key("all") => {
            let clusters: Vec<Value> = members.list.iter().map(inspect).collect();
            json_resp(StatusCode::OK, &json!({ "clusters": clusters }))
        }
        (&Method::GET, "/_sim/inspect") => json_resp(StatusCode::OK, &inspect(shared)),
        (&Method::POST, "/_sim/faults") => {
            let rules: Result<Vec<FaultRule>, String> = match req.json() {
                Ok(Value::Array(a)) => a
                    .into_iter()
                    .map(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
                    .collect(),
                Ok(v) => serde_json::from_value(v)
                    .map(|r| vec![r])
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match rules {
                Ok(r) if named.is_none() && members.fleet => {
                    let mut all = members.faults.lock().unwrap_or_else(|e| e.into_inner());
                    all.extend(r);
                    json_resp(StatusCode::OK, &json!({ "rules": all.len() }))
                }
                Ok(r) => {
                    let mut w = shared.world();
                    w.faults.extend(r);
                    json_resp(StatusCode::OK, &json!({ "rules": w.faults.len() }))
                }
                Err(e) => k8s_status(StatusCode::BAD_REQUEST, "BadRequest", &e, None),
            }
        }
        (&Method::POST, path) if path.starts_with("/_sim/replicas/") => restart(shared, req),
        (&Method::DELETE, "/_sim/faults") => {
            match named {
                Some(_) => shared.world().faults.clear(),
                None => {
                    members
                        .faults
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
                    for m in members.list.iter() {
                        m.world().faults.clear();
                    }
                }
            }
            json_resp(StatusCode::OK, &json!({ "rules": 0 }))
        }
        _ => k8s_status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such twin endpoint",
            None,
        ),
    }
}

/// `POST /_sim/replicas/I/restart {"downSeconds": S}`.
fn restart(shared: &Shared, req: &Req) -> Resp {
    let index = req
        .path
        .strip_prefix("/_sim/replicas/")
        .and_then(|r| r.strip_suffix("/restart"))
        .and_then(|i| i.parse::<usize>().ok());
    let Some(index) = index else {
        return k8s_status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such twin endpoint",
            None,
        );
    };
    let down = req
        .json()
        .ok()
        .and_then(|b| b["downSeconds"].as_u64())
        .unwrap_or(15);
    match shared.restart_replica(index, std::time::Duration::from_secs(down)) {
        Ok(()) => json_resp(
            StatusCode::OK,
            &json!({ "replica": index, "downSeconds": down }),
        ),
        Err(e) => k8s_status(StatusCode::BAD_REQUEST, "BadRequest", &e, None),
    }
}

/// One document with the cluster and vault as ARM returns them, the keys' versions, and where
/// every stored Secret's encryption stands.
pub fn inspect(shared: &Shared) -> Value {
    let (cluster, vault, keys, write_key, rejected, view, replicas) = {
        let mut w = shared.world();
        let now = std::time::Instant::now();
        w.tick(now);
        let keys: serde_json::Map<String, Value> = w
            .keys
            .iter()
            .map(|(name, k)| {
                let versions: Vec<Value> = k
                    .versions
                    .iter()
                    .map(|v| json!({ "kid": super::resources::kid(&w.ids, name, &v.version), "version": v.version, "kty": v.kty, "enabled": v.enabled, "exp": v.exp, "created": v.created }))
                    .collect();
                (name.clone(), Value::Array(versions))
            })
            .collect();
        let write_key: Vec<String> = (0..w.replicas.len())
            .map(|r| w.replica_label(r, now).to_string())
            .collect();
        (
            w.cluster.clone(),
            w.vault.clone(),
            keys,
            write_key,
            shared
                .write_limiter
                .rejected
                .load(std::sync::atomic::Ordering::Relaxed),
            w.kms_view(0),
            w.replicas
                .iter()
                .map(|r| json!({ "id": r.id, "idHash": r.id_hash(), "up": r.up(now) }))
                .collect::<Vec<Value>>(),
        )
    };
    // Secrets the plugin cannot decrypt now, per key they are under: a GET of one answers 500
    // (on a replica without the data key in memory, for a vault out of reach).
    let mut view = view;
    view.cached.clear();
    let store = shared.secrets_read();
    let by_key = store.by_key();
    let unreadable: serde_json::Map<String, Value> = by_key
        .iter()
        .filter(|(label, _)| view.decrypt_error(label).is_some())
        .map(|(label, n)| (label.clone(), json!(n)))
        .collect();
    let unreadable_total: u64 = unreadable.values().filter_map(Value::as_u64).sum();
    json!({
        "cluster": cluster,
        "vault": vault,
        "keys": keys,
        "storage": { "total": store.total(), "byKey": by_key, "writeKey": write_key[0], "writeKeyByReplica": write_key,
                     "unreadable": { "total": unreadable_total, "byKey": unreadable } },
        "apiServer": { "rejectedWrites": rejected, "replicas": replicas }
    })
}
