//! `kmsctl check-expiry --cronjob`: the Kubernetes objects that run the check inside the cluster
//! on a schedule, as the cluster's own workload identity: a ServiceAccount annotated with the
//! identity's client id, a Role and RoleBinding to read the key ledger, and the CronJob whose
//! pods are labelled for workload identity and run `check-expiry --auth workload`.

use super::Refusal;
use crate::cli::ExpiryArgs;
use crate::k8s::ledger;
use serde_json::{Value, json};

const NAME: &str = "kmsctl-check-expiry";

fn schedule_ok(s: &str) -> bool {
    s.split_whitespace().count() == 5
        || matches!(
            s,
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight" | "@hourly"
        )
}

pub fn objects(a: &ExpiryArgs) -> anyhow::Result<Vec<Value>> {
    let t = &a.target;
    let (Some(sub), Some(rg), Some(cluster)) = (&t.subscription, &t.resource_group, &t.cluster)
    else {
        return Err(Refusal("--cronjob checks one cluster: name it with --subscription, -g and -n (or their environment variables)".into()).into());
    };
    let Some(client_id) = &a.client_id else {
        return Err(Refusal(format!(
            "--cronjob needs --client-id: the client id of a user-assigned identity with a federated credential for system:serviceaccount:{ns}:{NAME} (issuer: the cluster's OIDC issuer, az aks show -g {rg} -n {cluster} --query oidcIssuerProfile.issuerUrl), Reader on the cluster and on the key's vault (Resource Manager read: the check reads keys through Resource Manager, no data-plane role needed)",
            ns = a.namespace
        ))
        .into());
    };
    if !schedule_ok(&a.schedule) {
        return Err(Refusal(format!(
            "--schedule '{}' is not a cron schedule (five fields, e.g. \"0 6 * * *\")",
            a.schedule
        ))
        .into());
    }
    let rotating = match &a.fix {
        None => false,
        Some(crate::checks::expiry::Fix::Rotate) => true,
        Some(crate::checks::expiry::Fix::Extend(_)) => {
            return Err(Refusal("--cronjob carries --fix rotate only: a schedule that extends expiries keeps a key in service for ever, which is what expiry is there to stop. Use --fix rotate (a new version when the key nears expiry), or extend by hand".into()).into());
        }
    };
    let ns = a.namespace.as_str();
    let labels = json!({ "app.kubernetes.io/name": "kmsctl", "app.kubernetes.io/component": "check-expiry" });
    let mut args = vec![
        "check-expiry",
        "--auth",
        "workload",
        "--warn",
        &a.warn,
        "--critical",
        &a.critical,
        "--aks-api-version",
        &a.target.aks_api_version,
        "-o",
        "json",
    ];
    if rotating {
        // The journal outlives the pod, so the next job resumes a rotation this one left.
        args.extend(["--fix", "rotate", "--yes", "--state-dir", STATE_MOUNT]);
    }
    let mut objects = vec![
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": { "name": NAME, "namespace": ns, "labels": labels,
                          "annotations": { "azure.workload.identity/client-id": client_id } }
        }),
        // Only the key ledger, only read: the previous key version KMS may still need.
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": { "name": NAME, "namespace": ledger::NAMESPACE, "labels": labels },
            "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "resourceNames": [ledger::NAME], "verbs": ["get"] }]
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": NAME, "namespace": ledger::NAMESPACE, "labels": labels },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME },
            "subjects": [{ "kind": "ServiceAccount", "name": NAME, "namespace": ns }]
        }),
        json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": { "name": NAME, "namespace": ns, "labels": labels },
            "spec": {
                "schedule": a.schedule, "concurrencyPolicy": "Forbid",
                "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 5,
                "jobTemplate": { "spec": { "backoffLimit": 0, "template": {
                    "metadata": { "labels": { "azure.workload.identity/use": "true", "app.kubernetes.io/name": "kmsctl" } },
                    "spec": {
                        "serviceAccountName": NAME, "restartPolicy": "Never",
                        "containers": [{
                            "name": "check-expiry", "image": a.image, "args": args,
                            "env": [
                                { "name": "AZURE_SUBSCRIPTION_ID", "value": sub },
                                { "name": "KMSCTL_RESOURCE_GROUP", "value": rg },
                                { "name": "KMSCTL_CLUSTER", "value": cluster }
                            ],
                            "resources": { "requests": { "cpu": "10m", "memory": "32Mi" }, "limits": { "memory": "128Mi" } },
                            "securityContext": { "runAsNonRoot": true, "runAsUser": 65532, "allowPrivilegeEscalation": false,
                                                 "readOnlyRootFilesystem": true, "capabilities": { "drop": ["ALL"] } }
                        }]
                    }
                } } }
            }
        }),
    ];
    if rotating {
        with_rotation(&mut objects, ns, &labels);
    }
    Ok(objects)
}

const STATE_MOUNT: &str = "/var/lib/kmsctl";
const STATE_CLAIM: &str = "kmsctl-check-expiry-state";

/// What a scheduled rotation needs beyond the check: kmsctl's own Kubernetes roles (`kmsctl rbac
/// --kubernetes`: Secrets rewritten, the canary, the lease, the ledger updated) bound to the job's
/// ServiceAccount, and a volume for the run's journal. The identity also needs the Azure role
/// `kmsctl rbac --azure` prints (cluster write, key rotate), instead of Reader.
fn with_rotation(objects: &mut Vec<Value>, ns: &str, labels: &Value) {
    let subject = json!({ "kind": "ServiceAccount", "name": NAME, "namespace": ns });
    objects.extend(super::rbac::manifests());
    for (kind, role_kind, namespace) in [
        ("ClusterRoleBinding", "ClusterRole", None),
        ("RoleBinding", "Role", Some(ledger::NAMESPACE)),
    ] {
        let mut b = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": { "name": format!("{NAME}-rotate"), "labels": labels },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": super::rbac::ROLE_NAME },
            "subjects": [subject.clone()]
        });
        if let Some(n) = namespace {
            b["metadata"]["namespace"] = json!(n);
        }
        objects.push(b);
    }
    objects.push(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": STATE_CLAIM, "namespace": ns, "labels": labels },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "64Mi" } } }
    }));
    for o in objects.iter_mut().filter(|o| o["kind"] == "CronJob") {
        let pod = &mut o["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        pod["volumes"] =
            json!([{ "name": "state", "persistentVolumeClaim": { "claimName": STATE_CLAIM } }]);
        // The journal is written as the container's user.
        pod["securityContext"] = json!({ "fsGroup": 65532 });
        let c = &mut pod["containers"][0];
        c["volumeMounts"] = json!([{ "name": "state", "mountPath": STATE_MOUNT }]);
        // A rotation re-encrypts every Secret: more than a check needs.
        c["resources"] = json!({ "requests": { "cpu": "100m", "memory": "64Mi" }, "limits": { "memory": "512Mi" } });
    }
}

/// The objects as one YAML stream.
pub fn render(a: &ExpiryArgs) -> anyhow::Result<String> {
    let mut out = format!(
        "# kmsctl check-expiry in the cluster, {}; the job fails (exit 1-3) on WARNING, CRITICAL or UNKNOWN.\n# Apply: kubectl create namespace {} && kubectl apply -f this.yaml\n",
        a.schedule, a.namespace
    );
    for o in objects(a)? {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&o)?);
    }
    Ok(out)
}
