//! The troubleshooting guide's table (shared/domain.md §5): each cause's log or event
//! signature, what it means, and the remedy. Matched against the driver's and provider's error
//! lines of the last hour and the pod's warning events.

pub struct Signature {
    pub guide: &'static str,
    /// Every one of these must appear in the line.
    pub all_of: &'static [&'static str],
    pub cause: &'static str,
    pub remedy: &'static str,
}

pub const TABLE: &[Signature] = &[
    Signature {
        guide: "1",
        all_of: &["nmi response failed with status code: 404"],
        cause: "aad-pod-identity's NMI returned an error for the token request",
        remedy: "check the NMI pod's logs (kubectl logs -n kube-system -l component=nmi); pod identity is deprecated: move the SecretProviderClass to workload identity",
    },
    Signature {
        guide: "2",
        all_of: &["StatusCode=0", "context deadline exceeded"],
        cause: "the provider pod cannot reach the key vault (firewall egress, a network policy, or a host-network pod)",
        remedy: "allow the provider's egress to login.microsoftonline.com and <vault>.vault.azure.net:443, check network policies, and test from the node: nc -v -w 2 <vault>.vault.azure.net 443",
    },
    Signature {
        guide: "3",
        all_of: &["\"error_description\":\"Identity not found\""],
        cause: "the SecretProviderClass's userAssignedIdentityID is not an identity on the nodes",
        remedy: "set userAssignedIdentityID to the add-on identity's client id: az aks show -g <rg> -n <cluster> --query addonProfiles.azureKeyvaultSecretsProvider.identity.clientId -o tsv",
    },
    Signature {
        guide: "4",
        all_of: &["ForbiddenByConnection"],
        cause: "the vault's private endpoint is in another virtual network than the nodes, so its name resolves to a public address",
        remedy: "link the private DNS zone privatelink.vaultcore.azure.net to the AKS virtual network and peer the two networks; nslookup <vault>.vault.azure.net must give a private address",
    },
    Signature {
        guide: "5",
        all_of: &["secrets-store.csi.k8s.io not found in the list of registered CSI drivers"],
        cause: "no Secrets Store CSI driver pod runs on the application pod's node",
        remedy: "kubectl get pod -l app=secrets-store-csi-driver -n kube-system -o wide; make the driver run on that node (taint tolerations; Windows Helm values; enable the add-on)",
    },
    Signature {
        guide: "6",
        all_of: &["failed to get secretproviderclass", "not found"],
        cause: "the SecretProviderClass is not in the pod's namespace, or the volume names it wrong",
        remedy: "create the SecretProviderClass in the pod's namespace, or fix the volume's volumeAttributes.secretProviderClass",
    },
    Signature {
        guide: "6'",
        all_of: &["failed to find provider binary azure"],
        cause: "the CSI driver cannot talk to the Azure provider",
        remedy: "provider before 0.0.9: run a provider pod on every node; 0.0.9 and later: configure the driver for the provider's gRPC socket",
    },
    Signature {
        guide: "7'",
        all_of: &[
            "failed to create Kubernetes secret",
            "cannot create resource",
        ],
        cause: "syncing as a Kubernetes Secret lacks the driver's RBAC",
        remedy: "install with secrets-store-csi-driver.syncSecret.enabled=true; check kubectl get clusterrole/secretprovidersyncing-role clusterrolebinding/secretprovidersyncing-rolebinding",
    },
    Signature {
        guide: "7",
        all_of: &["StatusCode=401"],
        cause: "Key Vault did not accept the request's authentication (HTTP 401)",
        remedy: "see the Key Vault REST error reference for 401: check the identity's tenant and the token's issuer",
    },
    Signature {
        guide: "8",
        all_of: &["StatusCode=429"],
        cause: "Key Vault throttled the requests (HTTP 429)",
        remedy: "see the Key Vault REST error reference for 429: lower the rotation poll frequency (rotationPollInterval) and the number of objects fetched, and back off",
    },
];

/// The first signature the line carries.
pub fn matching(line: &str) -> Option<&'static Signature> {
    TABLE
        .iter()
        .find(|s| s.all_of.iter().all(|needle| line.contains(needle)))
}

/// The guide's cause by its number (the table's own entries; a wrong number is a bug here).
pub fn guide(number: &str) -> &'static Signature {
    TABLE
        .iter()
        .find(|s| s.guide == number)
        .expect("a cause the guide lists")
}

impl Signature {
    /// An error finding for this cause.
    pub fn finding(&'static self, evidence: impl Into<String>) -> super::Finding {
        let mut f = super::Finding::new(super::Severity::Error, self.cause, evidence, self.remedy);
        f.guide = Some(self.guide);
        f
    }
}
