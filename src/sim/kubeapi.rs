//! The Kubernetes API server, as much as kubectl's `get`/`replace` pipeline, kube-rs and kmsctl
//! need: discovery, namespaces, Secrets (through the key-aware storage), ConfigMaps, Pods,
//! Leases and FlowSchemas; API Priority and Fairness answers 429 above the write rate.

use super::http::{
    Req, Resp, bytes, json_resp, k8s_conflict, k8s_exists, k8s_not_found, k8s_status, with_header,
};
use super::replicas::{Transformation, sha256_label};
use super::secrets::{StoreError, decode_continue};
use super::world::Shared;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;

pub fn handle(shared: &Shared, req: &Req) -> Resp {
    let token_ok = super::credentials::kube_authenticated(&shared.world(), req.bearer());
    if !token_ok {
        return k8s_status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
            None,
        );
    }
    let mutating = matches!(
        req.method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if mutating && !shared.write_limiter.admit() {
        let r = k8s_status(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests, please try again later.",
            Some(json!({ "retryAfterSeconds": 1 })),
        );
        return with_header(r, "retry-after", "1");
    }
    let s = req.segments();
    match s.as_slice() {
        ["version"] => version(shared),
        ["api"] => json_resp(
            StatusCode::OK,
            &json!({ "kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:443" }] }),
        ),
        ["api", "v1"] => json_resp(StatusCode::OK, &core_resources()),
        ["apis"] => json_resp(StatusCode::OK, &groups()),
        ["apis", g, v] => group_resources(g, v),
        ["openapi", "v2"] => {
            // A minimal protobuf OpenAPI document (swagger = "2.0"): kubectl then relies on
            // server-side field validation (shared/kubectl-contract.md).
            bytes(
                StatusCode::OK,
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                vec![0x0a, 0x03, 0x32, 0x2e, 0x30],
            )
        }
        ["metrics"] => metrics(shared, req),
        ["api", "v1", "namespaces"] if req.method == Method::POST => create_namespace(shared, req),
        ["api", "v1", "namespaces"] => namespaces(shared, None),
        ["api", "v1", "namespaces", ns] => namespaces(shared, Some(ns)),
        ["api", "v1", "secrets"] if req.method == Method::GET => list_secrets(shared, req, None),
        ["api", "v1", "namespaces", ns, "secrets"] => match req.method {
            Method::GET => list_secrets(shared, req, Some(ns)),
            Method::POST => create_secret(shared, req, ns),
            _ => method_not_allowed(),
        },
        ["api", "v1", "namespaces", ns, "secrets", name] => secret(shared, req, ns, name),
        ["api", "v1", "namespaces", ns, "pods", name, "log"] => pod_log(shared, req, ns, name),
        ["api", "v1", res] if CORE_KEPT.contains(res) && req.method == Method::GET => {
            objects(shared, req, res, "", None)
        }
        ["api", "v1", "namespaces", ns, res] if CORE_KEPT.contains(res) => {
            objects(shared, req, res, ns, None)
        }
        ["api", "v1", "namespaces", ns, res, name] if CORE_KEPT.contains(res) => {
            objects(shared, req, res, ns, Some(name))
        }
        ["apis", g, "v1", "namespaces", ns, res] if group_resource(g, res) == Some(true) => {
            objects(shared, req, res, ns, None)
        }
        ["apis", g, "v1", "namespaces", ns, res, name] if group_resource(g, res) == Some(true) => {
            objects(shared, req, res, ns, Some(name))
        }
        ["apis", g, "v1", res] if group_resource(g, res).is_some() => {
            objects(shared, req, res, "", None)
        }
        ["apis", g, "v1", res, name] if group_resource(g, res) == Some(false) => {
            objects(shared, req, res, "", Some(name))
        }
        _ => k8s_status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            None,
        ),
    }
}

fn method_not_allowed() -> Resp {
    k8s_status(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        None,
    )
}

fn version(shared: &Shared) -> Resp {
    let v = shared.world().kubernetes_version();
    let minor = v.split('.').nth(1).unwrap_or("33").to_string();
    json_resp(
        StatusCode::OK,
        &json!({ "major": "1", "minor": minor, "gitVersion": format!("v{v}"), "gitCommit": "0000000000000000000000000000000000000000",
                 "gitTreeState": "clean", "buildDate": "2026-10-01T00:00:00Z", "goVersion": "go1.25.1", "compiler": "gc", "platform": "linux/amd64" }),
    )
}

fn resource(name: &str, kind: &str, namespaced: bool) -> Value {
    // kubectl resolves `ns`, `cm`, `po` through discovery's shortNames.
    let short: &[&str] = match name {
        "namespaces" => &["ns"],
        "configmaps" => &["cm"],
        "pods" => &["po"],
        "events" => &["ev"],
        "serviceaccounts" => &["sa"],
        _ => &[],
    };
    json!({ "name": name, "singularName": kind.to_ascii_lowercase(), "namespaced": namespaced, "kind": kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": short })
}

fn core_resources() -> Value {
    json!({ "kind": "APIResourceList", "groupVersion": "v1", "resources": [
        resource("namespaces", "Namespace", false), resource("secrets", "Secret", true),
        resource("configmaps", "ConfigMap", true), resource("pods", "Pod", true),
        resource("serviceaccounts", "ServiceAccount", true), resource("events", "Event", true) ] })
}

/// API groups the twin announces, with their resources (plural, kind, namespaced). Discovery
/// lists what kubectl needs to map manifests (the CronJob kmsctl prints, RBAC); a GET of an
/// object the twin does not keep answers 404 NotFound, as for an object that does not exist.
/// (plural, kind, namespaced)
type Resource = (&'static str, &'static str, bool);

const GROUPS: &[(&str, &[Resource])] = &[
    ("coordination.k8s.io", &[("leases", "Lease", true)]),
    (
        "flowcontrol.apiserver.k8s.io",
        &[("flowschemas", "FlowSchema", false)],
    ),
    (
        "batch",
        &[("cronjobs", "CronJob", true), ("jobs", "Job", true)],
    ),
    (
        "secrets-store.csi.x-k8s.io",
        &[("secretproviderclasses", "SecretProviderClass", true)],
    ),
    (
        "rbac.authorization.k8s.io",
        &[
            ("roles", "Role", true),
            ("rolebindings", "RoleBinding", true),
            ("clusterroles", "ClusterRole", false),
            ("clusterrolebindings", "ClusterRoleBinding", false),
        ],
    ),
];

/// Core resources the twin keeps as plain objects (Secrets have their own store).
const CORE_KEPT: &[&str] = &["configmaps", "pods", "events", "serviceaccounts"];

/// Whether `group` has `res`, and if so whether it is namespaced.
fn group_resource(group: &str, res: &str) -> Option<bool> {
    GROUPS
        .iter()
        .find(|(g, _)| *g == group)
        .and_then(|(_, rs)| rs.iter().find(|(p, ..)| *p == res))
        .map(|(_, _, namespaced)| *namespaced)
}

/// The kind of a resource the twin keeps, for its list's kind.
fn kind_of(res: &str) -> &'static str {
    match res {
        "configmaps" => "ConfigMap",
        "pods" => "Pod",
        "events" => "Event",
        "serviceaccounts" => "ServiceAccount",
        _ => GROUPS
            .iter()
            .flat_map(|(_, rs)| rs.iter())
            .find(|(p, ..)| *p == res)
            .map_or("Object", |(_, k, _)| k),
    }
}

/// `GET .../pods/NAME/log?container=C&sinceSeconds=N`: the container's lines, oldest first.
fn pod_log(shared: &Shared, req: &Req, ns: &str, name: &str) -> Resp {
    let w = shared.world();
    let Some(pod) = w.objects.get("pods", ns, name) else {
        return k8s_not_found("pods", name);
    };
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match req.query.get("container") {
        Some(c) => c.as_str(),
        None if containers.len() == 1 => containers[0],
        None => {
            return k8s_status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                ),
                None,
            );
        }
    };
    if !containers.contains(&container) {
        return k8s_status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("container {container} is not valid for pod {name}"),
            None,
        );
    }
    let since = req
        .query
        .get("sinceSeconds")
        .and_then(|s| s.parse::<i64>().ok())
        .map(|s| super::world::now_unix() - s);
    let mut lines: Vec<&(i64, String)> = w
        .logs
        .get(&(ns.to_string(), name.to_string(), container.to_string()))
        .into_iter()
        .flatten()
        .filter(|(t, _)| since.is_none_or(|s| *t >= s))
        .collect();
    lines.sort_by_key(|(t, _)| *t);
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    bytes(StatusCode::OK, "text/plain", text)
}

fn groups() -> Value {
    let groups: Vec<Value> = GROUPS
        .iter()
        .map(|(g, ..)| {
            let gv = json!({ "groupVersion": format!("{g}/v1"), "version": "v1" });
            json!({ "name": g, "versions": [gv], "preferredVersion": gv })
        })
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

fn group_resources(g: &str, v: &str) -> Resp {
    match GROUPS.iter().find(|(name, ..)| *name == g) {
        Some((g, resources)) if v == "v1" => {
            let list: Vec<Value> = resources
                .iter()
                .map(|(plural, kind, namespaced)| resource(plural, kind, *namespaced))
                .collect();
            json_resp(
                StatusCode::OK,
                &json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{g}/v1"), "resources": list }),
            )
        }
        _ => k8s_status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            None,
        ),
    }
}

fn namespace_object(name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": name, "uid": format!("ns-{name}"), "resourceVersion": "1", "creationTimestamp": "2026-01-15T09:00:00Z",
                          "labels": { "kubernetes.io/metadata.name": name } },
            "spec": { "finalizers": ["kubernetes"] }, "status": { "phase": "Active" } })
}

const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-node-lease", "kube-public", "kube-system"];

fn namespace_names(shared: &Shared) -> Vec<String> {
    let mut names: std::collections::BTreeSet<String> = shared.secrets_read().namespaces.clone();
    names.extend(SYSTEM_NAMESPACES.iter().map(|s| s.to_string()));
    names.into_iter().collect()
}

fn namespaces(shared: &Shared, one: Option<&str>) -> Resp {
    let names = namespace_names(shared);
    match one {
        Some(n) if names.iter().any(|x| x == n) => json_resp(StatusCode::OK, &namespace_object(n)),
        Some(n) => k8s_not_found("namespaces", n),
        None => {
            let items: Vec<Value> = names.iter().map(|n| namespace_object(n)).collect();
            json_resp(
                StatusCode::OK,
                &json!({ "kind": "NamespaceList", "apiVersion": "v1", "metadata": { "resourceVersion": "1" }, "items": items }),
            )
        }
    }
}

fn store_error(kind: &str, name: &str, e: StoreError) -> Resp {
    match e {
        StoreError::NotFound => k8s_not_found(kind, name),
        StoreError::Conflict => k8s_conflict(kind, name),
        StoreError::AlreadyExists => k8s_exists(kind, name),
        StoreError::Invalid(m) => k8s_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!("{kind} \"{name}\" is invalid: {m}"),
            None,
        ),
        StoreError::Encrypt(e) => internal(&format!(
            "Internal error occurred: failed to encrypt data: {e}"
        )),
        StoreError::Expired(token) => {
            let r = json!({ "kind": "Status", "apiVersion": "v1", "metadata": { "continue": token }, "status": "Failure",
                "message": "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                "reason": "Expired", "code": 410 });
            json_resp(StatusCode::GONE, &r)
        }
    }
}

fn internal(message: &str) -> Resp {
    k8s_status(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        message,
        None,
    )
}

fn list_secrets(shared: &Shared, req: &Req, ns: Option<&str>) -> Resp {
    let (view, ttl) = {
        let w = shared.world();
        (w.kms_view(req.replica), w.opts.continue_ttl_seconds * 1000)
    };
    let limit = req.query.get("limit").and_then(|l| l.parse::<usize>().ok());
    let store = shared.secrets_read();
    let after = match req.query.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match decode_continue(c, ttl, store.revision) {
            Ok(a) => Some(a),
            Err(e) => return store_error("secrets", "", e),
        },
    };
    let page = store.list(ns, limit, after.as_deref());
    if let Some(e) = page.items.iter().find_map(|s| view.decrypt_error(&s.key)) {
        return internal(&e);
    }
    let mut decoded: std::collections::BTreeMap<&str, u64> = Default::default();
    for s in &page.items {
        *decoded.entry(&s.key).or_default() += 1;
    }
    let mut meta = json!({ "resourceVersion": page.revision.to_string() });
    if let Some(c) = &page.continue_token {
        meta["continue"] = json!(c);
        meta["remainingItemCount"] = json!(page.remaining);
    }
    let mut out = Vec::with_capacity(page.items.len() * 2048 + 256);
    out.extend_from_slice(b"{\"kind\":\"SecretList\",\"apiVersion\":\"v1\",\"metadata\":");
    serde_json::to_writer(&mut out, &meta).expect("json serializes");
    out.extend_from_slice(b",\"items\":[");
    for (i, s) in page.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &s.obj).expect("json serializes");
    }
    out.extend_from_slice(b"]}");
    let decoded: Vec<(String, u64)> = decoded
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect();
    drop(store);
    let mut w = shared.world();
    for (label, n) in decoded {
        w.count_use(req.replica, Transformation::FromStorage, &label, n);
    }
    drop(w);
    bytes(StatusCode::OK, "application/json", out)
}

fn parse_body(req: &Req, kind: &str) -> Result<Value, Box<Resp>> {
    let protobuf = req
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/vnd.kubernetes.protobuf"));
    let decoded = if protobuf {
        super::protobuf::decode_secret(&req.body)
    } else {
        req.json()
    };
    let v: Value = decoded.map_err(|e| {
        Box::new(k8s_status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("the body of the request was in an unknown format: {e}"),
            None,
        ))
    })?;
    if !v["metadata"].is_object() {
        return Err(Box::new(k8s_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!("{kind} is invalid: metadata: Required value"),
            None,
        )));
    }
    Ok(v)
}

fn namespace_exists(shared: &Shared, ns: &str) -> bool {
    SYSTEM_NAMESPACES.contains(&ns) || shared.secrets_read().namespaces.contains(ns)
}

fn create_secret(shared: &Shared, req: &Req, ns: &str) -> Resp {
    let obj = match parse_body(req, "Secret") {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if !namespace_exists(shared, ns) {
        return k8s_not_found("namespaces", ns);
    }
    let view = shared.world().kms_view(req.replica);
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let created =
        shared
            .secrets_write()
            .create(ns, obj, view.write.clone(), view.write_error.as_deref());
    match created {
        Ok(o) => {
            let to = Transformation::ToStorage;
            shared.world().count_use(req.replica, to, &view.write, 1);
            json_resp(StatusCode::CREATED, &o)
        }
        Err(e) => store_error("secrets", &name, e),
    }
}

fn secret(shared: &Shared, req: &Req, ns: &str, name: &str) -> Resp {
    let view = shared.world().kms_view(req.replica);
    match req.method {
        Method::GET => {
            let store = shared.secrets_read();
            let (resp, label) = match store.get(ns, name) {
                None => (k8s_not_found("secrets", name), None),
                Some(s) => match view.decrypt_error(&s.key) {
                    Some(e) => (internal(&e), None),
                    None => (json_resp(StatusCode::OK, &s.obj), Some(s.key.clone())),
                },
            };
            drop(store);
            if let Some(label) = label {
                let from = Transformation::FromStorage;
                shared.world().count_use(req.replica, from, &label, 1);
            }
            resp
        }
        Method::PUT => {
            let obj = match parse_body(req, "Secret") {
                Ok(v) => v,
                Err(r) => return *r,
            };
            if obj["metadata"]["name"].as_str() != Some(name) {
                return k8s_status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the name of the object does not match the name on the URL",
                    None,
                );
            }
            let mut store = shared.secrets_write();
            let read = store.get(ns, name).map(|s| s.key.clone());
            if let Some(e) = read.as_deref().and_then(|k| view.decrypt_error(k)) {
                return internal(&e);
            }
            let result = store.replace(
                ns,
                name,
                obj,
                view.write.clone(),
                view.write_error.as_deref(),
            );
            drop(store);
            updated(shared, req.replica, name, read, &view.write, result)
        }
        // kubectl annotate/label/patch: a JSON merge patch (strategic merge is the same for the
        // maps a Secret has), then the same update rules as a PUT.
        Method::PATCH => {
            let patch: Value = match req.json() {
                Ok(p) => p,
                Err(e) => {
                    return k8s_status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("the body of the request was in an unknown format: {e}"),
                        None,
                    );
                }
            };
            let mut store = shared.secrets_write();
            let Some(current) = store.get(ns, name) else {
                return k8s_not_found("secrets", name);
            };
            if let Some(e) = view.decrypt_error(&current.key) {
                return internal(&e);
            }
            let read = Some(current.key.clone());
            let mut obj = current.obj.clone();
            merge_patch(&mut obj, &patch);
            let result = store.replace(
                ns,
                name,
                obj,
                view.write.clone(),
                view.write_error.as_deref(),
            );
            drop(store);
            updated(shared, req.replica, name, read, &view.write, result)
        }
        Method::DELETE => match shared.secrets_write().delete(ns, name) {
            Ok(o) => json_resp(StatusCode::OK, &o),
            Err(e) => store_error("secrets", name, e),
        },
        _ => method_not_allowed(),
    }
}

/// The answer to an update, counted on the serving replica's metrics: the read of the stored
/// copy, and the write when the update was stored.
fn updated(
    shared: &Shared,
    replica: usize,
    name: &str,
    read: Option<Arc<str>>,
    write: &str,
    result: Result<(Vec<u8>, bool), StoreError>,
) -> Resp {
    let mut w = shared.world();
    if let Some(label) = &read {
        w.count_use(replica, Transformation::FromStorage, label, 1);
    }
    match result {
        Ok((o, written)) => {
            if written {
                w.count_use(replica, Transformation::ToStorage, write, 1);
            }
            bytes(StatusCode::OK, "application/json", o)
        }
        Err(e) => store_error("secrets", name, e),
    }
}

fn objects(shared: &Shared, req: &Req, res: &str, ns: &str, name: Option<&str>) -> Resp {
    let mut w = shared.world();
    let now = std::time::Instant::now();
    let live: Vec<String> = w
        .replicas
        .iter()
        .filter(|r| r.up(now))
        .map(|r| r.holder.clone())
        .collect();
    if res == "leases"
        && req.method == Method::DELETE
        && let Some(n) = name
    {
        w.lease_deleted(n);
    }
    let store = &mut w.objects;
    let kind_list = format!("{}List", kind_of(res));
    match (&req.method, name) {
        (&Method::GET, None) => {
            if res == "leases" {
                store.renew_apiserver_identities(&live);
            }
            let ns_filter = (!ns.is_empty()).then_some(ns);
            let fields = req.query.get("fieldSelector").map(String::as_str);
            let items: Vec<&Value> = store
                .list(
                    res,
                    ns_filter,
                    req.query.get("labelSelector").map(String::as_str),
                )
                .into_iter()
                .filter(|o| super::objects::matches_fields(o, fields))
                .collect();
            json_resp(
                StatusCode::OK,
                &json!({ "kind": kind_list, "apiVersion": "v1", "metadata": { "resourceVersion": "1" }, "items": items }),
            )
        }
        (&Method::GET, Some(n)) => {
            if res == "leases" {
                store.renew_apiserver_identities(&live);
            }
            match store.get(res, ns, n) {
                Some(o) => json_resp(StatusCode::OK, o),
                None => k8s_not_found(res, n),
            }
        }
        (&Method::POST, None) => match parse_body(req, res) {
            Err(r) => *r,
            Ok(o) => {
                let n = o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                match store.create(res, ns, o) {
                    Ok(o) => json_resp(StatusCode::CREATED, &o),
                    Err(e) => store_error(res, &n, e),
                }
            }
        },
        (&Method::PUT, Some(n)) => match parse_body(req, res) {
            Err(r) => *r,
            Ok(o) => match store.replace(res, ns, n, o) {
                Ok(o) => json_resp(StatusCode::OK, &o),
                Err(e) => store_error(res, n, e),
            },
        },
        (&Method::DELETE, Some(n)) => {
            // DeleteOptions.preconditions: uid and resourceVersion must both still hold.
            let body = req.json().unwrap_or(Value::Null);
            let current = store.get(res, ns, n).cloned().unwrap_or(Value::Null);
            for field in ["uid", "resourceVersion"] {
                let (Some(want), Some(have)) = (
                    body["preconditions"][field].as_str(),
                    current["metadata"][field].as_str(),
                ) else {
                    continue;
                };
                if want != have {
                    let label = if field == "uid" {
                        "UID"
                    } else {
                        "ResourceVersion"
                    };
                    let msg = format!(
                        "Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}"
                    );
                    return k8s_status(StatusCode::CONFLICT, "Conflict", &msg, None);
                }
            }
            objects_delete(store, res, ns, n)
        }
        _ => method_not_allowed(),
    }
}

fn objects_delete(store: &mut super::objects::ObjectStore, res: &str, ns: &str, n: &str) -> Resp {
    match store.delete(res, ns, n) {
        Ok(o) => json_resp(StatusCode::OK, &o),
        Err(e) => store_error(res, n, e),
    }
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn create_namespace(shared: &Shared, req: &Req) -> Resp {
    let obj = match parse_body(req, "Namespace") {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(name) = obj["metadata"]["name"].as_str().filter(|n| !n.is_empty()) else {
        return k8s_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "Namespace is invalid: metadata.name: Required value",
            None,
        );
    };
    if namespace_exists(shared, name) {
        return k8s_exists("namespaces", name);
    }
    shared.secrets_write().namespaces.insert(name.to_string());
    json_resp(StatusCode::CREATED, &namespace_object(name))
}

/// The serving replica's envelope-encryption metrics: for each KMS v2 key id its plugin's
/// status calls returned, when it last did, and how often it wrote and read with each (the
/// series kube-apiserver exports).
fn metrics(shared: &Shared, req: &Req) -> Resp {
    let w = shared.world();
    if !w.opts.metrics_readable {
        return k8s_status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "forbidden: User \"clusterUser\" cannot get path \"/metrics\"",
            None,
        );
    }
    let now = std::time::Instant::now();
    let r = req.replica;
    let last = w.last_status_call(r, now);
    let replica = &w.replicas[r];
    let apiserver = replica.id_hash();
    let name = "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds";
    let mut out = format!(
        "# HELP {name} [ALPHA] The last time in seconds when a keyID was returned by the Status RPC call.\n# TYPE {name} gauge\n"
    );
    // Every key id the replica has been told, each with the last status call that returned it.
    let mut seen: Vec<(Arc<str>, f64)> = Vec::new();
    for (i, (from, label)) in w.timeline.changes.iter().enumerate() {
        let until = w.timeline.changes.get(i + 1).map(|(t, _)| *t);
        if *from > last {
            break;
        }
        let returned_at = match until {
            Some(u) if u <= last => w.last_status_call(
                r,
                u.checked_sub(std::time::Duration::from_millis(1))
                    .unwrap_or(u),
            ),
            _ => last,
        };
        // Not returned to this incarnation: before it started (a restarted replica), or
        // replaced before its next status call.
        if w.timeline.at(returned_at) != *label || returned_at < replica.booted {
            continue;
        }
        seen.retain(|(l, _)| l != label);
        seen.push((label.clone(), w.unix_of(returned_at)));
    }
    for (label, at) in seen {
        if let Some(kid) = label.strip_prefix("kms:v2:") {
            out.push_str(&format!(
                "{name}{{apiserver_id_hash=\"{apiserver}\",key_id_hash=\"{}\",provider_name=\"azurekmsprovider\"}} {at:.3}\n",
                sha256_label(kid)
            ));
        }
    }
    out.push_str(&super::replicas::counter_metrics(replica));
    bytes(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        out.into_bytes(),
    )
}
