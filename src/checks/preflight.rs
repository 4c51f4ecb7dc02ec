//! Preflight: every limit in shared/domain.md §3 that can be checked, before anything changes.
//! Pure: facts in, findings out. A `Refuse` stops the run with exit code 2.

use super::Finding;
use super::facts::{Facts, minor};
use crate::playbook::Intent;
use serde_json::Value;

pub const KMS_V1_SECRET_LIMIT: u64 = 2000;

const CRYPTO_ROLES: &[(&str, &str)] = &[
    (
        "12338af0-0e69-4776-bea7-57ae8d297424",
        "Key Vault Crypto User",
    ),
    (
        "14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
        "Key Vault Crypto Officer",
    ),
    (
        "00482a5a-887f-4fb3-b363-3b7fe8e74483",
        "Key Vault Administrator",
    ),
];
const CONTRIBUTOR_ROLES: &[(&str, &str)] = &[
    (
        "f25e0fa2-a7c8-4377-a976-54943a77a395",
        "Key Vault Contributor",
    ),
    ("b24988ac-6180-42a0-ab88-20f7382dd24c", "Contributor"),
    ("8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "Owner"),
];

pub struct Inputs<'a> {
    pub intent: Intent,
    pub facts: &'a Facts,
    pub margin_days: u32,
    pub now: chrono::DateTime<chrono::Utc>,
}

pub fn run(i: &Inputs) -> Vec<Finding> {
    let mut out = Vec::new();
    cluster_checks(i, &mut out);
    if i.intent == Intent::MigrateV2 {
        migrate_checks(i, &mut out);
    }
    if matches!(
        i.intent,
        Intent::Enable | Intent::Rotate | Intent::VaultMode | Intent::MigrateV2
    ) {
        key_checks(i, &mut out);
        vault_checks(i, &mut out);
        network_checks(i, &mut out);
    }
    reach_check(i, &mut out);
    if matches!(
        i.intent,
        Intent::Disable | Intent::VaultMode | Intent::MigrateV2
    ) {
        if i.intent == Intent::Disable {
            disable_key_check(i, &mut out);
        }
        out.push(Finding::warn(
            "key-after-disable",
            "after KMS is disabled, Secrets stay encrypted with the key until re-encrypted (kmsctl does that next)",
            "keep the key and the identity's access until the run has finished; never delete the key",
        ));
    }
    kube_checks(i, &mut out);
    out
}

/// A run that rotates (or disables a version) needs the vault's data plane: refuse before any
/// change when this machine cannot reach it, naming the vault's network settings.
fn reach_check(i: &Inputs, out: &mut Vec<Finding>) {
    use super::facts::Reach;
    let Some(reach) = &i.facts.reach else {
        return;
    };
    let name = i
        .facts
        .key_id
        .as_ref()
        .map(|k| k.vault_name().to_string())
        .unwrap_or_default();
    let vault = i.facts.vault.resource.as_ref();
    out.push(match reach {
        Reach::Reached => Finding::pass(
            "vault-reach",
            format!("the data plane of vault {name} is reachable from here (an authenticated read of the key)"),
        ),
        Reach::Blocked { block, detail } => Finding::refuse(
            "vault-reach",
            super::reach::message(&name, vault, block, detail),
            super::reach::ways_forward_for(vault, block),
        ),
        Reach::Failed { detail, denied: true } => Finding::refuse(
            "vault-reach",
            format!("the key could not be read on the data plane of vault {name}, which rotating it needs: {detail}"),
            "give kmsctl's identity the data actions `kmsctl rbac` lists for rotate (Microsoft.KeyVault/vaults/keys/read, .../rotate/action, .../update/action), e.g. Key Vault Crypto Officer on the vault",
        ),
        // A server error or throttling is no permission problem.
        Reach::Failed { detail, denied: false } => Finding::refuse(
            "vault-reach",
            format!("the key could not be read on the data plane of vault {name}, which rotating it needs: Key Vault did not answer as it should ({detail})"),
            "retry later (a server error or throttling on Key Vault's side); nothing was changed",
        ),
    });
}

/// Disabling re-encrypts every Secret out of the current key: it must still decrypt.
fn disable_key_check(i: &Inputs, out: &mut Vec<Finding>) {
    match (&i.facts.key, &i.facts.key_error) {
        (Some(k), _) if !k.enabled => out.push(Finding::refuse(
            "key-enabled",
            format!("{} is disabled: the Secrets under it cannot be read, so they cannot be re-encrypted out of it", k.id),
            "enable it first (az keyvault key set-attributes --enabled true), then disable KMS",
        )),
        (Some(k), _) => out.push(Finding::pass("key-enabled", format!("{} is enabled", k.id))),
        (None, Some(e)) => out.push(Finding::warn(
            "key-enabled",
            format!("the current key could not be read: {e}"),
            "make sure it is enabled: Secrets are re-encrypted out of it",
        )),
        (None, None) => {}
    }
}

fn cluster_checks(i: &Inputs, out: &mut Vec<Finding>) {
    let c = &i.facts.cluster;
    let state = c.provisioning_state();
    out.push(if state == "Succeeded" {
        Finding::pass("cluster-state", "the cluster is Succeeded with no operation running")
    } else {
        Finding::refuse(
            "cluster-state",
            format!("the cluster's provisioningState is {state}: another operation is running or the last one failed"),
            "wait for the running operation to finish (az aks show --query provisioningState), or fix and reconcile a Failed cluster (az aks update), then run again",
        )
    });
    if c.uses_platform_managed_rotation() {
        out.push(Finding::refuse(
            "kms-experience",
            "this cluster uses AKS's KMS with platform-managed rotation (versionless key, kubernetesResourceObjectEncryptionProfile): AKS rotates and re-encrypts by itself, and it cannot be disabled",
            "nothing to do with kmsctl for this cluster: rotate the key in Key Vault and AKS picks it up within 6 hours",
        ));
    }
    let enabled = c.kms_enabled();
    match i.intent {
        Intent::Rotate if !enabled => out.push(Finding::refuse(
            "kms-enabled",
            "KMS is not enabled on this cluster: there is no key to rotate",
            "enable it first: kmsctl enable --key-id <versioned key id>",
        )),
        Intent::VaultMode if !enabled => out.push(Finding::refuse(
            "kms-enabled",
            "KMS is not enabled on this cluster: there is no KMS vault whose mode could change",
            format!("enable it in the mode you want: kmsctl enable --key-id <versioned key id> --network-access {}", i.facts.network_access.to_ascii_lowercase()),
        )),
        Intent::VaultMode if c.network_access().eq_ignore_ascii_case(&i.facts.network_access) => out.push(Finding::refuse(
            "vault-mode",
            format!("KMS already uses its vault in {} mode", c.network_access()),
            "nothing to change",
        )),
        Intent::MigrateV2 if !enabled => out.push(Finding::refuse(
            "kms-enabled",
            "KMS is not enabled on this cluster: there is no KMS v1 to migrate",
            "upgrade as usual (az aks upgrade); enabling KMS on 1.27+ gives KMS v2",
        )),
        Intent::Disable if !enabled => out.push(Finding::warn(
            "kms-enabled",
            "KMS is already disabled; kmsctl will only re-encrypt what is left under a key",
            "nothing needed",
        )),
        _ => {}
    }
    if matches!(
        i.intent,
        Intent::Enable | Intent::Rotate | Intent::VaultMode | Intent::MigrateV2
    ) {
        let t = c.identity_type();
        out.push(if t.contains("UserAssigned") {
            Finding::pass("identity", "the cluster has a user-assigned control-plane identity")
        } else {
            Finding::refuse(
                "identity",
                format!("the cluster's identity is {t}: KMS etcd encryption does not work with a system-assigned managed identity"),
                "give the cluster a user-assigned identity (az aks update --enable-managed-identity --assign-identity <identity resource id>) and grant it access to the key first",
            )
        });
    }
    if i.intent == Intent::Enable && enabled {
        let same_vault = c
            .key_id()
            .zip(i.facts.key_id.as_ref())
            .is_some_and(|(cur, new)| cur.to_ascii_lowercase().contains(new.vault_host()));
        if same_vault && c.network_access() != i.facts.network_access {
            out.push(Finding::refuse(
                "vault-mode-change",
                format!("KMS is enabled with this vault in {} mode; the mode cannot change while KMS is enabled", c.network_access()),
                "disable KMS (kmsctl disable), change the vault's public network access, then enable KMS again with the new mode",
            ));
        }
    }
}

fn key_checks(i: &Inputs, out: &mut Vec<Finding>) {
    let Some(key) = &i.facts.key else {
        let why = i
            .facts
            .key_error
            .clone()
            .unwrap_or_else(|| "no key id".into());
        out.push(Finding::refuse("key", format!("the key version could not be read: {why}"), "check the key id and that kmsctl may read it through Resource Manager (Microsoft.KeyVault/vaults/keys/read and .../keys/versions/read, e.g. Reader on the vault; see `kmsctl rbac`)"));
        return;
    };
    let id = &key.id;
    match key.kty.as_deref() {
        Some("RSA") | Some("RSA-HSM") | None => out.push(Finding::pass("key-type", format!("{id} is an RSA key"))),
        Some(other) => out.push(Finding::refuse("key-type", format!("{id} is a {other} key; AKS's KMS needs an RSA key"), "create an RSA key (az keyvault key create --kty RSA --size 2048) and use its versioned id")),
    }
    if !key.enabled {
        out.push(Finding::refuse(
            "key-enabled",
            format!("{id} is disabled"),
            "enable it: az keyvault key set-attributes --enabled true",
        ));
    }
    if let Some(nbf) = key.not_before.filter(|n| *n > i.now) {
        out.push(Finding::refuse(
            "key-not-before",
            format!("{id} is not valid before {nbf}: the KMS plugin cannot use it yet"),
            "wait until then, or clear its activation date (az keyvault key set-attributes --not-before ...)",
        ));
    }
    let margin = chrono::Duration::days(i.margin_days as i64);
    match key.expires_on {
        Some(exp) if exp <= i.now => out.push(Finding::refuse(
            "key-expiry",
            format!("{id} expired on {exp}: KeyExpired, the KMS plugin can no longer encrypt"),
            "extend its expiry (az keyvault key set-attributes --expires ...) or rotate to a new version",
        )),
        Some(exp) if i.intent == Intent::Rotate && exp <= i.now + margin => out.push(Finding::refuse(
            "key-expiry",
            format!("{id} expires on {exp}, within the {}-day margin; after a rotation it stays in use by KMS and must stay valid until the next one", i.margin_days),
            "extend its expiry first (az keyvault key set-attributes --expires ...)",
        )),
        Some(exp) if exp <= i.now + margin => out.push(Finding::warn("key-expiry", format!("{id} expires on {exp}, within {} days", i.margin_days), "extend its expiry or plan a rotation")),
        Some(exp) => out.push(Finding::pass("key-expiry", format!("{id} expires on {exp}"))),
        None => out.push(Finding::pass("key-expiry", format!("{id} has no expiry date"))),
    }
    if !key.key_ops.is_empty() {
        let has = |op: &str| key.key_ops.iter().any(|o| o.eq_ignore_ascii_case(op));
        if !(has("encrypt") && has("decrypt")) {
            out.push(Finding::refuse(
                "key-operations",
                format!(
                    "{id} does not permit encrypt and decrypt (it permits {})",
                    key.key_ops.join(", ")
                ),
                "create or update the key with --ops encrypt decrypt",
            ));
        }
    }
}

/// A custom role (from its dataActions) that allows every one of `actions`.
fn custom_role_allowing(f: &crate::checks::facts::VaultFacts, actions: &[&str]) -> Option<String> {
    f.custom_roles
        .iter()
        .find(|(_, data)| {
            actions
                .iter()
                .all(|a| crate::checks::facts::data_action_allows(data, a))
        })
        .map(|(id, _)| format!("custom role {}", id.rsplit('/').next().unwrap_or(id)))
}

const ENCRYPT: &str = "Microsoft.KeyVault/vaults/keys/encrypt/action";
const DECRYPT: &str = "Microsoft.KeyVault/vaults/keys/decrypt/action";

/// The first of `roles` (guid, name) among the assignments' role definitions.
pub fn has_role(
    assignments: &[Value],
    roles: &[(&'static str, &'static str)],
) -> Option<&'static str> {
    let defs: Vec<String> = assignments
        .iter()
        .map(|r| {
            r["properties"]["roleDefinitionId"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase()
        })
        .collect();
    roles
        .iter()
        .find(|(guid, _)| defs.iter().any(|d| d.ends_with(guid)))
        .map(|(_, name)| *name)
}

fn vault_checks(i: &Inputs, out: &mut Vec<Finding>) {
    let f = i.facts;
    let Some(vault) = &f.vault.resource else {
        out.push(Finding::refuse(
            "vault",
            format!(
                "the key's vault could not be read: {}",
                f.vault.error.clone().unwrap_or_default()
            ),
            "give kmsctl's identity Reader on the vault, or pass --vault-resource-id",
        ));
        return;
    };
    let p = &vault["properties"];
    let vault_tenant = p["tenantId"].as_str().unwrap_or_default();
    match &f.cluster.subscription_tenant {
        Some(t) if !t.eq_ignore_ascii_case(vault_tenant) => out.push(Finding::refuse(
            "vault-tenant",
            format!("the vault is in tenant {vault_tenant}, the cluster's subscription in tenant {t}: a vault in another tenant is not supported"),
            "use a vault in the cluster's own tenant",
        )),
        Some(_) => out.push(Finding::pass("vault-tenant", "the vault is in the cluster's tenant")),
        None => out.push(Finding::warn("vault-tenant", "the subscription's tenant could not be read, so the vault's tenant was not compared", "make sure the vault is in the cluster's tenant")),
    }
    if p["enableSoftDelete"].as_bool() == Some(false)
        || p["enablePurgeProtection"].as_bool() != Some(true)
    {
        out.push(Finding::warn(
            "vault-recovery",
            "soft delete or purge protection is off on the vault: a deleted key could not be recovered, and every Secret would be lost",
            "az keyvault update --enable-purge-protection true",
        ));
    } else {
        out.push(Finding::pass(
            "vault-recovery",
            "soft delete and purge protection are on",
        ));
    }
    let Some(principal) = f.cluster.identity_principal() else {
        return;
    };
    let private = f.network_access == "Private";
    let key_host = f
        .key_id
        .as_ref()
        .map(|k| crate::k8s::client::server_host(&k.vault_url));
    let vault_host = p["vaultUri"].as_str().map(crate::k8s::client::server_host);
    if let (Some(k), Some(v)) = (&key_host, &vault_host) {
        out.push(if k.eq_ignore_ascii_case(v) {
            Finding::pass("key-vault-host", format!("the key id's host {k} is the vault's"))
        } else {
            Finding::refuse(
                "key-vault-host",
                format!("the key id names host {k}, but the vault's vaultUri is {v}"),
                format!("use a key id of that vault (az keyvault key show --vault-name {} -n <key> --query key.kid)", vault["name"].as_str().unwrap_or("<vault>")),
            )
        });
    }
    let role_error = f.vault.role_error.clone();
    if p["enableRbacAuthorization"].as_bool() == Some(true) {
        let role = has_role(&f.vault.role_assignments, CRYPTO_ROLES)
            .map(str::to_string)
            .or_else(|| custom_role_allowing(&f.vault, &[ENCRYPT, DECRYPT]));
        match role {
            Some(role) => out.push(Finding::pass("identity-access", format!("the identity has {role} on the vault"))),
            None if role_error.is_some() => out.push(Finding::warn(
                "identity-access",
                format!("the identity's role assignments on the vault could not be checked: {}", role_error.clone().unwrap_or_default()),
                "give kmsctl's identity Reader on the vault (Microsoft.Authorization/roleAssignments/read), or check that the cluster identity has Key Vault Crypto User",
            )),
            None => out.push(Finding::refuse(
                "identity-access",
                format!("the cluster identity {principal} has no Key Vault Crypto User role on the vault"),
                format!("az role assignment create --role \"Key Vault Crypto User\" --assignee-object-id {principal} --assignee-principal-type ServicePrincipal --scope {}", vault["id"].as_str().unwrap_or("<vault resource id>")),
            )),
        }
    } else {
        let ok = p["accessPolicies"].as_array().is_some_and(|ps| {
            ps.iter().any(|ap| {
                ap["objectId"].as_str() == Some(principal.as_str()) && {
                    let keys: Vec<String> = ap["permissions"]["keys"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|k| k.as_str().map(str::to_ascii_lowercase))
                                .collect()
                        })
                        .unwrap_or_default();
                    keys.iter().any(|k| k == "all")
                        || (keys.iter().any(|k| k == "encrypt")
                            && keys.iter().any(|k| k == "decrypt"))
                }
            })
        });
        out.push(if ok {
            Finding::pass("identity-access", "an access policy lets the identity encrypt and decrypt")
        } else {
            Finding::refuse(
                "identity-access",
                format!("no access policy lets the cluster identity {principal} encrypt and decrypt with keys"),
                format!("az keyvault set-policy --name {} --key-permissions decrypt encrypt --object-id {principal}", vault["name"].as_str().unwrap_or("<vault>")),
            )
        });
    }
    if private {
        match has_role(&f.vault.role_assignments, CONTRIBUTOR_ROLES) {
            Some(role) => out.push(Finding::pass("identity-private-link", format!("the identity has {role} on the vault (needed to create the private link)"))),
            None if role_error.is_some() => out.push(Finding::warn(
                "identity-private-link",
                "the identity's role assignments on the vault could not be checked (Key Vault Contributor is needed for the private link)",
                "check that the cluster identity has Key Vault Contributor on the vault",
            )),
            None => out.push(Finding::refuse(
                "identity-private-link",
                "with a private vault AKS creates a private endpoint, which needs Key Vault Contributor for the cluster identity; AKS cannot check this for you",
                format!("az role assignment create --role \"Key Vault Contributor\" --assignee-object-id {principal} --assignee-principal-type ServicePrincipal --scope {}", vault["id"].as_str().unwrap_or("<vault resource id>")),
            )),
        }
    }
}

fn network_checks(i: &Inputs, out: &mut Vec<Finding>) {
    let f = i.facts;
    let Some(vault) = &f.vault.resource else {
        return;
    };
    let p = &vault["properties"];
    if f.network_access == "Public" && i.intent == Intent::VaultMode {
        let rules = p["networkAcls"]["ipRules"].as_array().map_or(0, Vec::len)
            + p["networkAcls"]["virtualNetworkRules"]
                .as_array()
                .map_or(0, Vec::len);
        out.push(Finding::pass(
            "vault-network",
            format!(
                "set-vault-network will set the vault's public network access to Enabled with firewall default Allow (public-mode KMS supports no firewall){}",
                if rules > 0 { format!("; its {rules} IP/virtual network rule(s) stay but no longer restrict anything") } else { String::new() }
            ),
        ));
    } else if f.network_access == "Public" {
        let public = p["publicNetworkAccess"].as_str().unwrap_or("Enabled");
        let default_action = p["networkAcls"]["defaultAction"]
            .as_str()
            .unwrap_or("Allow");
        if !public.eq_ignore_ascii_case("Enabled") || !default_action.eq_ignore_ascii_case("Allow")
        {
            out.push(Finding::refuse(
                "vault-network",
                format!("the vault's public network access is {public} with firewall default {default_action}: a public-mode KMS vault must allow public access, or it blocks the KMS plugin"),
                // kmsctl never tells anyone to open a vault: the way that keeps it closed is
                // private mode; public mode's requirement is stated, not handed out as a command.
                format!("keep the vault as it is and use KMS in private mode (`--network-access private --vault-resource-id {}`, with API Server VNet Integration); public-mode KMS works only with a vault that allows public access, which AKS requires and this vault does not", vault["id"].as_str().unwrap_or("<id>")),
            ));
        } else {
            out.push(Finding::pass(
                "vault-network",
                "the vault allows public access",
            ));
        }
    } else {
        if !f.cluster.vnet_integration() {
            out.push(Finding::refuse(
                "vnet-integration",
                "a private vault needs API Server VNet Integration; Konnectivity is not supported for private vaults",
                "enable API Server VNet Integration (az aks update --enable-apiserver-vnet-integration --apiserver-subnet-id <subnet>)",
            ));
        } else if f.kube.konnectivity {
            out.push(Finding::warn(
                "vnet-integration",
                "konnectivity-agent pods still run in kube-system",
                "check that API Server VNet Integration is complete",
            ));
        } else {
            out.push(Finding::pass(
                "vnet-integration",
                "API Server VNet Integration is on",
            ));
        }
        let vault_id = vault["id"].as_str().unwrap_or_default();
        match &f.vault_resource_id {
            None => out.push(Finding::refuse(
                "vault-resource-id",
                "private mode needs the vault's resource id",
                format!(
                    "pass --vault-resource-id {}",
                    vault["id"].as_str().unwrap_or(
                        "/subscriptions/.../providers/Microsoft.KeyVault/vaults/<vault>"
                    )
                ),
            )),
            Some(id) if !id.eq_ignore_ascii_case(vault_id) => out.push(Finding::refuse(
                "vault-resource-id",
                format!("--vault-resource-id {id} is not the vault of the key ({vault_id})"),
                if i.intent == Intent::VaultMode {
                    "pass the key's vault; to point KMS at a different vault (a plain update, no off/on), also pass --key-id with a versioned key of that vault".to_string()
                } else {
                    "pass the resource id of the vault that holds the key".to_string()
                },
            )),
            Some(_) => out.push(Finding::pass(
                "vault-resource-id",
                "the vault resource id matches the key's vault",
            )),
        }
    }
}

/// What blocks each hop of a KMS v1 -> v2 migration: the target, and an upgrade AKS offers.
fn migrate_checks(i: &Inputs, out: &mut Vec<Finding>) {
    let c = &i.facts.cluster;
    let current = c.kubernetes_version();
    let Some(cur) = minor(&current) else {
        out.push(Finding::refuse(
            "kubernetes-version",
            format!("the cluster reports Kubernetes version '{current}', which kmsctl cannot read"),
            "check az aks show --query currentKubernetesVersion",
        ));
        return;
    };
    let v2 = crate::engine::upgrade::KMS_V2_FROM;
    if cur >= v2 {
        out.push(Finding::warn(
            "kms-version",
            format!("the cluster already runs Kubernetes {current}: KMS is v2 already"),
            "nothing to migrate",
        ));
        return;
    }
    let target = i.facts.target_version.as_deref();
    let want = target.and_then(minor).unwrap_or(v2);
    if want < v2 || want <= cur {
        out.push(Finding::refuse(
            "target-version",
            format!("--target-version {} is not a 1.27+ version above the cluster's {current}", target.unwrap_or_default()),
            "pass a version of 1.27 or later (or leave it out: the first 1.27+ minor), e.g. --target-version 1.27",
        ));
        return;
    }
    let hops = want.1 - cur.1;
    out.push(Finding::pass(
        "target-version",
        format!(
            "{current} -> {}.{} in {hops} upgrade(s), one minor version at a time",
            want.0, want.1
        ),
    ));
    match &i.facts.upgrades {
        Some(Ok(offered)) => {
            let last = if hops == 1 { target } else { None };
            match crate::engine::upgrade::next_hop(offered, &current, last) {
                Some(next) => out.push(Finding::pass("upgrade-offered", format!("AKS offers {next} as the next upgrade"))),
                None => out.push(Finding::refuse(
                    "upgrade-offered",
                    format!(
                        "AKS offers no upgrade from {current} to {}.{} (offered: [{}]); minor versions cannot be skipped",
                        cur.0, cur.1 + 1,
                        offered.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>().join(" ")
                    ),
                    "check az aks get-upgrades; a version out of support may need a new cluster at 1.27+ with KMS enabled",
                )),
            }
        }
        Some(Err(e)) => out.push(Finding::refuse(
            "upgrade-offered",
            format!("the cluster's upgrade profile could not be read: {e}"),
            "kmsctl needs Microsoft.ContainerService/managedClusters/upgradeProfiles/read",
        )),
        None => {}
    }
    out.push(Finding::warn(
        "secrets-without-kms",
        format!("from the first re-encryption until KMS is enabled again after the last of {hops} upgrade(s) (each takes tens of minutes on AKS), Secrets are stored without KMS encryption"),
        "plan the window; kmsctl resumes from the cluster's version if interrupted",
    ));
}

fn kube_checks(i: &Inputs, out: &mut Vec<Finding>) {
    let f = i.facts;
    let hosts = f.cluster.api_server_endpoints();
    if i.intent != Intent::Reencrypt {
        out.push(if hosts.contains(&f.kube.server_endpoint) {
            Finding::pass("kubeconfig-cluster", format!("the kubeconfig context's server {} is this cluster's API server", f.kube.server_endpoint))
        } else {
            Finding::refuse(
                "kubeconfig-cluster",
                format!("the kubeconfig context's server {} is not this cluster's API server ({}; host and port are compared)", f.kube.server_endpoint, hosts.join(" or ")),
                {
                    let id = f.cluster.resource["id"].as_str().unwrap_or_default();
                    let rg = id.split('/').skip_while(|p| !p.eq_ignore_ascii_case("resourceGroups")).nth(1).unwrap_or("<rg>");
                    let name = f.cluster.resource["name"].as_str().unwrap_or("<cluster>");
                    format!("select the right context (--context, or az aks get-credentials -g {rg} -n {name})")
                },
            )
        });
    }
    let v1 = minor(&f.cluster.kubernetes_version()).is_some_and(|m| m < (1, 27));
    if v1
        && matches!(
            i.intent,
            Intent::Enable | Intent::Rotate | Intent::VaultMode
        )
    {
        match f.kube.secret_count {
            Some(n) if n > KMS_V1_SECRET_LIMIT => out.push(Finding::refuse(
                "kms-v1-limit",
                format!("the cluster runs Kubernetes {} (KMS v1), which supports at most {KMS_V1_SECRET_LIMIT} Secrets; it has {n}", f.cluster.kubernetes_version()),
                "upgrade to 1.27 or later first (KMS v2 has no such limit), or reduce the number of Secrets",
            )),
            Some(n) => out.push(Finding::pass("kms-v1-limit", format!("{n} Secrets, within KMS v1's limit of {KMS_V1_SECRET_LIMIT}"))),
            None => out.push(Finding::warn("kms-v1-limit", "the number of Secrets could not be counted", "make sure there are at most 2,000 Secrets")),
        }
    }
    if v1 && i.intent == Intent::Enable {
        out.push(Finding::warn(
            "kms-v1-upgrades",
            format!("Kubernetes {} runs KMS v1: a cluster with KMS v1 is blocked from upgrading to 1.27 or later", f.cluster.kubernetes_version()),
            "upgrade to 1.27+ before enabling KMS, or plan to disable KMS, upgrade and enable it again (KMS v1 -> v2 migration)",
        ));
    }
    if f.kube.secret_count.is_none() {
        out.push(Finding::warn(
            "secret-count",
            "the number of Secrets could not be counted (the API server gave no remainingItemCount)",
            "progress shows no total; nothing else depends on it",
        ));
    }
    if f.kube.apiserver_guard {
        out.push(Finding::warn(
            "apiserver-guard",
            "AKS's last-resort API server throttle (FlowSchema aks-managed-apiserver-guard) is in place: the API server has been overloaded",
            "kmsctl re-encrypts with at most 4 requests in flight; find what overloads the API server first",
        ));
    }
}
