//! The twin's one TLS port. Every host name (ARM, Entra ID, Key Vault, the Kubernetes API)
//! reaches it; requests are routed by the host they name, after the configured network latency
//! and any fault rule that matches.

use super::fleet_members::{Dest, Members};
use super::http::{Req, Resp};
use super::tunnel::Verdict;
use super::world::Shared;
use super::{admin, arm, entra, faults, keyvault, kubeapi};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by a fault rule")
    }
}
impl std::error::Error for Dropped {}

pub async fn serve(
    listener: TcpListener,
    tls: std::sync::Arc<rustls::ServerConfig>,
    members: Members,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((mut tcp, peer)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let members = members.clone();
        tokio::spawn(async move {
            // The kubeconfig's proxy-url is this port: a CONNECT first, then TLS.
            let tunnel = match super::tunnel::read_connect(&mut tcp).await {
                Ok(t) => t,
                Err(_) => return,
            };
            let mut member = None;
            if let Some(target) = tunnel {
                member = super::tunnel::api_host(&target).and_then(|h| members.by_api_host(h));
                let verdict = match member {
                    None => Verdict::Forbidden,
                    Some(i) if members.api_unreachable(i) => Verdict::Unresolvable,
                    Some(_) => Verdict::Established,
                };
                if super::tunnel::answer(&mut tcp, &target, verdict)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // A TCP balancer in front of the API server replicas: one replica per connection.
            let (replica, generation) = members.list[member.unwrap_or(0)].world().pick_replica();
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let conn = Conn {
                member,
                replica,
                generation,
                peer: peer.ip(),
            };
            let service = hyper::service::service_fn(move |req| handle(members.clone(), req, conn));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What a connection was made to: the member its CONNECT named, the API server replica the
/// balancer gave it, and the caller's address.
#[derive(Clone, Copy)]
struct Conn {
    member: Option<usize>,
    replica: usize,
    generation: u64,
    peer: std::net::IpAddr,
}

fn roll() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0x2545_F491_4F6C_DD1D);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

async fn handle(
    members: Members,
    req: hyper::Request<hyper::body::Incoming>,
    conn: Conn,
) -> Result<Resp, Dropped> {
    let (parts, body) = req.into_parts();
    let host = parts
        .uri
        .host()
        .map(str::to_string)
        .or_else(|| {
            parts
                .headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(|h| h.split(':').next().unwrap_or(h).to_string())
        })
        .unwrap_or_default()
        .to_ascii_lowercase();
    let path = parts.uri.path().to_string();
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let body: Bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // Through a tunnel, the API server is the one the CONNECT reached, whatever Host says.
    let azure = host.ends_with(".azure.com") || host.ends_with(".azure.net");
    let dest = match conn.member {
        Some(m) if !azure && !path.starts_with("/_sim/") => Dest::Member(m),
        _ => members.route(&host, &path),
    };
    let (latency, action) = {
        let rules = members.rules(dest);
        let action = faults::decide(&rules, parts.method.as_str(), &host, &path, roll);
        let base = members.list[match dest {
            Dest::Member(i) => i,
            Dest::Fleet => 0,
        }]
        .world()
        .opts
        .latency_ms;
        (base + action.latency_ms, action)
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if action.drop {
        return Err(Dropped);
    }
    let req = Req {
        method: parts.method,
        host,
        path,
        query,
        headers: parts.headers,
        body,
        replica: conn.replica,
        version: parts.version,
        peer: conn.peer,
    };
    if let Some(code) = action.status {
        return Ok(fault_response(&req, code));
    }
    tracing::debug!(method = %req.method, host = %req.host, path = %req.path, "twin request");
    let shared = match dest {
        Dest::Member(i) => members.list[i].clone(),
        Dest::Fleet => members.first().clone(),
    };
    // The vault's network decides before its authorization does (the caller is authenticated).
    if req.host.ends_with(".vault.azure.net")
        && req.bearer().is_some()
        && let Some(refused) = super::operator_network::refused(&shared.world(), req.peer)
    {
        return Ok(refused);
    }
    if let Some(denied) = authorize(&shared, &req) {
        return Ok(denied);
    }
    let resp = if req.path.starts_with("/_sim/") && !azure {
        admin::handle(&members, &req)
    } else if req.host == "management.azure.com" {
        match dest {
            Dest::Member(_) => arm::handle(&shared, &req, action.fail_operation),
            Dest::Fleet => members.handle_arm(&req),
        }
    } else if req.host == "login.microsoftonline.com" {
        entra::handle(&shared, &req)
    } else if req.host.ends_with(".vault.azure.net") {
        keyvault::handle(&shared, &req)
    } else if !shared.world().serving(req.replica, conn.generation) {
        // The replica this connection reached stopped (or restarted since): its process is gone.
        let r = super::http::k8s_status(
            hyper::StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the API server replica serving this connection is not running",
            None,
        );
        with_close(super::http::with_header(r, "retry-after", "1"), &req)
    } else {
        kubeapi::handle(&shared, &req)
    };
    Ok(resp)
}

/// Asks an HTTP/1 client to close the connection after this answer (HTTP/2 has no such header).
fn with_close(r: Resp, req: &Req) -> Resp {
    if req.version < hyper::Version::HTTP_2 {
        super::http::with_header(r, "connection", "close")
    } else {
        r
    }
}

/// With `--least-privilege`: what kmsctl's roles do not allow answers 403, as the real services do.
fn authorize(shared: &Shared, req: &Req) -> Option<Resp> {
    let (policy, principal) = {
        let w = shared.world();
        (w.policy.clone()?, w.ids.client_id.clone())
    };
    req.bearer()?;
    if req.host == "management.azure.com" {
        super::authz::arm(&policy, req, &principal)
    } else if req.host.ends_with(".vault.azure.net") {
        super::authz::key_vault(&policy, req, &principal)
    } else if req.host == "login.microsoftonline.com" || req.path.starts_with("/_sim/") {
        None
    } else {
        super::authz::kube(&policy, req)
    }
}

/// An injected failure, in the error shape of the service it stands in for.
fn fault_response(req: &Req, code: u16) -> Resp {
    use super::http::{arm_error, k8s_status, with_header};
    let status =
        hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let reason = status.canonical_reason().unwrap_or("Error");
    let resp = if req.host.ends_with("azure.com") || req.host.ends_with("azure.net") {
        arm_error(
            status,
            reason.replace(' ', "").as_str(),
            &format!("Injected fault: {reason}"),
        )
    } else {
        let k8s_reason = match code {
            429 => "TooManyRequests",
            409 => "Conflict",
            404 => "NotFound",
            410 => "Expired",
            503 => "ServiceUnavailable",
            _ => "InternalError",
        };
        k8s_status(
            status,
            k8s_reason,
            &format!("injected fault: {reason}"),
            None,
        )
    };
    if code == 429 || code == 503 {
        with_header(resp, "retry-after", "1")
    } else {
        resp
    }
}
