//! `kmsctl check-expiry --all`: every AKS cluster with KMS that the credential can see, found
//! with one Azure Resource Graph query across its subscriptions (paged), checked in parallel
//! with a bound; one row each, and the worst status as the exit code.

use super::expiry::{ClusterReport, check_cluster, textfile_code};
use crate::azure::RemoteError;
use crate::azure::arm::ArmClient;
use crate::checks::expiry::{Status, Windows};
use crate::engine::context::Azure;
use crate::output::{Format, out};
use futures::StreamExt;
use serde_json::{Value, json};

const GRAPH_PATH: &str = "/providers/Microsoft.ResourceGraph/resources";
const GRAPH_API: &str = "2022-10-01";
const SUBSCRIPTIONS_API: &str = "2022-12-01";
/// The most subscriptions one Resource Graph request names.
const SUBSCRIPTIONS_PER_QUERY: usize = 1000;
/// Clusters checked at once: each check makes a few Key Vault calls.
const PARALLEL: usize = 8;

/// Clusters with KMS on (either experience); only what the check needs is projected.
pub const QUERY: &str = "Resources \
| where type =~ 'microsoft.containerservice/managedclusters' \
| where tobool(properties.securityProfile.azureKeyVaultKms.enabled) == true \
    or isnotempty(properties.securityProfile.kubernetesResourceObjectEncryptionProfile) \
| project id, name, resourceGroup, subscriptionId, properties \
| order by id asc";

/// Every KMS cluster in every subscription the credential can see.
pub async fn kms_clusters(arm: &ArmClient) -> Result<Vec<Value>, RemoteError> {
    let subs: Vec<String> = arm
        .list_all("/subscriptions", SUBSCRIPTIONS_API)
        .await?
        .iter()
        .filter_map(|s| s["subscriptionId"].as_str().map(str::to_string))
        .collect();
    let mut rows = Vec::new();
    for chunk in subs.chunks(SUBSCRIPTIONS_PER_QUERY) {
        let mut skip_token: Option<String> = None;
        loop {
            let mut options = json!({ "$top": 1000, "resultFormat": "objectArray" });
            if let Some(t) = &skip_token {
                options["$skipToken"] = json!(t);
            }
            let body = json!({ "subscriptions": chunk, "query": QUERY, "options": options });
            let page = arm.post_query(GRAPH_PATH, GRAPH_API, &body).await?.body;
            rows.extend(page["data"].as_array().cloned().unwrap_or_default());
            skip_token = page["$skipToken"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if skip_token.is_none() {
                break;
            }
        }
    }
    Ok(rows)
}

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
