//! `kmsctl rbac`: the least privilege kmsctl needs, as manifests to apply and an Azure custom
//! role to create: exactly the Kubernetes verbs and the Azure actions and dataActions its code
//! calls (each listed with the command that needs it), nothing broader.

use crate::cli::RbacArgs;
use crate::output::{Format, out, print_json};
use anyhow::Context;
use serde_json::{Value, json};

const NAME: &str = "kmsctl";
/// The ClusterRole and the kube-system Role `manifests` define.
pub const ROLE_NAME: &str = NAME;

/// (apiGroup, resource, verbs, why)
type ClusterRule = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static str,
);
/// (apiGroup, resource, verbs, resourceNames, why)
type SystemRule = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static str,
);

/// Kubernetes rules across the cluster.
const CLUSTER_RULES: &[ClusterRule] = &[
    (
        "",
        "secrets",
        &["get", "list", "update"],
        "re-encryption lists every Secret and PUTs it back unchanged; preflight counts them",
    ),
    (
        "",
        "namespaces",
        &["get", "list"],
        "re-encryption goes namespace by namespace; runs record the kube-system uid",
    ),
    (
        "flowcontrol.apiserver.k8s.io",
        "flowschemas",
        &["get", "list"],
        "AKS's API server guard (aks-managed-apiserver-guard) slows re-encryption down",
    ),
];

/// Kubernetes rules in kube-system.
const SYSTEM_RULES: &[SystemRule] = &[
    (
        "",
        "secrets",
        &["create"],
        &[],
        "the canary Secret kmsctl-canary is created once",
    ),
    (
        "",
        "secrets",
        &["get", "update"],
        &["kmsctl-canary"],
        "the canary proves each key switch",
    ),
    (
        "coordination.k8s.io",
        "leases",
        &["create"],
        &[],
        "the run lease kmsctl-run is created",
    ),
    (
        "coordination.k8s.io",
        "leases",
        &["get", "update", "delete"],
        &["kmsctl-run"],
        "one run per cluster at a time",
    ),
    (
        "coordination.k8s.io",
        "leases",
        &["list"],
        &[],
        "API server replicas are counted from their identity Leases",
    ),
    (
        "",
        "configmaps",
        &["create"],
        &[],
        "the key ledger kmsctl-key-ledger is created once",
    ),
    (
        "",
        "configmaps",
        &["get", "update"],
        &["kmsctl-key-ledger"],
        "the key ledger: versions in use, switches and their proofs",
    ),
    (
        "",
        "pods",
        &["list"],
        &[],
        "preflight looks for konnectivity-agent pods (private vaults need VNet integration)",
    ),
];

/// Azure control-plane actions, with why.
const ACTIONS: &[(&str, &str)] = &[
    (
        "Microsoft.Resources/subscriptions/read",
        "the vault and other clusters are looked up in every subscription",
    ),
    (
        "Microsoft.ContainerService/managedClusters/read",
        "the cluster's KMS configuration, status, preflight",
    ),
    (
        "Microsoft.ContainerService/managedClusters/write",
        "enable, disable, rotate, vault-mode, migrate-v2 (PUT with If-Match)",
    ),
    (
        "Microsoft.ContainerService/managedClusters/listClusterUserCredential/action",
        "--kube-credentials azure: the API server's address and CA from Resource Manager",
    ),
    (
        "Microsoft.ContainerService/managedClusters/listClusterAdminCredential/action",
        "--kube-credentials azure-admin: the cluster's local admin credential",
    ),
    (
        "Microsoft.ContainerService/managedClusters/upgradeProfiles/read",
        "migrate-v2: the next minor version offered",
    ),
    (
        "Microsoft.ContainerService/locations/operations/read",
        "following the cluster's long-running operations",
    ),
    (
        "Microsoft.ContainerService/locations/operationresults/read",
        "following the cluster's long-running operations",
    ),
    (
        "Microsoft.KeyVault/vaults/read",
        "preflight: the key's vault, its tenant, network access, recovery",
    ),
    (
        "Microsoft.KeyVault/vaults/write",
        "vault-mode: the vault's public network access",
    ),
    (
        "Microsoft.KeyVault/vaults/keys/read",
        "status, preflight, check-expiry, doctor: the key and its rotation policy, through Resource Manager (any network)",
    ),
    (
        "Microsoft.KeyVault/vaults/keys/versions/read",
        "status, preflight, check-expiry, doctor, ledger and rotation-window checks: each version's enabled, nbf, exp, through Resource Manager (any network)",
    ),
    (
        "Microsoft.Authorization/roleAssignments/read",
        "preflight: the cluster identity's roles on the vault",
    ),
    (
        "Microsoft.Authorization/roleDefinitions/read",
        "preflight: custom roles' dataActions",
    ),
    (
        "Microsoft.ResourceGraph/resources/read",
        "check-expiry --all, fleet: every KMS cluster",
    ),
];

/// Key Vault data actions, with why: only the commands that change a key need the data plane
/// (and a network that reaches the vault); every read goes through Resource Manager.
const DATA_ACTIONS: &[(&str, &str)] = &[
    (
        "Microsoft.KeyVault/vaults/keys/read",
        "rotate, check-expiry --fix extend: the reach check before a change (an authenticated read of the key on the vault's data plane)",
    ),
    (
        "Microsoft.KeyVault/vaults/keys/rotate/action",
        "rotate (and check-expiry --fix rotate, also as a CronJob): a new key version",
    ),
    (
        "Microsoft.KeyVault/vaults/keys/update/action",
        "rotate --retire-old (disable, never delete) and check-expiry --fix extend",
    ),
];

pub fn manifests() -> Vec<Value> {
    let labels = json!({ "app.kubernetes.io/name": "kmsctl" });
    let rule = |group: &str, res: &str, verbs: &[&str], names: &[&str]| {
        let mut r = json!({ "apiGroups": [group], "resources": [res], "verbs": verbs });
        if !names.is_empty() {
            r["resourceNames"] = json!(names);
        }
        r
    };
    let mut cluster_rules: Vec<Value> = CLUSTER_RULES
        .iter()
        .map(|(g, r, v, _)| rule(g, r, v, &[]))
        .collect();
    // The key switch is proven from each replica's KMS key id hash, when readable.
    cluster_rules.push(json!({ "nonResourceURLs": ["/metrics"], "verbs": ["get"] }));
    let system_rules: Vec<Value> = SYSTEM_RULES
        .iter()
        .map(|(g, r, v, n, _)| rule(g, r, v, n))
        .collect();
    vec![
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": { "name": NAME, "labels": labels }, "rules": cluster_rules }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": { "name": NAME, "namespace": "kube-system", "labels": labels }, "rules": system_rules }),
    ]
}

fn bindings(subject: &Value) -> Vec<Value> {
    let labels = json!({ "app.kubernetes.io/name": "kmsctl" });
    vec![
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": { "name": NAME, "labels": labels },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME },
                "subjects": [subject] }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": { "name": NAME, "namespace": "kube-system", "labels": labels },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME },
                "subjects": [subject] }),
    ]
}

/// The Azure custom role, in the form `az role definition create --role-definition` reads.
pub fn custom_role(scope: &str) -> Value {
    json!({
        "Name": "kmsctl operator",
        "IsCustom": true,
        "Description": "What kmsctl calls to run KMS etcd encryption's lifecycle on AKS: cluster read/write, vault read/write (network access), key read, rotate and update (never delete).",
        "Actions": ACTIONS.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        "NotActions": [],
        "DataActions": DATA_ACTIONS.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        "NotDataActions": [],
        "AssignableScopes": [scope]
    })
}

const YAML_FILE: &str = "kmsctl-rbac.yaml";
const ROLE_FILE: &str = "kmsctl-role.json";

/// The manifests as YAML documents, each rule explained in a comment (kubectl ignores them).
fn kubernetes_yaml(k8s: &[Value], bound: bool) -> anyhow::Result<String> {
    let mut s =
        String::from("# Kubernetes: what kmsctl calls, nothing broader (kubectl apply -f -).\n");
    let res = |g: &str, r: &str| {
        if g.is_empty() {
            r.to_string()
        } else {
            format!("{g}/{r}")
        }
    };
    for (g, r, v, why) in CLUSTER_RULES {
        s.push_str(&format!(
            "#   cluster    {:<36} {:<22} {why}\n",
            res(g, r),
            v.join(",")
        ));
    }
    for (g, r, v, n, why) in SYSTEM_RULES {
        let names = if n.is_empty() {
            String::new()
        } else {
            format!("/{}", n.join(","))
        };
        s.push_str(&format!(
            "#   kube-system {:<35} {:<22} {why}\n",
            format!("{}{names}", res(g, r)),
            v.join(",")
        ));
    }
    if !bound {
        s.push_str(
            "# Bind them with --user NAME or --group ID (an Entra ID group's object id on AKS).\n",
        );
    }
    for m in k8s {
        s.push_str("---\n");
        s.push_str(&serde_saphyr::to_string(m)?);
    }
    Ok(s)
}

pub fn run(a: RbacArgs, format: Format) -> anyhow::Result<i32> {
    let scope = a
        .scope
        .clone()
        .or_else(|| {
            a.subscription
                .as_ref()
                .map(|s| format!("/subscriptions/{s}"))
        })
        .unwrap_or_else(|| "/subscriptions/<subscription id>".into());
    let subject = match (&a.user, &a.group) {
        (Some(u), _) => {
            Some(json!({ "kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": u }))
        }
        (None, Some(g)) => {
            Some(json!({ "kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g }))
        }
        (None, None) => None,
    };
    let mut k8s = manifests();
    if let Some(s) = &subject {
        k8s.extend(bindings(s));
    }
    let role = custom_role(&scope);
    if a.kubernetes {
        match format {
            // A List is what `kubectl apply -f -` reads as one JSON document.
            Format::Json => {
                print_json(&json!({ "apiVersion": "v1", "kind": "List", "items": k8s }))
            }
            _ => out(&kubernetes_yaml(&k8s, subject.is_some())?),
        }
    } else if a.azure {
        print_json(&role);
    } else if let Some(dir) = &a.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (yaml, json_path) = (dir.join(YAML_FILE), dir.join(ROLE_FILE));
        std::fs::write(&yaml, kubernetes_yaml(&k8s, subject.is_some())?)
            .with_context(|| format!("writing {}", yaml.display()))?;
        std::fs::write(
            &json_path,
            format!("{}\n", serde_json::to_string_pretty(&role)?),
        )
        .with_context(|| format!("writing {}", json_path.display()))?;
        match format {
            Format::Json => print_json(&json!({ "kubernetes": yaml, "azureRole": json_path })),
            _ => out(&format!(
                "wrote {y}\n  apply it: kubectl apply -f {y}\nwrote {j}\n  create the role: az role definition create --role-definition @{j}\n",
                y = yaml.display(),
                j = json_path.display()
            )),
        }
    } else {
        match format {
            Format::Json => print_json(&json!({ "kubernetes": k8s, "azureRole": role })),
            _ => {
                let mut s = String::from(
                    "# Two parts, applied with different tools: print one at a time.\n\
                     #   kmsctl rbac --kubernetes [--user NAME] | kubectl apply -f -\n\
                     #   kmsctl rbac --azure > kmsctl-role.json && az role definition create --role-definition @kmsctl-role.json\n\
                     # (or --out-dir DIR writes both files)\n\n",
                );
                s.push_str(&kubernetes_yaml(&k8s, subject.is_some())?);
                s.push_str(&format!(
                    "\n# Azure custom role (kmsctl rbac --azure > {ROLE_FILE}; az role definition create --role-definition @{ROLE_FILE}):\n"
                ));
                for (a, why) in ACTIONS.iter().chain(DATA_ACTIONS) {
                    s.push_str(&format!("#   {a:<64} {why}\n"));
                }
                s.push_str(&format!("{}\n", serde_json::to_string_pretty(&role)?));
                out(&s);
            }
        }
    }
    Ok(crate::exit_codes::OK)
}
