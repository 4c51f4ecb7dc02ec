//! The twin's request and response types and the error bodies of each service, quoted from
//! the real services (ARM envelope, Kubernetes Status).

use bytes::Bytes;
use http_body_util::Full;
use hyper::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;

pub type Resp = hyper::Response<Full<Bytes>>;

pub struct Req {
    pub method: Method,
    pub host: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The kube-apiserver replica serving this request's connection.
    pub replica: usize,
    pub version: hyper::Version,
    /// The caller's address (what a vault firewall's IP rules are matched against).
    pub peer: std::net::IpAddr,
}

impl Req {
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn bearer(&self) -> Option<&str> {
        let h = self.header("authorization")?;
        h.strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
    }
    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| e.to_string())
    }
}

pub fn bytes(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = hyper::Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        content_type.parse().expect("valid content type"),
    );
    r
}

pub fn json_resp(status: StatusCode, v: &Value) -> Resp {
    bytes(
        status,
        "application/json",
        serde_json::to_vec(v).expect("json serializes"),
    )
}

pub fn with_header(mut r: Resp, name: &'static str, value: &str) -> Resp {
    if let Ok(v) = value.parse() {
        r.headers_mut().insert(name, v);
    }
    r
}

pub fn empty(status: StatusCode) -> Resp {
    let mut r = hyper::Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// ARM's error envelope: `{"error":{"code","message"}}`.
pub fn arm_error(status: StatusCode, code: &str, message: &str) -> Resp {
    json_resp(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

/// Key Vault's error shape, with an optional inner error code.
pub fn kv_error(status: StatusCode, code: &str, message: &str, inner: Option<&str>) -> Resp {
    let mut e = json!({ "error": { "code": code, "message": message } });
    if let Some(i) = inner {
        e["error"]["innererror"] = json!({ "code": i });
    }
    json_resp(status, &e)
}

/// A Kubernetes `Status` failure.
pub fn k8s_status(status: StatusCode, reason: &str, message: &str, details: Option<Value>) -> Resp {
    let mut s = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": status.as_u16()
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    json_resp(status, &s)
}

pub fn k8s_not_found(kind: &str, name: &str) -> Resp {
    k8s_status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{kind} \"{name}\" not found"),
        Some(json!({ "name": name, "kind": kind })),
    )
}

pub fn k8s_conflict(kind: &str, name: &str) -> Resp {
    k8s_status(
        StatusCode::CONFLICT,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {kind} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
        Some(json!({ "name": name, "kind": kind })),
    )
}

pub fn k8s_exists(kind: &str, name: &str) -> Resp {
    k8s_status(
        StatusCode::CONFLICT,
        "AlreadyExists",
        &format!("{kind} \"{name}\" already exists"),
        Some(json!({ "name": name, "kind": kind })),
    )
}
