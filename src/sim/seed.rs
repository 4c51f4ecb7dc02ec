//! Seeded Secrets with the size mix of a real cluster: many small tokens and credentials, TLS
//! pairs, and a share of Helm release records of 50–200 KiB (the ones that make a naive
//! `kubectl get -o json` pipeline balloon).

use serde_json::{Value, json};

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A small deterministic generator: seeded worlds are reproducible across runs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Valid base64 (a multiple of 4 characters) encoding about `bytes` random bytes.
    pub fn base64(&mut self, bytes: usize) -> String {
        let len = bytes.div_ceil(3) * 4;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let mut x = self.next();
            for _ in 0..10 {
                if out.len() == len {
                    break;
                }
                out.push(B64[(x & 63) as usize]);
                x >>= 6;
            }
        }
        String::from_utf8(out).expect("base64 alphabet is ascii")
    }
}

pub fn namespace_name(i: usize) -> String {
    format!("team-{i:03}")
}

/// The i-th seeded Secret of a namespace.
pub fn secret(rng: &mut Rng, ns: &str, i: usize) -> Value {
    let roll = rng.below(100);
    let (name, kind, data, labels) = if roll < 4 {
        let size = 50 * 1024 + rng.below(150 * 1024) as usize;
        let release = format!("release-{i}");
        let data = json!({ "release": rng.base64(size) });
        let labels =
            json!({ "owner": "helm", "name": release, "status": "deployed", "version": "1" });
        (
            format!("sh.helm.release.v1.{release}.v1"),
            "helm.sh/release.v1",
            data,
            labels,
        )
    } else if roll < 24 {
        let crt = 1200 + rng.below(800) as usize;
        let data = json!({ "tls.crt": rng.base64(crt), "tls.key": rng.base64(1190) });
        (
            format!("tls-{i}"),
            "kubernetes.io/tls",
            data,
            json!({ "app": format!("web-{}", i % 7) }),
        )
    } else if roll < 36 {
        let size = 300 + rng.below(500) as usize;
        let data = json!({ ".dockerconfigjson": rng.base64(size) });
        (
            format!("registry-{i}"),
            "kubernetes.io/dockerconfigjson",
            data,
            json!({}),
        )
    } else {
        let mut data = serde_json::Map::new();
        for k in 0..1 + rng.below(4) {
            let size = 16 + rng.below(400) as usize;
            data.insert(format!("key-{k}"), json!(rng.base64(size)));
        }
        (
            format!("app-secret-{i}"),
            "Opaque",
            Value::Object(data),
            json!({ "app": format!("svc-{}", i % 11) }),
        )
    };
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": "2026-01-15T09:30:00Z",
            "labels": labels
        },
        "type": kind,
        "data": data
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn generated_data_is_valid_base64_and_mixed_in_size() {
        let mut rng = Rng::new(7);
        let mut helm = 0;
        for i in 0..500 {
            let s = secret(&mut rng, "ns", i);
            for v in s["data"].as_object().unwrap().values() {
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap();
            }
            helm += usize::from(s["type"] == "helm.sh/release.v1");
        }
        assert!((5..=45).contains(&helm), "helm share {helm}/500");
    }
}
