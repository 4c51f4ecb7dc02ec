//! Azure Resource Manager as the twin serves it: managedClusters (GET, PUT as a whole-resource
//! replace with eTags and long-running operations, list, upgrade profile), the operation
//! status documents, Microsoft.KeyVault/vaults (GET, PATCH; keys read-only in `arm_keys`) and
//! role assignments at a scope.

use super::aks_rules::{self, Facts, available_upgrades, resolve_version};
use super::http::{Req, Resp, arm_error, empty, json_resp, with_header};
use super::resources::{ROLE_CRYPTO_USER, role_assignment};
use super::world::{Operation, Shared, World, new_etag, rfc3339, storage_label};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

pub const AUDIENCE: &str = "https://management.azure.com";
const OPERATION_API: &str = "2016-03-30";

/// Properties the service owns: a PUT cannot change them, the stored value wins.
const READ_ONLY: &[&str] = &[
    "/properties/provisioningState",
    "/properties/powerState",
    "/properties/currentKubernetesVersion",
    "/properties/fqdn",
    "/properties/azurePortalFQDN",
    "/properties/privateFQDN",
    "/properties/nodeResourceGroup",
    "/properties/maxAgentPools",
    "/properties/oidcIssuerProfile/issuerURL",
];

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

pub fn handle(shared: &Shared, req: &Req, fail_operation: bool) -> Resp {
    let mut w = shared.world();
    match req.bearer() {
        None => {
            return arm_error(
                StatusCode::UNAUTHORIZED,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            );
        }
        Some(t) if !w.token_ok(t, AUDIENCE) => {
            return arm_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "The access token is invalid.",
            );
        }
        Some(_) => {}
    }
    if !req.query.contains_key("api-version") {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    let s = req.segments();
    if let Some(pos) = s.iter().rposition(|x| eq(x, "Microsoft.Authorization")) {
        return role_assignments(&mut w, req, &s, pos);
    }
    if s.len() == 1 && eq(s[0], "subscriptions") {
        let subs = super::fleet::subscriptions(&w);
        let n = subs.len();
        return json_resp(
            StatusCode::OK,
            &json!({ "value": subs, "count": { "type": "Total", "value": n } }),
        );
    }
    if let ["providers", p, "resources"] = s.as_slice()
        && eq(p, "Microsoft.ResourceGraph")
        && req.method == Method::POST
    {
        return super::fleet::graph_query(&w, req);
    }
    if s.len() >= 2
        && eq(s[0], "subscriptions")
        && !w.second_subscription.is_empty()
        && eq(s[1], &w.second_subscription)
    {
        return super::fleet::handle_second(&w, req, &s);
    }
    if s.len() < 2 || !eq(s[0], "subscriptions") || !eq(s[1], &w.ids.subscription) {
        return arm_error(
            StatusCode::NOT_FOUND,
            "SubscriptionNotFound",
            &format!(
                "The subscription '{}' could not be found.",
                s.get(1).unwrap_or(&"")
            ),
        );
    }
    let method = &req.method;
    if s.iter().any(|x| eq(x, "Microsoft.ManagedIdentity")) {
        return super::identities::handle(&w, &s[2..]);
    }
    match &s[2..] {
        [] => json_resp(
            StatusCode::OK,
            &json!({ "id": format!("/subscriptions/{}", w.ids.subscription), "subscriptionId": w.ids.subscription, "tenantId": w.ids.tenant,
                     "displayName": "kmsctl twin", "state": "Enabled" }),
        ),
        ["providers", p, "vaults"] if eq(p, "Microsoft.KeyVault") => {
            json_resp(StatusCode::OK, &json!({ "value": [w.vault] }))
        }
        ["providers", p, "locations", _, "operations", id]
            if eq(p, "Microsoft.ContainerService") =>
        {
            operation_status(&w, id)
        }
        ["providers", p, "locations", _, "operationresults", id]
            if eq(p, "Microsoft.ContainerService") =>
        {
            operation_result(&w, id)
        }
        ["providers", p, "managedClusters"] if eq(p, "Microsoft.ContainerService") => list(&w),
        [rg_, rg, "providers", p, "managedClusters"]
            if eq(rg_, "resourceGroups") && eq(p, "Microsoft.ContainerService") =>
        {
            if eq(rg, &w.ids.resource_group) {
                list(&w)
            } else if let Some(missing) = super::missing::group_missing(&w, s[1], rg) {
                missing
            } else {
                json_resp(StatusCode::OK, &json!({ "value": [] }))
            }
        }
        [rg_, rg, "providers", p, "managedClusters", name, rest @ ..]
            if eq(rg_, "resourceGroups") && eq(p, "Microsoft.ContainerService") =>
        {
            if !eq(rg, &w.ids.resource_group) || !eq(name, &w.ids.cluster) {
                // A fleet member of this subscription, or the service's 404.
                let member = w.fleet.iter().any(|c| {
                    c["id"]
                        .as_str()
                        .is_some_and(|id| eq(id, &format!("/{}", s[..8].join("/"))))
                });
                if member {
                    return super::fleet::handle_second(&w, req, &s);
                }
                return super::missing::resource_missing(
                    &w,
                    s[1],
                    rg,
                    "Microsoft.ContainerService/managedClusters",
                    name,
                );
            }
            match (method, rest) {
                (&Method::GET, []) => json_resp(StatusCode::OK, &w.cluster),
                (&Method::PUT, []) => put_cluster(shared, &mut w, req, fail_operation),
                (&Method::POST, [a]) if eq(a, "listClusterUserCredential") => {
                    super::credentials::user(&w)
                }
                (&Method::POST, [a]) if eq(a, "listClusterAdminCredential") => {
                    super::credentials::admin(&w)
                }
                (&Method::GET, [u, d]) if eq(u, "upgradeProfiles") && eq(d, "default") => {
                    upgrade_profile(&w)
                }
                _ => arm_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "The requested method is not supported by the twin for this resource.",
                ),
            }
        }
        [rg_, rg, "providers", p, "vaults", name, rest @ ..]
            if eq(rg_, "resourceGroups")
                && eq(p, "Microsoft.KeyVault")
                && (rest.is_empty() || eq(rest[0], "keys")) =>
        {
            if !eq(rg, &w.ids.resource_group) || !eq(name, &w.ids.vault) {
                return super::missing::resource_missing(
                    &w,
                    s[1],
                    rg,
                    "Microsoft.KeyVault/vaults",
                    name,
                );
            }
            if let [_keys, rest @ ..] = rest {
                return super::arm_keys::handle(&w, req, rest);
            }
            match *method {
                Method::GET => json_resp(StatusCode::OK, &w.vault),
                Method::PATCH => patch_vault(&mut w, req),
                _ => arm_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "Use GET or PATCH on vaults in the twin.",
                ),
            }
        }
        _ => arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            "The resource type could not be found in the twin.",
        ),
    }
}

fn list(w: &World) -> Resp {
    json_resp(
        StatusCode::OK,
        &json!({ "value": super::fleet::clusters_in(w, &w.ids.subscription) }),
    )
}

fn upgrade_profile(w: &World) -> Resp {
    let current = w.kubernetes_version();
    let upgrades: Vec<Value> = available_upgrades(&current)
        .into_iter()
        .map(|v| json!({ "kubernetesVersion": v }))
        .collect();
    json_resp(
        StatusCode::OK,
        &json!({
            "id": format!("{}/upgradeprofiles/default", w.ids.cluster_id()),
            "name": "default",
            "type": "Microsoft.ContainerService/managedClusters/upgradeprofiles",
            "properties": {
                "controlPlaneProfile": { "name": "master", "kubernetesVersion": current, "osType": "Linux", "upgrades": upgrades },
                "agentPoolProfiles": [{ "name": "nodepool1", "kubernetesVersion": current, "osType": "Linux", "upgrades": upgrades }]
            }
        }),
    )
}

fn operation_url(w: &World, kind: &str, id: &str) -> String {
    format!(
        "https://management.azure.com/subscriptions/{}/providers/Microsoft.ContainerService/locations/{}/{kind}/{id}?api-version={OPERATION_API}",
        w.ids.subscription, w.ids.location
    )
}

fn operation_doc(w: &World, op: &Operation) -> Value {
    let mut doc = json!({
        "id": format!("/subscriptions/{}/providers/Microsoft.ContainerService/locations/{}/operations/{}", w.ids.subscription, w.ids.location, op.id),
        "name": op.id, "status": op.status, "startTime": rfc3339(op.start)
    });
    if let Some(end) = op.end {
        doc["endTime"] = json!(rfc3339(end));
    }
    if let Some(e) = &op.error {
        doc["error"] = e.clone();
    }
    doc
}

fn operation_status(w: &World, id: &str) -> Resp {
    match w.operations.get(id) {
        None => arm_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Operation {id} was not found."),
        ),
        Some(op) => {
            let r = json_resp(StatusCode::OK, &operation_doc(w, op));
            if op.status == "InProgress" {
                with_header(r, "retry-after", &retry_after(w))
            } else {
                r
            }
        }
    }
}

fn operation_result(w: &World, id: &str) -> Resp {
    match w.operations.get(id) {
        None => arm_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Operation {id} was not found."),
        ),
        Some(op) if op.status == "InProgress" => {
            let r = with_header(
                empty(StatusCode::ACCEPTED),
                "location",
                &operation_url(w, "operationresults", id),
            );
            with_header(r, "retry-after", &retry_after(w))
        }
        Some(op) if op.status == "Succeeded" => empty(StatusCode::NO_CONTENT),
        Some(op) => json_resp(StatusCode::BAD_REQUEST, &json!({ "error": op.error })),
    }
}

fn retry_after(w: &World) -> String {
    // The real service says 30 s or so; the twin scales it to the configured operation length.
    (w.opts.lro_seconds / 4).clamp(0, 30).to_string()
}

fn put_cluster(shared: &Shared, w: &mut World, req: &Req, fail: bool) -> Resp {
    let Ok(mut desired) = req.json() else {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized.",
        );
    };
    if let Some(m) = req.header("if-match").filter(|m| *m != "*")
        && m != w.cluster["eTag"].as_str().unwrap_or_default()
    {
        return arm_error(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "Operation failed due to a mismatched eTag: the resource was changed since it was read. Get the resource again and retry. See https://aka.ms/aks/etag",
        );
    }
    if let Some(op) = w.running_op.clone() {
        let started = w
            .operations
            .get(&op)
            .map(|o| rfc3339(o.start))
            .unwrap_or_default();
        return arm_error(
            StatusCode::CONFLICT,
            "OperationNotAllowed",
            &format!(
                "Operation is not allowed because there's an in progress update managed cluster operation (operation ID: {op}) on the managed cluster started on UTC {started}. Please wait for it to finish before starting a new operation. You can also use 'az aks operation-abort ...' to abort the ongoing operation."
            ),
        );
    }
    let key_exists = |name: &str, version: &str| w.key_version(name, version).is_some();
    let access = |principal: &str| identity_has_crypto_access(w, principal);
    let vault_host = w.ids.vault_host();
    let vault_id = w.ids.vault_id();
    let facts = Facts {
        vault_host: &vault_host,
        vault_id: &vault_id,
        key_exists: &key_exists,
        identity_has_crypto_access: &access,
    };
    if let Err(r) = aks_rules::validate(&w.cluster, &desired, &facts) {
        return arm_error(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            r.code,
            &r.message,
        );
    }
    let upgrading =
        desired["properties"]["kubernetesVersion"] != w.cluster["properties"]["kubernetesVersion"];
    for ptr in READ_ONLY {
        if let Some(v) = w.cluster.pointer(ptr).cloned() {
            set_pointer(&mut desired, ptr, v);
        }
    }
    for f in ["id", "name", "type", "location"] {
        desired[f] = w.cluster[f].clone();
    }
    keep_identity_ids(&w.cluster, &mut desired);
    desired["properties"]["provisioningState"] =
        json!(if upgrading { "Upgrading" } else { "Updating" });
    desired["eTag"] = json!(new_etag());
    desired["systemData"] = w.cluster["systemData"].clone();
    desired["systemData"]["lastModifiedAt"] = json!(rfc3339(SystemTime::now()));
    let previous = std::mem::replace(&mut w.cluster, desired);
    let id = uuid::Uuid::new_v4().to_string();
    w.operations.insert(
        id.clone(),
        Operation {
            id: id.clone(),
            status: "InProgress",
            start: SystemTime::now(),
            end: None,
            error: None,
        },
    );
    w.running_op = Some(id.clone());
    let fail = fail || w.fail_next_operations > 0;
    w.fail_next_operations = w.fail_next_operations.saturating_sub(1);
    let shared = shared.clone();
    let delay = Duration::from_secs(w.opts.lro_seconds);
    let op_id = id.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        finish_operation(&shared, &op_id, previous, fail);
    });
    let resp = json_resp(StatusCode::OK, &w.cluster);
    let resp = with_header(
        resp,
        "azure-asyncoperation",
        &operation_url(w, "operations", &id),
    );
    let resp = with_header(resp, "location", &operation_url(w, "operationresults", &id));
    with_header(resp, "retry-after", &retry_after(w))
}

/// The identity's principal and client ids are the service's, whatever the PUT says.
fn keep_identity_ids(current: &Value, desired: &mut Value) {
    let Some(have) = current["identity"]["userAssignedIdentities"].as_object() else {
        return;
    };
    let Some(want) = desired["identity"]["userAssignedIdentities"].as_object_mut() else {
        return;
    };
    for (id, v) in want.iter_mut() {
        if let Some((_, cur)) = have.iter().find(|(k, _)| k.eq_ignore_ascii_case(id)) {
            *v = cur.clone();
        }
    }
}

fn set_pointer(doc: &mut Value, ptr: &str, v: Value) {
    let mut cur = doc;
    let parts: Vec<&str> = ptr.split('/').skip(1).collect();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            cur[*p] = v;
            return;
        }
        if !cur[*p].is_object() {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
}

fn finish_operation(shared: &Shared, id: &str, previous: Value, fail: bool) {
    let mut w = shared.world();
    let old_label = storage_label(&previous);
    // AKS creates (or removes) its private endpoint as part of the operation; when the
    // identity may not create it, the operation fails and KMS stays as it was.
    let link_error = if fail {
        None
    } else {
        super::private_link::reconcile(&mut w).err()
    };
    let fail = fail || link_error.is_some();
    let status = if fail { "Failed" } else { "Succeeded" };
    if fail {
        for ptr in [
            "/properties/securityProfile",
            "/properties/kubernetesVersion",
        ] {
            match previous.pointer(ptr) {
                Some(v) => set_pointer(&mut w.cluster, ptr, v.clone()),
                None => set_pointer(&mut w.cluster, ptr, Value::Null),
            }
        }
    } else {
        let requested = w.cluster["properties"]["kubernetesVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(full) = resolve_version(&requested) {
            w.cluster["properties"]["currentKubernetesVersion"] = json!(full);
            if let Some(pools) = w.cluster["properties"]["agentPoolProfiles"].as_array_mut() {
                for p in pools {
                    p["orchestratorVersion"] = json!(requested);
                    p["currentOrchestratorVersion"] = json!(full);
                }
            }
        }
    }
    if fail {
        let _ = super::private_link::reconcile(&mut w);
    }
    w.cluster["properties"]["provisioningState"] = json!(status);
    w.cluster["eTag"] = json!(new_etag());
    let error = match link_error {
        Some(message) => Some(json!({ "code": "AzureKeyVaultKmsPrivateEndpointCreationFailed", "message": message })),
        None => fail.then(|| json!({ "code": "KMSPluginUnhealthy", "message": "Injected fault: the operation failed while reconciling the control plane. Retry the operation." })),
    };
    if let Some(op) = w.operations.get_mut(id) {
        op.status = status;
        op.end = Some(SystemTime::now());
        op.error = error;
    }
    w.running_op = None;
    let new_label = w.label_for_cluster();
    if new_label != old_label {
        w.plugin_changed(new_label);
    }
}

pub fn identity_has_crypto_access(w: &World, principal: &str) -> bool {
    let rbac = w.vault["properties"]["enableRbacAuthorization"].as_bool() == Some(true);
    if rbac {
        let vault_id = w.ids.vault_id().to_ascii_lowercase();
        w.role_assignments.iter().any(|r| {
            let p = &r["properties"];
            p["principalId"].as_str() == Some(principal)
                && p["roleDefinitionId"]
                    .as_str()
                    .is_some_and(|d| d.ends_with(ROLE_CRYPTO_USER))
                && p["scope"]
                    .as_str()
                    .is_some_and(|s| vault_id.starts_with(&s.to_ascii_lowercase()))
        })
    } else {
        w.vault["properties"]["accessPolicies"]
            .as_array()
            .is_some_and(|ps| {
                ps.iter().any(|p| {
                    p["objectId"].as_str() == Some(principal) && {
                        let keys: Vec<&str> = p["permissions"]["keys"]
                            .as_array()
                            .map(|a| a.iter().filter_map(Value::as_str).collect())
                            .unwrap_or_default();
                        ["encrypt", "decrypt"].iter().all(|need| {
                            keys.iter().any(|k| {
                                k.eq_ignore_ascii_case(need) || k.eq_ignore_ascii_case("all")
                            })
                        })
                    }
                })
            })
    }
}

fn patch_vault(w: &mut World, req: &Req) -> Resp {
    let Ok(patch) = req.json() else {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized.",
        );
    };
    let props = &patch["properties"];
    let cur = &w.vault["properties"];
    if props["enableSoftDelete"].as_bool() == Some(false)
        && cur["enableSoftDelete"].as_bool() != Some(false)
    {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The property \"enableSoftDelete\" has been set to true. It cannot be set to false.",
        );
    }
    if props["enablePurgeProtection"].as_bool() == Some(false)
        && cur["enablePurgeProtection"].as_bool() == Some(true)
    {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The property \"enablePurgeProtection\" cannot be set to false. Enabling the purge protection for a vault is an irreversible action.",
        );
    }
    if let Some(p) = props.as_object() {
        for (k, v) in p {
            if k == "networkAcls"
                && v.is_object()
                && w.vault["properties"]["networkAcls"].is_object()
            {
                for (nk, nv) in v.as_object().into_iter().flatten() {
                    w.vault["properties"]["networkAcls"][nk] = nv.clone();
                }
            } else {
                w.vault["properties"][k] = v.clone();
            }
        }
    }
    if patch["tags"].is_object() {
        w.vault["tags"] = patch["tags"].clone();
    }
    json_resp(StatusCode::OK, &w.vault)
}

fn role_assignments(w: &mut World, req: &Req, s: &[&str], pos: usize) -> Resp {
    let scope = format!("/{}", s[..pos.saturating_sub(1)].join("/"));
    match (&req.method, &s[pos + 1..]) {
        (&Method::GET, [ra]) if eq(ra, "roleAssignments") => {
            let scope_l = scope.to_ascii_lowercase();
            let principal = req
                .query
                .get("$filter")
                .and_then(|f| f.split('\'').nth(1))
                .map(str::to_string);
            let at_scope = req
                .query
                .get("$filter")
                .is_some_and(|f| f.contains("atScope()"));
            let value: Vec<&Value> = w
                .role_assignments
                .iter()
                .filter(|r| {
                    let rs = r["properties"]["scope"]
                        .as_str()
                        .unwrap_or_default()
                        .to_ascii_lowercase();
                    scope_l.starts_with(&rs) || (!at_scope && rs.starts_with(&scope_l))
                })
                .filter(|r| {
                    principal
                        .as_deref()
                        .is_none_or(|p| r["properties"]["principalId"].as_str() == Some(p))
                })
                .collect();
            json_resp(StatusCode::OK, &json!({ "value": value }))
        }
        (&Method::PUT, [ra, _name]) if eq(ra, "roleAssignments") => {
            let Ok(body) = req.json() else {
                return arm_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContent",
                    "The request content was invalid.",
                );
            };
            let role = body["properties"]["roleDefinitionId"]
                .as_str()
                .unwrap_or_default()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let principal = body["properties"]["principalId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let ra = role_assignment(&w.ids, &role, &principal, &scope);
            w.role_assignments.push(ra.clone());
            json_resp(StatusCode::CREATED, &ra)
        }
        (&Method::DELETE, [ra, name]) if eq(ra, "roleAssignments") => {
            let before = w.role_assignments.len();
            w.role_assignments
                .retain(|r| r["name"].as_str() != Some(*name));
            if w.role_assignments.len() == before {
                empty(StatusCode::NO_CONTENT)
            } else {
                json_resp(StatusCode::OK, &json!({ "name": name }))
            }
        }
        _ => arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            "The resource type could not be found in the twin.",
        ),
    }
}
