//! `kmsctl doctor ...`: runs a diagnosis and prints its findings (`-o json`:
//! `{"findings": [...]}`). Exit 1 when any finding is an error, else 0. Changes nothing.

use super::{Refusal, setup};
use crate::cli::DoctorCommand;
use crate::doctor::{self, Finding, Severity};
use crate::exit_codes;
use crate::output::{Format, out, print_json};
use kube::api::{Api, DynamicObject, ListParams};

fn split(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    s.split_once('/')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| Refusal(format!("{what} '{s}': write NAMESPACE/NAME")).into())
}

pub async fn run(cmd: DoctorCommand, format: Format) -> anyhow::Result<i32> {
    let findings = match cmd {
        DoctorCommand::Kms(t) => {
            let ctx = setup::context(&setup::target(&t), t.auth, &t.aks_api_version, true).await?;
            doctor::kms::run(&ctx).await?
        }
        DoctorCommand::SecretsProvider { target, pod } => {
            let pod = pod.as_deref().map(|p| split(p, "--pod")).transpose()?;
            let ctx = setup::context(
                &setup::target(&target),
                target.auth,
                &target.aks_api_version,
                true,
            )
            .await?;
            doctor::secrets_provider::run(&ctx.kube, ctx.azure()?, pod).await?
        }
        DoctorCommand::Identity {
            target,
            service_account,
        } => {
            let (ns, name) = split(&service_account, "--service-account")?;
            let ctx = setup::context(
                &setup::target(&target),
                target.auth,
                &target.aks_api_version,
                true,
            )
            .await?;
            identity(&ctx, &ns, &name).await?
        }
    };
    let findings = doctor::sorted(findings);
    match format {
        Format::Json => print_json(&serde_json::json!({ "findings": findings })),
        _ => out(&doctor::render(&findings)),
    }
    Ok(if findings.iter().any(|f| f.severity == Severity::Error) {
        exit_codes::FAILED
    } else {
        exit_codes::OK
    })
}

/// The ServiceAccount's workload identity, and its access to the vaults of the
/// SecretProviderClasses in its namespace that name its client id.
async fn identity(
    ctx: &crate::engine::context::Context,
    ns: &str,
    name: &str,
) -> anyhow::Result<Vec<Finding>> {
    let az = ctx.azure()?;
    let cluster = az.arm.get(&az.cluster_path, &az.arm.api.aks).await?.body;
    let (mut out, ident) =
        doctor::identity::workload(&ctx.kube, az, &cluster, ns, name, None).await;
    let Some(i) = ident else { return Ok(out) };
    let client = i["properties"]["clientId"].as_str().unwrap_or_default();
    let principal = i["properties"]["principalId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let spc = kube::discovery::ApiResource {
        group: "secrets-store.csi.x-k8s.io".into(),
        version: "v1".into(),
        api_version: "secrets-store.csi.x-k8s.io/v1".into(),
        kind: "SecretProviderClass".into(),
        plural: "secretproviderclasses".into(),
    };
    let spcs: Api<DynamicObject> = Api::namespaced_with(ctx.kube.clone(), ns, &spc);
    let list = spcs
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for s in list.iter().filter(|s| {
        s.data["spec"]["parameters"]["clientID"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case(client))
    }) {
        let p = &s.data["spec"]["parameters"];
        let types: Vec<String> = p["objects"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("objectType:")
                    .map(|t| t.trim().to_string())
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let who = format!("identity {}", i["name"].as_str().unwrap_or_default());
        out.extend(
            doctor::identity::vault_access(
                az,
                &principal,
                &who,
                p["keyvaultName"].as_str().unwrap_or_default(),
                &types,
            )
            .await,
        );
    }
    Ok(out)
}
