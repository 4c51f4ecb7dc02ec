//! `kmsctl doctor kms`: KMS's state and experience, the key versions it depends on (validity,
//! expiry, the ledger's previous version; the KeyExpired condition), the identity's access,
//! what the vault's network mode needs (VNet integration or the firewall), and AKS's API server
//! guard. It reuses the preflight checks and the expiry check, read-only.

use super::{Finding, Severity};
use crate::checks::expiry::{Status, Windows};
use crate::checks::{self, Level};
use crate::engine::context::Context;
use crate::engine::journal::RunParams;
use crate::playbook::Intent;

pub async fn run(ctx: &Context) -> anyhow::Result<Vec<Finding>> {
    let az = ctx.azure()?;
    let mut out = Vec::new();
    let cluster = az.arm.get(&az.cluster_path, &az.arm.api.aks).await?.body;
    let ledger = crate::k8s::ledger::load(&ctx.kube)
        .await
        .map(|(l, _)| l)
        .map_err(|e| e.to_string());
    let windows = Windows {
        warn: chrono::Duration::days(30),
        critical: chrono::Duration::days(7),
    };
    let report = crate::commands::expiry::check_cluster(az, &cluster, Some(ledger), windows).await;
    match report.experience {
        "off" => {
            out.push(Finding::info(
                "KMS etcd encryption is off",
                "securityProfile.azureKeyVaultKms.enabled is not true",
            ));
            return Ok(out);
        }
        e => out.push(Finding::info(
            format!("KMS etcd encryption is on ({e})"),
            cluster["properties"]["securityProfile"]["azureKeyVaultKms"]["keyId"]
                .as_str()
                .unwrap_or_default(),
        )),
    }
    for v in report.versions.iter().filter(|v| v.needed) {
        let severity = match v.status {
            Status::Ok => Severity::Info,
            Status::Warning => Severity::Warning,
            Status::Critical | Status::Unknown => Severity::Error,
        };
        let expired = v.expires_on.is_some_and(|e| e <= chrono::Utc::now());
        let cause = if expired && v.roles.contains(&"in-use") {
            "KeyExpired: Operation encrypt is not allowed on an expired key (the KMS plugin is unhealthy)".to_string()
        } else {
            format!("key version ({}): {}", v.roles.join(", "), v.note)
        };
        out.push(Finding::new(severity, cause, v.key_id.clone(), "extend its expiry (kmsctl check-expiry --fix extend=90d) or rotate to a new version (kmsctl rotate --twice); never delete it while Secrets are encrypted with it"));
    }
    out.extend(
        report
            .notes
            .iter()
            .map(|n| Finding::new(Severity::Warning, n.clone(), "check-expiry", "see the note")),
    );
    if report.experience == "platform-managed-rotation" {
        return Ok(out);
    }
    // The preflight of a rotation covers the identity, the vault and the network mode.
    let pre =
        crate::engine::preflight::run(ctx, Intent::Rotate, &RunParams::default(), true).await?;
    for f in pre.findings.iter().filter(|f| {
        !matches!(
            f.check,
            "key-expiry" | "key-enabled" | "key" | "cluster-state"
        )
    }) {
        let mut finding = from_check(f);
        // Not reaching the vault's data plane from this machine says nothing about KMS's
        // health (its plugin has its own way in): only that a rotation must run elsewhere.
        if f.check == "vault-reach" && f.level == Level::Refuse {
            finding = Finding::new(
                Severity::Warning,
                format!("a rotation cannot run from this machine: {}", f.message),
                format!("check {}", f.check),
                f.fix.clone().unwrap_or_default(),
            );
        }
        out.push(finding);
    }
    Ok(out)
}

fn from_check(f: &checks::Finding) -> Finding {
    let severity = match f.level {
        Level::Pass => Severity::Info,
        Level::Warn => Severity::Warning,
        Level::Refuse => Severity::Error,
    };
    Finding::new(
        severity,
        f.message.clone(),
        format!("check {}", f.check),
        f.fix.clone().unwrap_or_else(|| "nothing to do".into()),
    )
}
