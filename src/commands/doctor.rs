//! `kmsctl doctor ...`: runs a diagnosis and prints its findings (`-o json`:
//! `{"findings": [...]}`). Exit 1 when any finding is an error, else 0. Changes nothing.

use super::{Refusal, setup};
use crate::cli::{DoctorCommand, TargetArgs};
use crate::doctor::{self, Severity};
use crate::exit_codes;
use crate::output::{Format, out, print_json};

fn split(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    s.split_once('/')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| Refusal(format!("{what} '{s}': write NAMESPACE/NAME")).into())
}

async fn context(t: &TargetArgs) -> anyhow::Result<crate::engine::context::Context> {
    setup::context(&setup::target(t), t.auth, &t.aks_api_version, true).await
}

pub async fn run(cmd: DoctorCommand, format: Format) -> anyhow::Result<i32> {
    let findings = match cmd {
        DoctorCommand::Kms(t) => {
            let ctx = context(&t).await?;
            doctor::kms::run(&ctx).await?
        }
        DoctorCommand::SecretsProvider { target, pod } => {
            let pod = pod.as_deref().map(|p| split(p, "--pod")).transpose()?;
            let ctx = context(&target).await?;
            doctor::secrets_provider::run(&ctx.kube, ctx.azure()?, pod).await?
        }
        DoctorCommand::Identity {
            target,
            service_account,
        } => {
            let (ns, name) = split(&service_account, "--service-account")?;
            let ctx = context(&target).await?;
            doctor::identity::for_service_account(&ctx, &ns, &name).await?
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
