//! The twin's port is also the HTTP proxy its kubeconfig names (`proxy-url`): a client asks
//! `CONNECT <api server host>:443` in plain HTTP, then speaks TLS to the API server through the
//! tunnel, as through a corporate proxy or a bastion's. The API server thus has its own host
//! name (the cluster's fqdn) like an AKS one, with no DNS entry and no privileged port.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a connection starts with: a TLS handshake (served as it is) or a CONNECT request
/// (answered here, then the TLS handshake follows on the same connection). Err: close it.
pub async fn accept(tcp: &mut TcpStream, api_server_host: &str) -> std::io::Result<()> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 || first[0] != b'C' {
        return Ok(());
    }
    // The request head, byte by byte: nothing after it may be consumed (it is the handshake).
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(std::io::Error::other("CONNECT head too long"));
        }
        let mut b = [0u8; 1];
        if tcp.read(&mut b).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
    }
    let line = String::from_utf8_lossy(&head);
    let target = line
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("CONNECT "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !allowed(&target, api_server_host) {
        tcp.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return Err(std::io::Error::other(format!(
            "CONNECT to {target}: not this twin's API server"
        )));
    }
    tcp.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
}

/// Only the twin's own API server, on the port its kubeconfig names (443, the default).
fn allowed(target: &str, api_server_host: &str) -> bool {
    let (host, port) = target.rsplit_once(':').unwrap_or((target, "443"));
    host.eq_ignore_ascii_case(api_server_host) && port == "443"
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_own_api_server_is_reached() {
        let me = "aks-twin-dns-1a2b3c4d.hcp.westeurope.azmk8s.io";
        assert!(super::allowed(&format!("{me}:443"), me));
        assert!(!super::allowed(&format!("{me}:6443"), me));
        assert!(!super::allowed(
            "aks-twin-dns-ffffffff.hcp.westeurope.azmk8s.io:443",
            me
        ));
        assert!(!super::allowed("management.azure.com:443", me));
    }
}
