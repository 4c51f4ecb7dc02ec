//! Facts a preflight needs, read from ARM (cluster, subscription, vault, role assignments, the
//! key version through Microsoft.KeyVault/vaults/keys), the vault's data plane only to prove a
//! change that needs it can reach it, and the cluster (Secret count, AKS's API server guard,
//! Konnectivity). Reading them changes nothing.

use crate::azure::RemoteError;
use crate::azure::arm::ArmClient;
use crate::azure::keys::{KeyId, KeyVault, KeyVersionInfo};
use crate::azure::mgmt_keys::KeyReader;
use crate::k8s::KubeError;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::Value;

#[derive(Clone, Debug, Default)]
pub struct ClusterFacts {
    pub resource: Value,
    pub etag: Option<String>,
    pub subscription_tenant: Option<String>,
}

impl ClusterFacts {
    pub fn kms(&self) -> &Value {
        self.resource
            .pointer("/properties/securityProfile/azureKeyVaultKms")
            .unwrap_or(&Value::Null)
    }
    pub fn kms_enabled(&self) -> bool {
        self.kms()["enabled"].as_bool() == Some(true)
    }
    pub fn key_id(&self) -> Option<String> {
        self.kms()["keyId"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }
    pub fn network_access(&self) -> String {
        self.kms()["keyVaultNetworkAccess"]
            .as_str()
            .unwrap_or("Public")
            .to_string()
    }
    pub fn vault_resource_id(&self) -> Option<String> {
        self.kms()["keyVaultResourceId"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }
    pub fn kubernetes_version(&self) -> String {
        let p = &self.resource["properties"];
        p["currentKubernetesVersion"]
            .as_str()
            .or(p["kubernetesVersion"].as_str())
            .unwrap_or_default()
            .to_string()
    }
    /// "v1" below 1.27, "v2" from 1.27, when KMS is on.
    pub fn kms_version(&self) -> Option<&'static str> {
        if !self.kms_enabled() {
            return None;
        }
        Some(
            if minor(&self.kubernetes_version()).is_some_and(|m| m >= (1, 27)) {
                "v2"
            } else {
                "v1"
            },
        )
    }
    pub fn provisioning_state(&self) -> String {
        self.resource["properties"]["provisioningState"]
            .as_str()
            .unwrap_or("Unknown")
            .to_string()
    }
    pub fn identity_type(&self) -> String {
        self.resource["identity"]["type"]
            .as_str()
            .unwrap_or("None")
            .to_string()
    }
    /// The control-plane identity's principal (object) id, for a user-assigned identity.
    pub fn identity_principal(&self) -> Option<String> {
        let ids = self.resource["identity"]["userAssignedIdentities"].as_object()?;
        ids.values()
            .find_map(|v| v["principalId"].as_str().map(str::to_string))
    }
    /// The preview KMS experience with a versionless key that AKS rotates by itself.
    pub fn uses_platform_managed_rotation(&self) -> bool {
        self.resource.pointer("/properties/securityProfile/kubernetesResourceObjectEncryptionProfile/infrastructureEncryption").and_then(Value::as_str)
            == Some("Enabled")
    }
    pub fn vnet_integration(&self) -> bool {
        self.resource
            .pointer("/properties/apiServerAccessProfile/enableVnetIntegration")
            .and_then(Value::as_bool)
            == Some(true)
    }
    /// Where this cluster's API server answers, `host:443` (AKS serves it on 443, by its
    /// public and private FQDN): compared with the kubeconfig's host AND port.
    pub fn api_server_endpoints(&self) -> Vec<String> {
        ["fqdn", "privateFQDN"]
            .iter()
            .filter_map(|f| self.resource["properties"][*f].as_str())
            .map(|s| format!("{}:443", s.to_ascii_lowercase()))
            .collect()
    }
}

pub fn minor(version: &str) -> Option<(u32, u32)> {
    let mut it = version.trim_start_matches('v').split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

#[derive(Clone, Debug, Default)]
pub struct VaultFacts {
    pub resource: Option<Value>,
    pub role_assignments: Vec<Value>,
    /// The dataActions of each custom role assigned (role definition id -> dataActions).
    pub custom_roles: Vec<(String, Vec<String>)>,
    /// Why the vault could not be read, if it could not.
    pub error: Option<String>,
    /// Why the role assignments could not be read: "could not be checked", not "missing".
    pub role_error: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct KubeFacts {
    /// The kubeconfig's API server, `host:port` (k8s::client::server_endpoint).
    pub server_endpoint: String,
    pub secret_count: Option<u64>,
    pub apiserver_guard: bool,
    pub konnectivity: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub cluster: ClusterFacts,
    /// The key the change will put in service (enable, or the current one for rotate).
    pub key_id: Option<KeyId>,
    pub key: Option<KeyVersionInfo>,
    pub key_error: Option<String>,
    /// For a run that will use the vault's data plane (rotate, retire): whether it is reached.
    pub reach: Option<Reach>,
    pub vault: VaultFacts,
    pub kube: KubeFacts,
    /// The network access and vault resource id the change asks for.
    pub network_access: String,
    pub vault_resource_id: Option<String>,
    /// A migration: the version asked for (None: the first 1.27+ minor), and the upgrades AKS
    /// offers from the current version (version, isPreview), or why they could not be read.
    pub target_version: Option<String>,
    pub upgrades: Option<Result<Vec<(String, bool)>, String>>,
}

pub fn cluster_path(subscription: &str, resource_group: &str, name: &str) -> String {
    format!(
        "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.ContainerService/managedClusters/{name}"
    )
}

pub async fn cluster(
    arm: &ArmClient,
    path: &str,
    subscription: &str,
) -> Result<ClusterFacts, RemoteError> {
    let answer = arm.get(path, &arm.api.aks).await?;
    let tenant = arm
        .get(&format!("/subscriptions/{subscription}"), "2022-12-01")
        .await
        .ok()
        .and_then(|a| a.body["tenantId"].as_str().map(str::to_string));
    Ok(ClusterFacts {
        resource: answer.body,
        etag: answer.etag,
        subscription_tenant: tenant,
    })
}

/// Finds the vault a key lives in: by resource id when given, else by name in the cluster's
/// subscription, then in every other subscription the credential can see (all pages).
pub async fn vault(
    arm: &ArmClient,
    subscription: &str,
    key: &KeyId,
    resource_id: Option<&str>,
    principal: Option<&str>,
) -> VaultFacts {
    let found = match resource_id {
        Some(id) => arm.get(id, &arm.api.key_vault).await.map(|a| Some(a.body)),
        None => find_vault(arm, subscription, key.vault_name()).await,
    };
    match found {
        Err(e) => VaultFacts {
            error: Some(e.to_string()),
            ..Default::default()
        },
        Ok(None) => VaultFacts {
            error: Some(format!(
                "no vault named {} in any subscription the credential can see",
                key.vault_name()
            )),
            ..Default::default()
        },
        Ok(Some(v)) => {
            let id = v["id"].as_str().unwrap_or_default().to_string();
            let (role_assignments, role_error) = match principal {
                Some(p) if !id.is_empty() => match arm.role_assignments(&id, Some(p)).await {
                    Ok(r) => (r, None),
                    Err(e) => (Vec::new(), Some(e.to_string())),
                },
                _ => (Vec::new(), None),
            };
            let custom_roles = custom_roles(arm, &role_assignments).await;
            VaultFacts {
                resource: Some(v),
                role_assignments,
                custom_roles,
                error: None,
                role_error,
            }
        }
    }
}

pub async fn find_vault(
    arm: &ArmClient,
    subscription: &str,
    name: &str,
) -> Result<Option<Value>, RemoteError> {
    let named = |vaults: Vec<Value>| {
        vaults.into_iter().find(|x| {
            x["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
    };
    let path = |sub: &str| format!("/subscriptions/{sub}/providers/Microsoft.KeyVault/vaults");
    // A fleet-wide check names no one subscription: every visible one is searched.
    if !subscription.is_empty()
        && let Some(v) = named(
            arm.list_all(&path(subscription), &arm.api.key_vault)
                .await?,
        )
    {
        return Ok(Some(v));
    }
    let Ok(subs) = arm.list_all("/subscriptions", "2022-12-01").await else {
        return Ok(None);
    };
    for sub in subs {
        let Some(id) = sub["subscriptionId"]
            .as_str()
            .filter(|s| !s.eq_ignore_ascii_case(subscription))
        else {
            continue;
        };
        if let Ok(vaults) = arm.list_all(&path(id), &arm.api.key_vault).await
            && let Some(v) = named(vaults)
        {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// The built-in roles kmsctl knows by id; any other assigned role is read for its dataActions.
const KNOWN_ROLES: &[&str] = &[
    "12338af0-0e69-4776-bea7-57ae8d297424",
    "14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
    "00482a5a-887f-4fb3-b363-3b7fe8e74483",
    "f25e0fa2-a7c8-4377-a976-54943a77a395",
    "b24988ac-6180-42a0-ab88-20f7382dd24c",
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
];

async fn custom_roles(arm: &ArmClient, assignments: &[Value]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for a in assignments {
        let Some(def) = a["properties"]["roleDefinitionId"].as_str() else {
            continue;
        };
        let l = def.to_ascii_lowercase();
        if KNOWN_ROLES.iter().any(|k| l.ends_with(k)) {
            continue;
        }
        if let Ok(d) = arm.get(def, &arm.api.authorization).await {
            let actions: Vec<String> = d.body["properties"]["permissions"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|p| p["dataActions"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            out.push((def.to_string(), actions));
        }
    }
    out
}

/// Whether a role's dataActions allow an operation, with ARM's `*` wildcards.
pub fn data_action_allows(actions: &[String], wanted: &str) -> bool {
    let wanted = wanted.to_ascii_lowercase();
    actions.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        match a.split_once('*') {
            None => a == wanted,
            Some((prefix, suffix)) => {
                wanted.starts_with(prefix)
                    && wanted.ends_with(suffix)
                    && wanted.len() >= a.len() - 1
            }
        }
    })
}

/// The key version's state, through Resource Manager.
pub async fn key(reader: &KeyReader, id: &KeyId) -> Result<KeyVersionInfo, RemoteError> {
    reader.version(id).await
}

/// Whether this machine reaches the vault's data plane, for a run that will need it.
#[derive(Clone, Debug)]
pub enum Reach {
    Reached,
    /// The vault's network refused (`RemoteError::network_block`), with the service's answer.
    Blocked {
        block: &'static str,
        detail: String,
    },
    /// Reached, but the read failed otherwise; `denied`: the answer was 401/403 (a permission),
    /// not a server error or throttling.
    Failed {
        detail: String,
        denied: bool,
    },
}

/// An authenticated read of the key on the data plane.
pub async fn reach(vault: &KeyVault, id: &KeyId) -> Reach {
    match vault.reach(&id.name).await {
        Ok(()) => Reach::Reached,
        Err(e) => match e.network_block() {
            Some(block) => Reach::Blocked {
                block,
                detail: e.to_string(),
            },
            None => Reach::Failed {
                denied: matches!(
                    e,
                    crate::azure::RemoteError::Status {
                        status: 401 | 403,
                        ..
                    }
                ),
                detail: e.to_string(),
            },
        },
    }
}

/// Whether AKS's last-resort throttle (FlowSchema aks-managed-apiserver-guard) is in place.
pub async fn apiserver_guard(client: &kube::Client) -> bool {
    let flowschemas: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource {
            group: "flowcontrol.apiserver.k8s.io".into(),
            version: "v1".into(),
            api_version: "flowcontrol.apiserver.k8s.io/v1".into(),
            kind: "FlowSchema".into(),
            plural: "flowschemas".into(),
        },
    );
    flowschemas
        .get_opt("aks-managed-apiserver-guard")
        .await
        .map(|f| f.is_some())
        .unwrap_or(false)
}

pub async fn kube(client: &kube::Client, server_endpoint: String) -> Result<KubeFacts, KubeError> {
    let secrets: Api<DynamicObject> = Api::all_with(client.clone(), &crate::k8s::secrets());
    let page = secrets
        .list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(KubeError::from)?;
    // Without remainingItemCount (a server may leave it out) the count is unknown, not small.
    let secret_count = match (page.metadata.remaining_item_count, &page.metadata.continue_) {
        (Some(n), _) => Some(page.items.len() as u64 + n.max(0) as u64),
        (None, Some(c)) if !c.is_empty() => None,
        (None, _) => Some(page.items.len() as u64),
    };
    let apiserver_guard = apiserver_guard(client).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "kube-system");
    let konnectivity = pods
        .list(
            &ListParams::default()
                .labels("app=konnectivity-agent")
                .limit(1),
        )
        .await
        .map(|l| !l.items.is_empty())
        .unwrap_or(false);
    Ok(KubeFacts {
        server_endpoint,
        secret_count,
        apiserver_guard,
        konnectivity,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn data_actions_with_wildcards() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let enc = "Microsoft.KeyVault/vaults/keys/encrypt/action";
        assert!(super::data_action_allows(
            &a(&["Microsoft.KeyVault/vaults/keys/*"]),
            enc
        ));
        assert!(super::data_action_allows(&a(&["*"]), enc));
        assert!(super::data_action_allows(
            &a(&["microsoft.keyvault/vaults/keys/encrypt/action"]),
            enc
        ));
        assert!(!super::data_action_allows(
            &a(&["Microsoft.KeyVault/vaults/secrets/*"]),
            enc
        ));
        assert!(!super::data_action_allows(&a(&[]), enc));
    }
}
