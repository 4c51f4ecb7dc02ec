//! Secret storage that remembers which key encrypted each object, with kube-apiserver's rules:
//! an unchanged update is written (and so re-encrypted) only when the stored copy is stale, a
//! stale `resourceVersion` is a conflict, and list pages continue from a key with a token that
//! expires like one that outlived an etcd compaction.

use base64::Engine;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Stored {
    pub obj: Value,
    pub key: Arc<str>,
}

#[derive(Debug)]
pub enum StoreError {
    NotFound,
    Conflict,
    AlreadyExists,
    Invalid(String),
    /// The continue token is older than the compaction window; carries a fresh token.
    Expired(String),
    /// The KMS plugin cannot encrypt (the message the API server returns).
    Encrypt(String),
}

#[derive(Default)]
pub struct SecretStore {
    /// Keyed `namespace/name`, the order etcd lists them in.
    items: BTreeMap<String, Stored>,
    pub namespaces: BTreeSet<String>,
    pub revision: u64,
}

pub struct Page<'a> {
    pub items: Vec<&'a Stored>,
    pub continue_token: Option<String>,
    pub remaining: usize,
    pub revision: u64,
}

/// Metadata the server owns; a client sending them back unchanged changes nothing.
const SERVER_FIELDS: &[&str] = &[
    "resourceVersion",
    "managedFields",
    "creationTimestamp",
    "uid",
    "generation",
    "selfLink",
];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn encode_continue(revision: u64, start: &str) -> String {
    let doc = json!({ "v": "meta.k8s.io/v1", "rv": revision, "start": format!("{start}\u{0}"), "t": now_ms() });
    base64::engine::general_purpose::URL_SAFE.encode(doc.to_string())
}

/// Returns the key to start after; `Expired` when older than `ttl_ms`.
pub fn decode_continue(token: &str, ttl_ms: u64, revision: u64) -> Result<String, StoreError> {
    let bad = || StoreError::Invalid("continue key is not valid: invalid continue token".into());
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|_| bad())?;
    let doc: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let start = doc["start"]
        .as_str()
        .ok_or_else(bad)?
        .trim_end_matches('\u{0}')
        .to_string();
    let issued = doc["t"].as_u64().ok_or_else(bad)?;
    if now_ms().saturating_sub(issued) > ttl_ms {
        return Err(StoreError::Expired(encode_continue(revision, &start)));
    }
    Ok(start)
}

fn content_equal(stored: &Value, incoming: &Value) -> bool {
    let (Some(s), Some(i)) = (stored.as_object(), incoming.as_object()) else {
        return false;
    };
    let keys: BTreeSet<&String> = s.keys().chain(i.keys()).collect();
    for k in keys {
        match k.as_str() {
            "metadata" | "kind" | "apiVersion" | "status" => {}
            _ => {
                if s.get(k) != i.get(k) {
                    return false;
                }
            }
        }
    }
    let empty = Map::new();
    let sm = s
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let im = i
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mkeys: BTreeSet<&String> = sm.keys().chain(im.keys()).collect();
    mkeys
        .into_iter()
        .filter(|k| !SERVER_FIELDS.contains(&k.as_str()))
        .all(|k| sm.get(k) == im.get(k))
}

/// `stringData` is write-only: the API server merges it into `data`.
fn merge_string_data(obj: &mut Value) {
    let Some(sd) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    let Some(sd) = sd.as_object() else { return };
    if !obj["data"].is_object() {
        obj["data"] = json!({});
    }
    for (k, v) in sd {
        let text = v.as_str().unwrap_or_default();
        obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

impl SecretStore {
    pub fn total(&self) -> usize {
        self.items.len()
    }

    pub fn by_key(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for s in self.items.values() {
            *out.entry(s.key.to_string()).or_insert(0) += 1;
        }
        out
    }

    pub fn keys_in_use(&self) -> BTreeSet<Arc<str>> {
        self.items.values().map(|s| s.key.clone()).collect()
    }

    pub fn get(&self, ns: &str, name: &str) -> Option<&Stored> {
        self.items.get(&format!("{ns}/{name}"))
    }

    pub fn list(&self, ns: Option<&str>, limit: Option<usize>, after: Option<&str>) -> Page<'_> {
        let prefix = ns.map(|n| format!("{n}/")).unwrap_or_default();
        let lower = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_string()),
            None => std::ops::Bound::Included(prefix.clone()),
        };
        let mut iter = self
            .items
            .range((lower, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix));
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last = None;
        for (k, s) in iter.by_ref() {
            items.push(s);
            last = Some(k.clone());
            if items.len() == limit {
                break;
            }
        }
        let remaining = iter.count();
        let continue_token = match (remaining, last) {
            (0, _) | (_, None) => None,
            (_, Some(last)) => Some(encode_continue(self.revision, &last)),
        };
        Page {
            items,
            continue_token,
            remaining,
            revision: self.revision,
        }
    }

    fn stamp(&mut self, obj: &mut Value) -> u64 {
        self.revision += 1;
        obj["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        self.revision
    }

    pub fn create(
        &mut self,
        ns: &str,
        mut obj: Value,
        key: Arc<str>,
        encrypt_error: Option<&str>,
    ) -> Result<Value, StoreError> {
        if let Some(e) = encrypt_error {
            return Err(StoreError::Encrypt(e.to_string()));
        }
        merge_string_data(&mut obj);
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(StoreError::Invalid(
                "metadata.name: Required value: name or generateName is required".into(),
            ));
        }
        let id = format!("{ns}/{name}");
        if self.items.contains_key(&id) {
            return Err(StoreError::AlreadyExists);
        }
        let meta = obj["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        meta.insert("namespace".into(), json!(ns));
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert(
            "creationTimestamp".into(),
            json!(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        );
        meta.remove("managedFields");
        obj["kind"] = json!("Secret");
        obj["apiVersion"] = json!("v1");
        if obj.get("type").is_none() {
            obj["type"] = json!("Opaque");
        }
        self.stamp(&mut obj);
        self.namespaces.insert(ns.to_string());
        self.items.insert(
            id,
            Stored {
                obj: obj.clone(),
                key,
            },
        );
        Ok(obj)
    }

    /// An update; answers the stored object, serialized, and whether it was written to storage
    /// (an unchanged update of a current object is not). `encrypt_error` is returned only when
    /// the update would be written.
    pub fn replace(
        &mut self,
        ns: &str,
        name: &str,
        mut obj: Value,
        key: Arc<str>,
        encrypt_error: Option<&str>,
    ) -> Result<(Vec<u8>, bool), StoreError> {
        merge_string_data(&mut obj);
        let id = format!("{ns}/{name}");
        let Some(current) = self.items.get(&id) else {
            return Err(StoreError::NotFound);
        };
        let sent_rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        let stored_rv = current.obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !sent_rv.is_empty() && sent_rv != stored_rv {
            return Err(StoreError::Conflict);
        }
        if content_equal(&current.obj, &obj) && current.key == key {
            return Ok((serde_json::to_vec(&current.obj).unwrap_or_default(), false));
        }
        if let Some(e) = encrypt_error {
            return Err(StoreError::Encrypt(e.to_string()));
        }
        for f in ["uid", "creationTimestamp"] {
            obj["metadata"][f] = current.obj["metadata"][f].clone();
        }
        obj["metadata"]["namespace"] = json!(ns);
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        obj["kind"] = json!("Secret");
        obj["apiVersion"] = json!("v1");
        self.stamp(&mut obj);
        let answer = serde_json::to_vec(&obj).unwrap_or_default();
        self.items.insert(id, Stored { obj, key });
        Ok((answer, true))
    }

    pub fn delete(&mut self, ns: &str, name: &str) -> Result<Value, StoreError> {
        let stored = self
            .items
            .remove(&format!("{ns}/{name}"))
            .ok_or(StoreError::NotFound)?;
        self.revision += 1;
        Ok(stored.obj)
    }

    /// Seeding bypasses the API (and the write limiter) as a restored etcd would.
    pub fn insert_seeded(&mut self, ns: &str, mut obj: Value, key: Arc<str>) {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.stamp(&mut obj);
        self.namespaces.insert(ns.to_string());
        self.items
            .insert(format!("{ns}/{name}"), Stored { obj, key });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, v: &str) -> Value {
        json!({ "metadata": { "name": name }, "data": { "k": v } })
    }

    #[test]
    fn unchanged_update_is_written_only_when_stale() {
        let mut s = SecretStore::default();
        let old: Arc<str> = Arc::from("kms:v2:old");
        let new: Arc<str> = Arc::from("kms:v2:new");
        let created = s
            .create("ns", secret("a", "eA=="), old.clone(), None)
            .unwrap();
        let same: Value = serde_json::from_slice(
            &s.replace("ns", "a", created.clone(), old.clone(), Some("expired"))
                .unwrap()
                .0,
        )
        .unwrap();
        assert_eq!(
            same["metadata"]["resourceVersion"],
            created["metadata"]["resourceVersion"]
        );
        let moved: Value = serde_json::from_slice(
            &s.replace("ns", "a", created.clone(), new.clone(), None)
                .unwrap()
                .0,
        )
        .unwrap();
        assert_ne!(
            moved["metadata"]["resourceVersion"],
            created["metadata"]["resourceVersion"]
        );
        assert_eq!(s.by_key().get("kms:v2:new"), Some(&1));
        assert!(matches!(
            s.replace("ns", "a", created, new, None),
            Err(StoreError::Conflict)
        ));
    }

    #[test]
    fn pages_continue_in_key_order_and_tokens_expire() {
        let mut s = SecretStore::default();
        for i in 0..5 {
            s.create(
                "b",
                secret(&format!("s{i}"), "eA=="),
                Arc::from("identity"),
                None,
            )
            .unwrap();
        }
        s.create("a", secret("x", "eA=="), Arc::from("identity"), None)
            .unwrap();
        let p1 = s.list(Some("b"), Some(2), None);
        assert_eq!(p1.items.len(), 2);
        assert_eq!(p1.remaining, 3);
        let token = p1.continue_token.unwrap();
        let after = decode_continue(&token, 60_000, s.revision).unwrap();
        let p2 = s.list(Some("b"), Some(10), Some(&after));
        assert_eq!(p2.items.len(), 3);
        assert!(p2.continue_token.is_none());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(matches!(
            decode_continue(&token, 1, s.revision),
            Err(StoreError::Expired(_))
        ));
        assert_eq!(s.list(None, None, None).items.len(), 6);
    }
}
