//! Reads a list answer and decodes it while giving back each received chunk as soon as it is
//! consumed, so a page is held about once (as objects), not twice (as text, then as objects).

use crate::k8s::KubeError;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::io::Read;

struct Chunks(VecDeque<Bytes>);

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(front) = self.0.front_mut() {
            if front.is_empty() {
                self.0.pop_front();
                continue;
            }
            let n = front.len().min(buf.len());
            buf[..n].copy_from_slice(&front[..n]);
            let _ = front.split_to(n);
            return Ok(n);
        }
        Ok(0)
    }
}

/// Sends a GET and decodes the JSON answer; returns it with its size in bytes.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    client: &kube::Client,
    request: http::Request<Vec<u8>>,
) -> Result<(T, u64), KubeError> {
    let response = client
        .send(request.map(kube::client::Body::from))
        .await
        .map_err(KubeError::from)?;
    let status = response.status();
    let mut body = response.into_body();
    let mut chunks = VecDeque::new();
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| KubeError::Transport(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            size += data.len() as u64;
            chunks.push_back(data);
        }
    }
    if !status.is_success() {
        let text: Vec<u8> = chunks.into_iter().flat_map(|c| c.to_vec()).collect();
        let err = match serde_json::from_slice::<kube::core::Status>(&text) {
            Ok(s) => kube::Error::Api(Box::new(s)),
            Err(_) => kube::Error::Api(Box::new(
                kube::core::Status::failure(&String::from_utf8_lossy(&text), "")
                    .with_code(status.as_u16()),
            )),
        };
        return Err(err.into());
    }
    let value =
        serde_json::from_reader(std::io::BufReader::with_capacity(64 << 10, Chunks(chunks)))
            .map_err(|e| KubeError::Other(format!("decoding a list: {e}")))?;
    Ok((value, size))
}
