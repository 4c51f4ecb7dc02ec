//! Decodes the Kubernetes protobuf encoding of a Secret (`application/vnd.kubernetes.protobuf`:
//! the `k8s\0` envelope around runtime.Unknown, around v1.Secret) into its JSON form. kubectl's
//! typed commands (`kubectl create secret`) send it; answers stay JSON, which kubectl also accepts.

use base64::Engine;
use serde_json::{Map, Value, json};

struct Reader<'a> {
    buf: &'a [u8],
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first()?;
            self.buf = rest;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn next(&mut self) -> Option<Result<(u64, Field<'a>), ()>> {
        if self.buf.is_empty() {
            return None;
        }
        let Some(key) = self.varint() else {
            return Some(Err(()));
        };
        let field = match key & 7 {
            0 => match self.varint() {
                Some(v) => Field::Varint(v),
                None => return Some(Err(())),
            },
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                if self.buf.len() < n {
                    return Some(Err(()));
                }
                self.buf = &self.buf[n..];
                Field::Fixed
            }
            2 => {
                let Some(len) = self.varint().map(|l| l as usize) else {
                    return Some(Err(()));
                };
                if self.buf.len() < len {
                    return Some(Err(()));
                }
                let (b, rest) = self.buf.split_at(len);
                self.buf = rest;
                Field::Bytes(b)
            }
            _ => return Some(Err(())),
        };
        Some(Ok((key >> 3, field)))
    }
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut r = Reader { buf };
    let mut out = Vec::new();
    while let Some(f) = r.next() {
        out.push(f.map_err(|_| "malformed protobuf".to_string())?);
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a string field is not UTF-8".to_string())
}

/// A map entry message: key (1), value (2).
fn entry(b: &[u8]) -> Result<(String, &[u8]), String> {
    let mut key = String::new();
    let mut value: &[u8] = &[];
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(k)) => key = text(k)?,
            (2, Field::Bytes(v)) => value = v,
            _ => {}
        }
    }
    Ok((key, value))
}

fn object_meta(b: &[u8]) -> Result<Value, String> {
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(v)) => _ = m.insert("name".into(), json!(text(v)?)),
            (2, Field::Bytes(v)) => _ = m.insert("generateName".into(), json!(text(v)?)),
            (3, Field::Bytes(v)) => _ = m.insert("namespace".into(), json!(text(v)?)),
            (5, Field::Bytes(v)) => _ = m.insert("uid".into(), json!(text(v)?)),
            (6, Field::Bytes(v)) => _ = m.insert("resourceVersion".into(), json!(text(v)?)),
            (11, Field::Bytes(v)) => {
                let (k, val) = entry(v)?;
                labels.insert(k, json!(text(val)?));
            }
            (12, Field::Bytes(v)) => {
                let (k, val) = entry(v)?;
                annotations.insert(k, json!(text(val)?));
            }
            (14, Field::Bytes(v)) => finalizers.push(json!(text(v)?)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(m))
}

fn secret(b: &[u8]) -> Result<Value, String> {
    let mut s = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": {} });
    let mut data = Map::new();
    let mut string_data = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(v)) => s["metadata"] = object_meta(v)?,
            (2, Field::Bytes(v)) => {
                let (k, val) = entry(v)?;
                data.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(val)),
                );
            }
            (3, Field::Bytes(v)) => s["type"] = json!(text(v)?),
            (4, Field::Bytes(v)) => {
                let (k, val) = entry(v)?;
                string_data.insert(k, json!(text(val)?));
            }
            (5, Field::Varint(v)) => s["immutable"] = json!(v != 0),
            _ => {}
        }
    }
    if !data.is_empty() {
        s["data"] = Value::Object(data);
    }
    if !string_data.is_empty() {
        s["stringData"] = Value::Object(string_data);
    }
    Ok(s)
}

/// The JSON form of a protobuf-encoded Secret (or Namespace).
pub fn decode_secret(body: &[u8]) -> Result<Value, String> {
    let inner = body
        .strip_prefix(b"k8s\x00")
        .ok_or("missing the k8s protobuf envelope")?;
    let mut raw = None;
    let mut kind = String::new();
    for (n, f) in fields(inner)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (k, v) in fields(tm)? {
                    if let (2, Field::Bytes(v)) = (k, v) {
                        kind = text(v)?;
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = Some(r),
            _ => {}
        }
    }
    let raw = raw.ok_or("no object in the envelope")?;
    match kind.as_str() {
        "Secret" => secret(raw),
        // `kubectl create namespace`: only the metadata (field 1) matters to the twin.
        "Namespace" => {
            let mut ns =
                serde_json::json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": {} });
            for (n, f) in fields(raw)? {
                if let (1, Field::Bytes(m)) = (n, f) {
                    ns["metadata"] = object_meta(m)?;
                }
            }
            Ok(ns)
        }
        _ => Err(format!(
            "the twin decodes protobuf only for Secrets and Namespaces, not {kind}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_field(n: u8, b: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3) | 2, b.len() as u8];
        out.extend_from_slice(b);
        out
    }

    #[test]
    fn decodes_a_secret_envelope() {
        let meta = [bytes_field(1, b"s1"), bytes_field(3, b"default")].concat();
        let data_entry = [bytes_field(1, b"v"), bytes_field(2, b"abc")].concat();
        let secret = [
            bytes_field(1, &meta),
            bytes_field(2, &data_entry),
            bytes_field(3, b"Opaque"),
        ]
        .concat();
        let type_meta = [bytes_field(1, b"v1"), bytes_field(2, b"Secret")].concat();
        let envelope = [
            b"k8s\x00".to_vec(),
            bytes_field(1, &type_meta),
            bytes_field(2, &secret),
        ]
        .concat();
        let v = decode_secret(&envelope).unwrap();
        assert_eq!(v["metadata"]["name"], "s1");
        assert_eq!(v["data"]["v"], "YWJj");
        assert_eq!(v["type"], "Opaque");
    }
}
