//! `kmsctl check-expiry --all`: every AKS cluster with KMS that the credential can see, found
//! with one Azure Resource Graph query across its subscriptions (paged), checked in parallel
//! with a bound; one row each, and the worst status as the exit code.

use super::expiry::{ClusterReport, check_cluster, textfile_code};
use crate::checks::expiry::{Status, Windows};
use crate::engine::context::Azure;
use crate::fleet::select::kms_clusters;
use crate::output::{Format, out};
use futures::StreamExt;
use serde_json::json;

/// Clusters checked at once: each check makes a few Key Vault calls.
const PARALLEL: usize = 8;

pub async fn run(az: &Azure, windows: Windows) -> Vec<ClusterReport> {
    let rows = match kms_clusters(&az.arm).await {
        Ok(rows) => rows,
        Err(e) => {
            return vec![ClusterReport::unknown(
                "(fleet)",
                format!("the clusters could not be listed through Azure Resource Graph: {e}"),
            )];
        }
    };
    // The key ledger lives inside each cluster; a fleet check reads Azure only, so every
    // enabled version older than the one in use counts as possibly still needed.
    let mut reports: Vec<ClusterReport> = futures::stream::iter(rows)
        .map(|row| async move { check_cluster(az, &row, None, windows).await })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    reports.sort_by_key(|r| r.id.to_ascii_lowercase());
    reports
}

fn subscription_of(id: &str) -> &str {
    id.split('/').nth(2).unwrap_or_default()
}

/// One line per cluster.
pub fn table(reports: &[ClusterReport]) -> String {
    let mut s = format!(
        "{:<9} {:<28} {:<37} {:<26} {}\n",
        "STATUS", "CLUSTER", "SUBSCRIPTION", "EXPERIENCE", "IN USE"
    );
    for r in reports {
        let in_use = r
            .versions
            .iter()
            .find(|v| v.roles.contains(&"in-use"))
            .map_or_else(
                || r.notes.first().cloned().unwrap_or_default(),
                |v| v.note.clone(),
            );
        s.push_str(&format!(
            "{:<9} {:<28} {:<37} {:<26} {}\n",
            r.status.label(),
            r.cluster,
            subscription_of(&r.id),
            r.experience,
            in_use
        ));
    }
    s.push_str(&format!(
        "{} cluster(s); worst: {}. The key ledgers (inside each cluster) were not read: every enabled version older than the one in use was judged as possibly still needed (role possibly-needed); `kmsctl check-expiry -g RG -n NAME` reads a cluster's ledger and judges only what it lists. Clusters with KMS off are not listed: a former key their Secrets may still need is known only to their ledger, so check each with `kmsctl check-expiry -g RG -n NAME`.\n",
        reports.len(),
        worst(reports).label()
    ));
    s
}

pub fn worst(reports: &[ClusterReport]) -> Status {
    reports.iter().fold(Status::Ok, |s, r| s.worst(r.status))
}

/// Prints the fleet's reports in `format` and writes the textfile; returns the exit code (the
/// worst status, or UNKNOWN when the textfile could not be written). JSON is JSON lines: one
/// document per cluster, each shaped as the single-cluster `check-expiry -o json` one
/// (`{"clusters": [report]}`), so one parser reads both.
pub fn print(
    reports: &mut [ClusterReport],
    format: Format,
    windows: Windows,
    textfile: Option<&std::path::Path>,
) -> anyhow::Result<i32> {
    let code = textfile_code(reports, textfile);
    match format {
        Format::Json => {
            for r in reports.iter() {
                out(&format!(
                    "{}\n",
                    serde_json::to_string(&json!({ "clusters": [r] }))?
                ));
            }
        }
        Format::Html => out(&crate::output::timeline::page(
            reports,
            windows,
            chrono::Utc::now(),
        )),
        Format::Text => out(&table(reports)),
        Format::Prometheus => out(&super::expiry::prometheus(reports)),
    }
    Ok(code)
}
