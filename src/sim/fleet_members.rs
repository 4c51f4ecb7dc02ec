//! A fleet of complete cluster twins behind the one port (`sim serve --fleet-clusters N`): each
//! member is a whole world as a single twin is (its managedCluster with long-running
//! operations, resource group, vault and key, Kubernetes API server with its own host name,
//! Secrets, replicas, identity Leases), in two subscriptions of one tenant with one service
//! principal and one token endpoint. Requests go to the member that holds what they name;
//! subscription-wide listings and Resource Graph queries answer over every member.

use super::faults::FaultRule;
use super::http::{Req, Resp, arm_error, json_resp};
use super::world::{Ids, Shared, World};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// How many members, and which are different (`sim serve --fleet-*`). Members 1..=clusters
/// are rotatable from an operator's machine (a customer-managed key, a public API server); the
/// last `private_vaults` of them keep their key in a private vault, the first
/// `no_local_accounts` have local accounts disabled. Then `platform_managed` members on AKS's
/// platform-managed key rotation, then `private_api` private clusters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetSpec {
    pub clusters: usize,
    pub private_vaults: usize,
    pub no_local_accounts: usize,
    pub platform_managed: usize,
    pub private_api: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Role {
    pub private_vault: bool,
    pub local_accounts: bool,
    pub platform_managed: bool,
    pub private_api: bool,
}

impl FleetSpec {
    pub fn total(&self) -> usize {
        self.clusters + self.platform_managed + self.private_api
    }

    /// Member `i` (1-based).
    pub fn role(&self, i: usize) -> Role {
        let n = self.clusters;
        Role {
            private_vault: i <= n && i + self.private_vaults > n,
            local_accounts: !(i <= n && i <= self.no_local_accounts),
            platform_managed: i > n && i <= n + self.platform_managed,
            private_api: i > n + self.platform_managed,
        }
    }

    /// Names zero-padded so that name order is number order.
    pub fn name(&self, i: usize) -> String {
        let width = self.total().to_string().len().max(2);
        format!("aks-fleet-{i:0width$}")
    }
}

/// Member `i`'s names: shared tenant, principal and admin token; its own resource group,
/// cluster, vault, API server host, static kube token and control-plane identity.
pub fn member_ids(base: &Ids, subs: &[String; 2], spec: &FleetSpec, i: usize) -> Ids {
    let u = || uuid::Uuid::new_v4().to_string();
    let hex = || uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let name = spec.name(i);
    let num = name.trim_start_matches("aks-fleet-").to_string();
    let subscription = subs[(i + 1) % 2].clone();
    let resource_group = format!("rg-fleet-{num}");
    let location = base.location.clone();
    let api_server_host = if spec.role(i).private_api {
        format!(
            "{name}-dns-{}.{}.privatelink.{location}.azmk8s.io",
            hex(),
            u()
        )
    } else {
        format!("{name}-dns-{}.hcp.{location}.azmk8s.io", hex())
    };
    Ids {
        identity_id: format!(
            "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}-control-plane"
        ),
        subscription,
        tenant: base.tenant.clone(),
        client_id: base.client_id.clone(),
        client_secret: base.client_secret.clone(),
        resource_group,
        cluster: name,
        location,
        vault: format!("kv-fleet-{num}"),
        api_server_host,
        kube_token: format!("twin-kube-{}", uuid::Uuid::new_v4().simple()),
        admin_token: base.admin_token.clone(),
        identity_principal: u(),
        identity_client: u(),
    }
}

/// Makes a new member's cluster an Entra ID cluster of its role (before its Secrets are
/// seeded: the storage label follows the cluster's configuration).
pub fn dress(w: &mut World, role: Role) {
    let name = w.ids.cluster.clone();
    let tenant = w.ids.tenant.clone();
    let p = &mut w.cluster["properties"];
    p["dnsPrefix"] = json!(format!("{name}-dns"));
    p["aadProfile"] = json!({ "managed": true, "enableAzureRBAC": true, "adminGroupObjectIDs": [], "tenantID": tenant });
    p["disableLocalAccounts"] = json!(!role.local_accounts);
    if role.private_api {
        p["apiServerAccessProfile"]["enablePrivateCluster"] = json!(true);
        p["apiServerAccessProfile"]["privateDNSZone"] = json!("system");
        p["apiServerAccessProfile"]["enablePrivateClusterPublicFQDN"] = json!(false);
        p["privateFQDN"] = p["fqdn"].take();
        if let Some(o) = p.as_object_mut() {
            o.remove("fqdn");
        }
    }
    if role.platform_managed {
        let kms = &mut p["securityProfile"]["azureKeyVaultKms"];
        let kid = kms["keyId"].as_str().unwrap_or_default().to_string();
        kms["keyId"] = json!(kid.rsplit_once('/').map(|(k, _)| k).unwrap_or(&kid));
        p["securityProfile"]["kubernetesResourceObjectEncryptionProfile"] =
            json!({ "infrastructureEncryption": "Enabled" });
    }
    let label = w.label_for_cluster();
    if let Some(first) = w.timeline.changes.first_mut() {
        first.1 = label.clone();
    }
    for r in &mut w.replicas {
        r.dek_cache.clear();
        if label.starts_with("kms:") {
            r.dek_cache.insert(label.clone());
        }
    }
}

/// Every member of a twin (one for a single-cluster twin), and the fault rules that apply to
/// all of them.
#[derive(Clone)]
pub struct Members {
    pub list: Arc<Vec<Shared>>,
    pub faults: Arc<Mutex<Vec<FaultRule>>>,
    /// Served as a fleet: names route to members, listings aggregate.
    pub fleet: bool,
    /// Each member's names (they never change), so routing takes no member's lock.
    index: Arc<Vec<Ids>>,
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    Member(usize),
    /// Answered over the whole fleet (listings, Resource Graph, the twin's admin endpoints).
    Fleet,
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

impl Members {
    pub fn new(list: Vec<Shared>, fleet: bool) -> Members {
        let index = list.iter().map(|m| m.world().ids.clone()).collect();
        Members {
            list: Arc::new(list),
            faults: Default::default(),
            fleet,
            index: Arc::new(index),
        }
    }

    pub fn first(&self) -> &Shared {
        &self.list[0]
    }

    fn find(&self, f: impl Fn(&Ids) -> bool) -> Option<usize> {
        self.index.iter().position(f)
    }

    /// The member named `name` (its cluster's name, case-insensitive).
    pub fn by_name(&self, name: &str) -> Option<usize> {
        self.find(|ids| eq(&ids.cluster, name))
    }

    pub fn names(&self) -> Vec<String> {
        self.index.iter().map(|ids| ids.cluster.clone()).collect()
    }

    /// The member whose API server answers as `host`.
    pub fn by_api_host(&self, host: &str) -> Option<usize> {
        self.find(|ids| eq(&ids.api_server_host, host))
    }

    /// Whether the operator's network cannot reach member `i`'s API server (a private cluster
    /// seen from outside its VNet: the name resolves nowhere).
    pub fn api_unreachable(&self, i: usize) -> bool {
        let w = self.list[i].world();
        w.cluster["properties"]["apiServerAccessProfile"]["enablePrivateCluster"].as_bool()
            == Some(true)
            && w.opts.operator_network == super::operator_network::OperatorNetwork::Outside
    }

    pub fn route(&self, host: &str, path: &str) -> Dest {
        if path.starts_with("/_sim/") && !host.ends_with(".azure.com") {
            return Dest::Fleet;
        }
        if !self.fleet {
            return Dest::Member(0);
        }
        if host == "management.azure.com" {
            return self.route_arm(path);
        }
        if let Some(vault) = host.strip_suffix(".vault.azure.net") {
            return Dest::Member(self.find(|ids| eq(&ids.vault, vault)).unwrap_or(0));
        }
        if host == "login.microsoftonline.com" {
            return Dest::Member(0);
        }
        Dest::Member(self.by_api_host(host).unwrap_or(0))
    }

    fn route_arm(&self, path: &str) -> Dest {
        let s: Vec<&str> = path.split('/').filter(|x| !x.is_empty()).collect();
        match s.as_slice() {
            ["subscriptions", sub, rg_, rg, ..] if eq(rg_, "resourceGroups") => self
                .find(|ids| eq(&ids.subscription, sub) && eq(&ids.resource_group, rg))
                .map_or(Dest::Fleet, Dest::Member),
            ["subscriptions", _, "providers", p, "locations", _, _, id]
                if eq(p, "Microsoft.ContainerService") =>
            {
                self.list
                    .iter()
                    .position(|m| m.world().operations.contains_key(*id))
                    .map_or(Dest::Fleet, Dest::Member)
            }
            _ => Dest::Fleet,
        }
    }

    /// The fault rules for a request to `dest`: the fleet's, then the member's.
    pub fn rules(&self, dest: Dest) -> Vec<FaultRule> {
        let mut rules = self
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Dest::Member(i) = dest {
            rules.extend(self.list[i].world().faults.iter().cloned());
        }
        rules
    }

    fn subscriptions(&self) -> Vec<String> {
        let mut subs: Vec<String> = Vec::new();
        for ids in self.index.iter() {
            if !subs.contains(&ids.subscription) {
                subs.push(ids.subscription.clone());
            }
        }
        subs
    }

    fn clusters(&self) -> Vec<Value> {
        self.list
            .iter()
            .map(|m| m.world().cluster.clone())
            .collect()
    }

    /// Resource Manager requests that name no one member.
    pub fn handle_arm(&self, req: &Req) -> Resp {
        let first = self.first().clone();
        let (tenant, authenticated) = {
            let w = first.world();
            let ok = req
                .bearer()
                .is_some_and(|t| w.token_ok(t, super::arm::AUDIENCE));
            (w.ids.tenant.clone(), ok)
        };
        if !authenticated || !req.query.contains_key("api-version") {
            // The member answers both refusals in the service's words.
            return super::arm::handle(&first, req, false);
        }
        let subs = self.subscriptions();
        let sub_doc = |i: usize, s: &str| {
            json!({ "id": format!("/subscriptions/{s}"), "subscriptionId": s, "tenantId": tenant,
                    "displayName": format!("kmsctl twin fleet {}", i + 1), "state": "Enabled" })
        };
        let in_sub = |v: &Value, sub: &str| {
            v["id"]
                .as_str()
                .and_then(|id| id.split('/').nth(2))
                .is_some_and(|s| eq(s, sub))
        };
        let s = req.segments();
        let known = |sub: &str| subs.iter().position(|x| eq(x, sub));
        match s.as_slice() {
            ["subscriptions"] => {
                let v: Vec<Value> = subs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| sub_doc(i, s))
                    .collect();
                let n = v.len();
                json_resp(
                    StatusCode::OK,
                    &json!({ "value": v, "count": { "type": "Total", "value": n } }),
                )
            }
            ["providers", p, "resources"]
                if eq(p, "Microsoft.ResourceGraph") && req.method == Method::POST =>
            {
                let docs: Vec<Value> = subs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| sub_doc(i, s))
                    .collect();
                super::fleet::graph_over(req, &docs, &self.clusters())
            }
            ["subscriptions", sub, rest @ ..] if known(sub).is_some() => match rest {
                [] => json_resp(StatusCode::OK, &sub_doc(known(sub).unwrap_or(0), sub)),
                ["providers", p, "managedClusters"] if eq(p, "Microsoft.ContainerService") => {
                    let v: Vec<Value> = self
                        .clusters()
                        .into_iter()
                        .filter(|c| in_sub(c, sub))
                        .collect();
                    json_resp(StatusCode::OK, &json!({ "value": v }))
                }
                ["providers", p, "vaults"] if eq(p, "Microsoft.KeyVault") => {
                    let v: Vec<Value> = self
                        .list
                        .iter()
                        .map(|m| m.world().vault.clone())
                        .filter(|v| in_sub(v, sub))
                        .collect();
                    json_resp(StatusCode::OK, &json!({ "value": v }))
                }
                [rg_, rg, ..] if eq(rg_, "resourceGroups") => arm_error(
                    StatusCode::NOT_FOUND,
                    "ResourceGroupNotFound",
                    &format!("Resource group '{rg}' could not be found."),
                ),
                _ => {
                    // Anything else subscription-wide: the subscription's first member answers.
                    let m = self.find(|ids| eq(&ids.subscription, sub)).unwrap_or(0);
                    super::arm::handle(&self.list[m], req, false)
                }
            },
            ["subscriptions", sub, ..] => arm_error(
                StatusCode::NOT_FOUND,
                "SubscriptionNotFound",
                &format!("The subscription '{sub}' could not be found."),
            ),
            _ => super::arm::handle(&first, req, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_names() {
        let spec = FleetSpec {
            clusters: 10,
            private_vaults: 2,
            no_local_accounts: 1,
            platform_managed: 1,
            private_api: 1,
        };
        assert_eq!(spec.total(), 12);
        assert_eq!(spec.name(3), "aks-fleet-03");
        let r = |i| spec.role(i);
        assert!(!r(1).local_accounts && r(2).local_accounts);
        assert!(!r(8).private_vault && r(9).private_vault && r(10).private_vault);
        assert!(r(11).platform_managed && !r(11).private_api && !r(11).private_vault);
        assert!(r(12).private_api && !r(12).platform_managed);
        for i in 1..=10 {
            assert!(!r(i).platform_managed && !r(i).private_api);
        }
        let big = FleetSpec {
            clusters: 120,
            ..Default::default()
        };
        assert_eq!(big.name(7), "aks-fleet-007");
        let mut names: Vec<String> = (1..=120).map(|i| big.name(i)).collect();
        let numbered = names.clone();
        names.sort();
        assert_eq!(names, numbered, "name order is number order");
    }
}
