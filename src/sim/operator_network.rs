//! Where kmsctl's own requests to the vault's data plane come from (`sim serve
//! --operator-network`), and what Key Vault answers there: from `outside` (an operator's
//! machine, the default) a vault with public network access disabled answers 403
//! ForbiddenByConnection, and a firewall that denies by default answers 403 ForbiddenByFirewall
//! unless an IP rule allows the caller's address; from `inside` (a network with a private
//! endpoint to the vault) an approved private endpoint connection carries the request past
//! both, as the service lets private link traffic through whatever the public settings say.
//! The KMS plugin's own reach is modelled apart (`private_link`).

use super::http::{Resp, kv_error};
use super::world::World;
use hyper::StatusCode;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OperatorNetwork {
    /// The public internet, as an operator's laptop or a hosted CI runner.
    #[default]
    Outside,
    /// A network with a private endpoint to the vault (a VM or runner in the cluster's VNet).
    Inside,
}

/// `1.2.3.4` or `1.2.3.0/24` (IPv4, as Key Vault's ipRules take them) holds `ip`.
fn rule_allows(rule: &str, ip: IpAddr) -> bool {
    let IpAddr::V4(ip) = ip else {
        return false;
    };
    let (addr, bits) = match rule.split_once('/') {
        Some((a, b)) => (a, b.parse::<u32>().unwrap_or(33)),
        None => (rule, 32),
    };
    let Ok(net) = addr.trim().parse::<std::net::Ipv4Addr>() else {
        return false;
    };
    if bits > 32 {
        return false;
    }
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

fn caller(w: &World) -> String {
    format!(
        "appid={c};oid={c};iss=https://sts.windows.net/{t}/",
        c = w.ids.client_id,
        t = w.ids.tenant
    )
}

/// Key Vault's answer to a data-plane request from `peer` that the vault's network refuses
/// (None: it gets through).
pub fn refused(w: &World, peer: IpAddr) -> Option<Resp> {
    if w.opts.operator_network == OperatorNetwork::Inside
        && super::private_link::approved_connection(w)
    {
        return None;
    }
    let p = &w.vault["properties"];
    let vault = format!("{};location={}", w.ids.vault, w.ids.location);
    if p["publicNetworkAccess"]
        .as_str()
        .is_some_and(|a| a.eq_ignore_ascii_case("Disabled"))
    {
        return Some(kv_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "Public network access is disabled and request is not from a trusted service nor via an approved private link.\r\nCaller: {}\r\nVault: {vault}",
                caller(w)
            ),
            Some("ForbiddenByConnection"),
        ));
    }
    let acls = &p["networkAcls"];
    let deny = acls["defaultAction"]
        .as_str()
        .is_some_and(|a| a.eq_ignore_ascii_case("Deny"));
    let allowed = acls["ipRules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["value"].as_str())
        .any(|r| rule_allows(r, peer));
    (deny && !allowed).then(|| {
        kv_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "Client address is not authorized and caller is not a trusted service.\r\nClient address: {peer}\r\nCaller: {}\r\nVault: {vault}",
                caller(w)
            ),
            Some("ForbiddenByFirewall"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::rule_allows;

    #[test]
    fn ip_rules_as_addresses_and_ranges() {
        let ip = "127.0.0.1".parse().unwrap();
        assert!(rule_allows("127.0.0.1", ip));
        assert!(rule_allows("127.0.0.0/8", ip));
        assert!(rule_allows("0.0.0.0/0", ip));
        assert!(!rule_allows("127.0.0.2", ip));
        assert!(!rule_allows("10.0.0.0/8", ip));
        assert!(!rule_allows("not an address", ip));
    }
}
