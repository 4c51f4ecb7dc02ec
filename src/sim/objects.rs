//! Plain Kubernetes objects the twin keeps besides Secrets (ConfigMaps, Leases, FlowSchemas,
//! Pods): create, get, replace with optimistic concurrency, delete, and list by label.

use super::SimOptions;
use super::secrets::StoreError;
use serde_json::{Value, json};
use std::collections::BTreeMap;

#[derive(Default)]
pub struct ObjectStore {
    /// (resource, namespace or "", name) -> object.
    items: BTreeMap<(String, String, String), Value>,
    revision: u64,
}

fn key(resource: &str, ns: &str, name: &str) -> (String, String, String) {
    (resource.to_string(), ns.to_string(), name.to_string())
}

/// Splits a selector at the commas that are not inside `in (...)` sets.
fn terms(sel: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in sel.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&sel[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&sel[start..]);
    out
}

/// A label selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a, b)`, `k notin (a, b)`.
pub fn matches_labels(obj: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let label = |k: &str| obj["metadata"]["labels"][k.trim()].as_str();
    terms(sel).into_iter().all(|term| {
        let term = term.trim();
        let set = |rest: &str| -> Vec<String> {
            rest.trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .split(',')
                .map(|v| v.trim().to_string())
                .collect()
        };
        if let Some((k, rest)) = term.split_once(" notin ") {
            return label(k).is_none_or(|v| !set(rest).iter().any(|s| s == v));
        }
        if let Some((k, rest)) = term.split_once(" in ") {
            return label(k).is_some_and(|v| set(rest).iter().any(|s| s == v));
        }
        if let Some((k, v)) = term.split_once("!=") {
            return label(k) != Some(v.trim());
        }
        if let Some((k, v)) = term.split_once('=') {
            return label(k) == Some(v.trim_start_matches('=').trim());
        }
        match term.strip_prefix('!') {
            Some(k) => label(k).is_none(),
            None => obj["metadata"]["labels"].get(term).is_some(),
        }
    })
}

/// A field selector of `path=value` terms (`involvedObject.name=app,spec.nodeName=n1`).
pub fn matches_fields(obj: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| {
        let (path, want, equal) = match term.split_once("!=") {
            Some((p, v)) => (p, v, false),
            None => match term.split_once('=') {
                Some((p, v)) => (p, v.trim_start_matches('='), true),
                None => return true,
            },
        };
        let have = path
            .trim()
            .split('.')
            .fold(obj, |v, k| &v[k])
            .as_str()
            .unwrap_or_default();
        (have == want.trim()) == equal
    })
}

impl ObjectStore {
    pub fn seed_system(&mut self, opts: &SimOptions) {
        if opts.konnectivity {
            for i in 0..2 {
                let pod = json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": { "name": format!("konnectivity-agent-7d9c5b{i}"), "namespace": "kube-system",
                                  "labels": { "app": "konnectivity-agent" } },
                    "spec": { "containers": [{ "name": "konnectivity-agent", "image": "mcr.microsoft.com/oss/kubernetes/apiserver-network-proxy/agent:v0.30.3" }] },
                    "status": { "phase": "Running" }
                });
                let _ = self.create("pods", "kube-system", pod);
            }
        }
        if opts.apiserver_guard {
            let fs = json!({
                "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
                "metadata": { "name": "aks-managed-apiserver-guard" },
                "spec": { "matchingPrecedence": 900, "priorityLevelConfiguration": { "name": "aks-managed-apiserver-guard" } }
            });
            let _ = self.create("flowschemas", "", fs);
        }
    }

    /// Each kube-apiserver replica announces itself with an identity Lease in kube-system, as
    /// real ones do (named after its ID, label `apiserver.kubernetes.io/identity=kube-apiserver`).
    pub fn seed_apiserver_identities(&mut self, replicas: &[super::world::Replica]) {
        for r in replicas {
            let _ = self.create("leases", "kube-system", super::replicas::identity_lease(r));
        }
    }

    /// A live kube-apiserver renews its identity Lease every 10 s; the twin renews those of
    /// live replicas (`live` holders) whenever they are read. Others are left to age.
    pub fn renew_apiserver_identities(&mut self, live: &[String]) {
        let now = chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        for ((r, _, _), v) in self.items.iter_mut() {
            if r == "leases"
                && v["spec"]["holderIdentity"]
                    .as_str()
                    .is_some_and(|h| live.iter().any(|l| l == h))
            {
                v["spec"]["renewTime"] = json!(now);
            }
        }
    }

    fn stamp(&mut self, obj: &mut Value) {
        self.revision += 1;
        obj["metadata"]["resourceVersion"] = json!(format!("9{:09}", self.revision));
    }

    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<&Value> {
        self.items.get(&key(resource, ns, name))
    }

    pub fn list(&self, resource: &str, ns: Option<&str>, selector: Option<&str>) -> Vec<&Value> {
        self.items
            .iter()
            .filter(|((r, n, _), _)| r == resource && ns.is_none_or(|want| want == n))
            .map(|(_, v)| v)
            .filter(|v| matches_labels(v, selector))
            .collect()
    }

    pub fn create(
        &mut self,
        resource: &str,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, StoreError> {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(StoreError::Invalid("metadata.name: Required value".into()));
        }
        let k = key(resource, ns, &name);
        if self.items.contains_key(&k) {
            return Err(StoreError::AlreadyExists);
        }
        if !ns.is_empty() {
            obj["metadata"]["namespace"] = json!(ns);
        }
        obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
        obj["metadata"]["creationTimestamp"] =
            json!(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string());
        self.stamp(&mut obj);
        self.items.insert(k, obj.clone());
        Ok(obj)
    }

    pub fn replace(
        &mut self,
        resource: &str,
        ns: &str,
        name: &str,
        mut obj: Value,
    ) -> Result<Value, StoreError> {
        let k = key(resource, ns, name);
        let Some(current) = self.items.get(&k) else {
            return Err(StoreError::NotFound);
        };
        let sent = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !sent.is_empty()
            && sent
                != current["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
        {
            return Err(StoreError::Conflict);
        }
        for f in ["uid", "creationTimestamp"] {
            obj["metadata"][f] = current["metadata"][f].clone();
        }
        self.stamp(&mut obj);
        self.items.insert(k, obj.clone());
        Ok(obj)
    }

    pub fn delete(&mut self, resource: &str, ns: &str, name: &str) -> Result<Value, StoreError> {
        self.items
            .remove(&key(resource, ns, name))
            .ok_or(StoreError::NotFound)
    }
}
