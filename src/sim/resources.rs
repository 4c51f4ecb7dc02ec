//! The ARM resources the twin starts with, shaped like the real examples in
//! `shared/fixtures/arm/` (managedCluster GET, vault PATCH response, role assignment list).

use super::world::{Ids, KEY_NAME, KeyRecord, KeyVersion, new_etag, rfc3339};
use super::{NetworkAccess, SimOptions};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::SystemTime;

pub const ROLE_CRYPTO_USER: &str = "12338af0-0e69-4776-bea7-57ae8d297424";
pub const ROLE_KV_CONTRIBUTOR: &str = "f25e0fa2-a7c8-4377-a976-54943a77a395";

pub fn kid(ids: &Ids, name: &str, version: &str) -> String {
    format!("https://{}/keys/{name}/{version}", ids.vault_host())
}

pub fn initial_cluster(ids: &Ids, opts: &SimOptions, keys: &BTreeMap<String, KeyRecord>) -> Value {
    let version = &opts.kubernetes_version;
    let dns = "aks-twin-dns";
    // The twin's own API server host name, which its kubeconfig names (reached through the
    // kubeconfig's proxy-url, the twin's one port).
    let fqdn = ids.api_server_host.as_str();
    let current = &keys[KEY_NAME]
        .versions
        .last()
        .expect("a first key version")
        .version;
    let kms = if opts.kms {
        let mut k = json!({
            "enabled": true,
            "keyId": kid(ids, KEY_NAME, current),
            "keyVaultNetworkAccess": opts.network_access.as_str(),
        });
        if opts.network_access == NetworkAccess::Private {
            k["keyVaultResourceId"] = json!(ids.vault_id());
        }
        k
    } else {
        json!({ "enabled": false })
    };
    let identity = if opts.system_assigned_identity {
        json!({ "type": "SystemAssigned", "principalId": uuid::Uuid::new_v4().to_string(), "tenantId": ids.tenant })
    } else {
        json!({
            "type": "UserAssigned",
            "userAssignedIdentities": {
                ids.identity_id.clone(): { "principalId": ids.identity_principal, "clientId": ids.identity_client }
            }
        })
    };
    let now = rfc3339(SystemTime::now());
    json!({
        "id": ids.cluster_id(),
        "name": ids.cluster,
        "type": "Microsoft.ContainerService/managedClusters",
        "location": ids.location,
        "eTag": new_etag(),
        "tags": { "environment": "twin" },
        "sku": { "name": "Base", "tier": "Standard" },
        "identity": identity,
        "systemData": {
            "createdAt": now, "createdBy": "kmsctl-sim", "createdByType": "Application",
            "lastModifiedAt": now, "lastModifiedBy": "kmsctl-sim", "lastModifiedByType": "Application"
        },
        "properties": {
            "provisioningState": "Succeeded",
            "powerState": { "code": "Running" },
            "kubernetesVersion": version,
            "currentKubernetesVersion": version,
            "dnsPrefix": dns,
            "fqdn": fqdn,
            "azurePortalFQDN": format!("{dns}-3f9a2c1e.portal.hcp.{}.azmk8s.io", ids.location),
            "agentPoolProfiles": [{
                "name": "nodepool1", "count": 3, "vmSize": "Standard_D4ds_v5", "maxPods": 110,
                "osType": "Linux", "mode": "System", "type": "VirtualMachineScaleSets",
                "orchestratorVersion": version, "currentOrchestratorVersion": version,
                "provisioningState": "Succeeded", "powerState": { "code": "Running" },
                "eTag": new_etag(), "availabilityZones": ["1", "2", "3"],
                "upgradeSettings": { "maxSurge": "10%" }
            }],
            "apiServerAccessProfile": { "enableVnetIntegration": opts.vnet_integration, "enablePrivateCluster": false },
            "enableRBAC": true,
            "maxAgentPools": 100,
            "nodeResourceGroup": format!("MC_{}_{}_{}", ids.resource_group, ids.cluster, ids.location),
            "networkProfile": {
                "networkPlugin": "azure", "networkPluginMode": "overlay", "loadBalancerSku": "standard",
                "outboundType": "loadBalancer", "podCidr": "10.244.0.0/16", "serviceCidr": "10.0.0.0/16",
                "dnsServiceIP": "10.0.0.10", "ipFamilies": ["IPv4"]
            },
            "oidcIssuerProfile": { "enabled": true, "issuerURL": format!("https://{}.oic.prod-aks.azure.com/{}/{}/", ids.location, ids.tenant, uuid::Uuid::new_v4()) },
            "addonProfiles": {
                "azureKeyvaultSecretsProvider": { "enabled": true, "config": { "enableSecretRotation": "true", "rotationPollInterval": "2m" } }
            },
            "securityProfile": { "azureKeyVaultKms": kms, "workloadIdentity": { "enabled": true } },
            "supportPlan": "KubernetesOfficial",
            "upgradeSettings": { "overrideSettings": { "forceUpgrade": false } }
        }
    })
}

pub fn initial_vault(ids: &Ids, opts: &SimOptions) -> Value {
    let private = opts.network_access == NetworkAccess::Private;
    json!({
        "id": ids.vault_id(),
        "name": ids.vault,
        "type": "Microsoft.KeyVault/vaults",
        "location": ids.location,
        "tags": {},
        "systemData": { "createdAt": rfc3339(SystemTime::now()), "createdBy": "kmsctl-sim", "createdByType": "Application" },
        "properties": {
            "tenantId": ids.tenant,
            "sku": { "family": "A", "name": "standard" },
            "accessPolicies": [{
                "tenantId": ids.tenant,
                "objectId": ids.identity_principal,
                "permissions": { "keys": ["get", "list", "encrypt", "decrypt", "wrapKey", "unwrapKey"], "secrets": [], "certificates": [] }
            }],
            "enabledForDeployment": false,
            "enabledForDiskEncryption": false,
            "enabledForTemplateDeployment": false,
            "enableSoftDelete": true,
            "softDeleteRetentionInDays": 90,
            "enablePurgeProtection": true,
            "enableRbacAuthorization": false,
            "networkAcls": { "bypass": "AzureServices", "defaultAction": if private { "Deny" } else { "Allow" }, "ipRules": [], "virtualNetworkRules": [] },
            "privateEndpointConnections": [],
            "publicNetworkAccess": if private { "Disabled" } else { "Enabled" },
            "provisioningState": "Succeeded",
            "vaultUri": format!("https://{}/", ids.vault_host())
        }
    })
}

pub fn role_assignment(ids: &Ids, role: &str, principal: &str, scope: &str) -> Value {
    let name = uuid::Uuid::new_v4().to_string();
    json!({
        "id": format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"),
        "name": name,
        "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "roleDefinitionId": format!("/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{role}", ids.subscription),
            "principalId": principal,
            "principalType": "ServicePrincipal",
            "scope": scope
        }
    })
}

/// The control-plane identity can use the key (for RBAC vaults) and create the private link.
pub fn initial_role_assignments(ids: &Ids) -> Vec<Value> {
    vec![
        role_assignment(
            ids,
            ROLE_CRYPTO_USER,
            &ids.identity_principal,
            &ids.vault_id(),
        ),
        role_assignment(
            ids,
            ROLE_KV_CONTRIBUTOR,
            &ids.identity_principal,
            &ids.vault_id(),
        ),
    ]
}

pub fn key_attributes(v: &KeyVersion) -> Value {
    let mut a = json!({
        "enabled": v.enabled, "created": v.created, "updated": v.updated,
        "recoveryLevel": "Recoverable", "recoverableDays": 90, "exportable": false
    });
    if let Some(exp) = v.exp {
        a["exp"] = json!(exp);
    }
    if let Some(nbf) = v.nbf {
        a["nbf"] = json!(nbf);
    }
    a
}

/// A KeyBundle as the Key Vault data plane returns it.
pub fn key_bundle(ids: &Ids, name: &str, v: &KeyVersion) -> Value {
    let mut key = json!({ "kid": kid(ids, name, &v.version), "kty": v.kty, "key_ops": v.key_ops });
    if v.kty.starts_with("RSA") {
        key["n"] = json!(v.modulus);
        key["e"] = json!("AQAB");
    } else {
        // P-256 coordinates: 32 bytes each, base64url.
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&v.modulus)
            .unwrap_or_default();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        key["crv"] = json!("P-256");
        key["x"] = json!(b64(raw.get(..32).unwrap_or_default()));
        key["y"] = json!(b64(raw.get(32..64).unwrap_or_default()));
    }
    json!({ "key": key, "attributes": key_attributes(v), "tags": v.tags })
}
