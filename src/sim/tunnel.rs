//! The twin's port is also the HTTP proxy its kubeconfig names (`proxy-url`): a client asks
//! `CONNECT <api server host>:443` in plain HTTP, then speaks TLS to the API server through the
//! tunnel, as through a corporate proxy or a bastion's. The API server thus has its own host
//! name (the cluster's fqdn) like an AKS one, with no DNS entry and no privileged port.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a connection starts with: a TLS handshake (None: served as it is) or a CONNECT request,
/// whose target (`host:port`, lower case) is returned; the caller answers it with `answer`,
/// then the TLS handshake follows on the same connection.
pub async fn read_connect(tcp: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 || first[0] != b'C' {
        return Ok(None);
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
    Ok(Some(
        line.lines()
            .next()
            .and_then(|l| l.strip_prefix("CONNECT "))
            .and_then(|l| l.split(' ').next())
            .unwrap_or_default()
            .to_ascii_lowercase(),
    ))
}

/// How the proxy answers a CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Established,
    /// Not an API server this twin serves.
    Forbidden,
    /// A private cluster's name, which does not resolve outside its network (as a proxy
    /// answers a name it cannot resolve).
    Unresolvable,
}

/// Answers the CONNECT; Err for anything but an established tunnel (close the connection).
pub async fn answer(tcp: &mut TcpStream, target: &str, verdict: Verdict) -> std::io::Result<()> {
    let (head, why): (&[u8], &str) = match verdict {
        Verdict::Established => {
            return tcp
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await;
        }
        Verdict::Forbidden => (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
            "not this twin's API server",
        ),
        Verdict::Unresolvable => (
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
            "a private cluster's name does not resolve from this network",
        ),
    };
    tcp.write_all(head).await?;
    Err(std::io::Error::other(format!("CONNECT to {target}: {why}")))
}

/// The host a CONNECT target names, on the port kubeconfigs name (443, the default).
pub fn api_host(target: &str) -> Option<&str> {
    let (host, port) = target.rsplit_once(':').unwrap_or((target, "443"));
    (port == "443").then_some(host)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_port_443_names_an_api_server() {
        let me = "aks-twin-dns-1a2b3c4d.hcp.westeurope.azmk8s.io";
        assert_eq!(super::api_host(&format!("{me}:443")), Some(me));
        assert_eq!(super::api_host(me), Some(me));
        assert_eq!(super::api_host(&format!("{me}:6443")), None);
    }
}
