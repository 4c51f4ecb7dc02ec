//! What to say when the vault's data plane cannot be reached from where kmsctl runs: the
//! vault's network settings and the ways forward. Never "open the vault": a private vault is
//! a choice, and kmsctl goes to it rather than the other way round.

use serde_json::Value;

/// The vault's network settings as one phrase, from its Resource Manager resource.
pub fn network_settings(vault: Option<&Value>) -> String {
    let Some(v) = vault else {
        return "its network settings could not be read".into();
    };
    let p = &v["properties"];
    let s = |x: &Value| x.as_str().unwrap_or("-").to_string();
    let ips = p["networkAcls"]["ipRules"]
        .as_array()
        .map_or(0, |a| a.len());
    format!(
        "public network access {}, firewall default action {} ({ips} address rule(s)), {} private endpoint connection(s)",
        s(&p["publicNetworkAccess"]),
        s(&p["networkAcls"]["defaultAction"]),
        p["privateEndpointConnections"]
            .as_array()
            .map_or(0, |a| a.len())
    )
}

/// A vault whose network lets anyone in (public access enabled, firewall default Allow): a
/// connection that fails there is this machine's network or the service, not the vault's
/// settings.
fn open(vault: Option<&Value>) -> bool {
    vault.is_some_and(|v| {
        let p = &v["properties"];
        p["publicNetworkAccess"]
            .as_str()
            .is_none_or(|a| a.eq_ignore_ascii_case("Enabled"))
            && p["networkAcls"]["defaultAction"]
                .as_str()
                .is_none_or(|a| a.eq_ignore_ascii_case("Allow"))
    })
}

/// Why the data plane is out of reach, and what to do, for `vault_name` (`block`: what
/// `RemoteError::network_block` said; `detail`: the service's answer).
pub fn message(vault_name: &str, vault: Option<&Value>, block: &str, detail: &str) -> String {
    if block == "unreachable" && open(vault) {
        return format!(
            "vault {vault_name} did not answer on its data plane (the connection failed or was dropped), although its network lets this machine in ({}): retry, or check this machine's network (DNS, proxy, outbound HTTPS to {vault_name}.vault.azure.net). Error: {detail}",
            network_settings(vault)
        );
    }
    let why = match block {
        "ForbiddenByConnection" => {
            "Key Vault refused this machine's connection (403 ForbiddenByConnection: public network access is disabled and the request did not come through an approved private endpoint)"
        }
        "ForbiddenByFirewall" => {
            "Key Vault's firewall refused this machine's address (403 ForbiddenByFirewall: the default action is Deny and no rule allows this address)"
        }
        _ => "this machine could not connect to the vault's data plane",
    };
    // Key Vault's message spans lines (Caller, Vault): one line reads better in a finding.
    let detail = detail
        .split(['\r', '\n'])
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "the data plane of vault {vault_name} cannot be reached from this network: {why}. The vault: {}. Key state is read through Azure Resource Manager, so status and check-expiry work from here, but rotating a key, changing an expiry and disabling a version go through the vault's own endpoint. Service answer: {detail}",
        network_settings(vault)
    )
}

/// The ways forward for what `message` said about `block`.
pub fn ways_forward_for(vault: Option<&Value>, block: &str) -> String {
    if block == "unreachable" && open(vault) {
        return "retry once this machine's network reaches the vault (DNS, proxy, outbound HTTPS); nothing needs to change on the vault".into();
    }
    ways_forward(vault)
}

/// The ways forward, for a refusal's fix.
pub fn ways_forward(vault: Option<&Value>) -> String {
    let public = vault
        .and_then(|v| v["properties"]["publicNetworkAccess"].as_str())
        .is_none_or(|p| p.eq_ignore_ascii_case("Enabled"));
    let mut s = String::from(
        "run kmsctl from a network with a private endpoint to the vault (a VM or CI runner in the cluster's VNet, or a peered network that resolves privatelink.vaultcore.azure.net)",
    );
    if public {
        s.push_str(
            ", or from an address the vault's firewall allows (ask the vault's owner which ones do)",
        );
    }
    s.push_str("; nothing needs to change on the vault");
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn names_the_settings_and_never_suggests_opening_the_vault() {
        let v = json!({ "properties": { "publicNetworkAccess": "Disabled", "networkAcls": { "defaultAction": "Deny", "ipRules": [] }, "privateEndpointConnections": [{}] } });
        let m = super::message("kv1", Some(&v), "ForbiddenByConnection", "403");
        assert!(m.contains("public network access Disabled"), "{m}");
        assert!(m.contains("firewall default action Deny"), "{m}");
        let f = super::ways_forward(Some(&v));
        assert!(f.contains("private endpoint"), "{f}");
        assert!(
            !f.contains("firewall allows"),
            "a private vault has no address to allow: {f}"
        );
        let public = json!({ "properties": { "publicNetworkAccess": "Enabled", "networkAcls": { "defaultAction": "Deny" } } });
        assert!(super::ways_forward(Some(&public)).contains("firewall allows"));
        // A dropped connection to a vault that lets everyone in is no network setting.
        let open = json!({ "properties": { "publicNetworkAccess": "Enabled", "networkAcls": { "defaultAction": "Allow" } } });
        let d = super::message("kv1", Some(&open), "unreachable", "connection reset");
        assert!(
            d.contains("did not answer") && !d.contains("cannot be reached from this network"),
            "{d}"
        );
        let w = super::ways_forward_for(Some(&open), "unreachable");
        assert!(
            w.contains("retry") && !w.contains("private endpoint"),
            "{w}"
        );
        assert!(super::ways_forward_for(Some(&v), "unreachable").contains("private endpoint"));
        for t in [m, f] {
            assert!(!t.to_ascii_lowercase().contains("enable public"), "{t}");
        }
    }
}
