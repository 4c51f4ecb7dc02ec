//! Which clusters a fleet command acts on: every AKS cluster with KMS that the credential can
//! see, found with one Azure Resource Graph query across its subscriptions (paged), as
//! `check-expiry --all` finds them, narrowed only by explicit flags (never by the environment's
//! single-cluster variables).

use crate::azure::RemoteError;
use crate::azure::arm::ArmClient;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const GRAPH_PATH: &str = "/providers/Microsoft.ResourceGraph/resources";
const GRAPH_API: &str = "2022-10-01";
const SUBSCRIPTIONS_API: &str = "2022-12-01";
/// The most subscriptions one Resource Graph request names.
const SUBSCRIPTIONS_PER_QUERY: usize = 1000;

/// Clusters with KMS on (either experience); only what the callers need is projected.
pub const QUERY: &str = "Resources \
| where type =~ 'microsoft.containerservice/managedclusters' \
| where tobool(properties.securityProfile.azureKeyVaultKms.enabled) == true \
    or isnotempty(properties.securityProfile.kubernetesResourceObjectEncryptionProfile) \
| project id, name, resourceGroup, subscriptionId, tags, properties \
| order by id asc";

/// Every KMS cluster in every subscription the credential can see (all of them when
/// `subscriptions` is empty), with `filter` (Resource Graph KQL: `| where ...` lines) applied
/// by Resource Graph before the projection.
pub async fn kms_clusters_where(
    arm: &ArmClient,
    subscriptions: &[String],
    filter: &str,
) -> Result<Vec<Value>, RemoteError> {
    let subs: Vec<String> = if subscriptions.is_empty() {
        arm.list_all("/subscriptions", SUBSCRIPTIONS_API)
            .await?
            .iter()
            .filter_map(|s| s["subscriptionId"].as_str().map(str::to_string))
            .collect()
    } else {
        subscriptions.to_vec()
    };
    let query = match filter.is_empty() {
        true => QUERY.to_string(),
        false => QUERY.replacen("| project", &format!("{filter} | project"), 1),
    };
    let mut rows = Vec::new();
    for chunk in subs.chunks(SUBSCRIPTIONS_PER_QUERY) {
        let mut skip_token: Option<String> = None;
        loop {
            let mut options = json!({ "$top": 1000, "resultFormat": "objectArray" });
            if let Some(t) = &skip_token {
                options["$skipToken"] = json!(t);
            }
            let body = json!({ "subscriptions": chunk, "query": query, "options": options });
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

/// Every KMS cluster in every subscription the credential can see.
pub async fn kms_clusters(arm: &ArmClient) -> Result<Vec<Value>, RemoteError> {
    kms_clusters_where(arm, &[], "").await
}

/// What narrows the fleet (all from flags).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_groups: Vec<String>,
    /// `key=value` pairs; every one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, String)>,
    /// A Resource Graph filter (`where` clause body), appended to the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub where_: Option<String>,
    /// Only these clusters (ARM ids, from `--clusters FILE`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

fn kql_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Filter {
    /// The `| where` lines Resource Graph applies.
    pub fn kql(&self) -> String {
        let mut out = Vec::new();
        if !self.resource_groups.is_empty() {
            let any: Vec<String> = self
                .resource_groups
                .iter()
                .map(|g| format!("resourceGroup =~ {}", kql_string(g)))
                .collect();
            out.push(format!("| where {}", any.join(" or ")));
        }
        for (k, v) in &self.tags {
            out.push(format!(
                "| where tostring(tags[{}]) =~ {}",
                kql_string(k),
                kql_string(v)
            ));
        }
        if let Some(w) = &self.where_ {
            out.push(format!("| where {w}"));
        }
        out.join(" ")
    }

    /// Whether a row passes the flags kmsctl can judge itself (Resource Graph applied them
    /// already; a row is checked again so a filter is never silently wider than asked).
    pub fn admits(&self, c: &Cluster) -> bool {
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        (self.subscriptions.is_empty() || self.subscriptions.iter().any(|s| eq(s, &c.subscription)))
            && (self.resource_groups.is_empty()
                || self
                    .resource_groups
                    .iter()
                    .any(|g| eq(g, &c.resource_group)))
            && self
                .tags
                .iter()
                .all(|(k, v)| c.tags.get(k).is_some_and(|t| eq(t, v)))
            && (self.ids.is_empty() || self.ids.iter().any(|i| eq(i, &c.id)))
    }
}

/// One cluster of the fleet, as Resource Graph lists it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub id: String,
    pub name: String,
    pub resource_group: String,
    pub subscription: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
    /// Why the fleet does not act on it (AKS's platform-managed key rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<String>,
    /// The key version in use when it was listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// Parts of an ARM id: `/subscriptions/S/resourceGroups/G/providers/.../managedClusters/N`.
pub fn parse_id(id: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = id.trim().trim_matches('/').split('/').collect();
    let find = |k: &str| {
        parts
            .iter()
            .position(|p| p.eq_ignore_ascii_case(k))
            .and_then(|i| parts.get(i + 1))
            .map(|s| s.to_string())
    };
    Some((
        find("subscriptions")?,
        find("resourceGroups")?,
        find("managedClusters")?,
    ))
}

impl Cluster {
    pub fn from_row(row: &Value) -> Option<Cluster> {
        let id = row["id"].as_str()?.to_string();
        let (sub, rg, name) = parse_id(&id)?;
        let sp = &row["properties"]["securityProfile"];
        let platform = sp["kubernetesResourceObjectEncryptionProfile"].is_object();
        let tags = row["tags"]
            .as_object()
            .map(|t| {
                t.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Some(Cluster {
            name: row["name"].as_str().map(str::to_string).unwrap_or(name),
            resource_group: row["resourceGroup"].as_str().map(str::to_string).unwrap_or(rg),
            subscription: row["subscriptionId"].as_str().map(str::to_string).unwrap_or(sub),
            id,
            tags,
            skip: platform.then(|| "platform-managed key rotation: AKS rotates its key itself (kubernetesResourceObjectEncryptionProfile); kmsctl rotate is for versioned key ids".to_string()),
            key_id: sp["azureKeyVaultKms"]["keyId"].as_str().map(str::to_string),
        })
    }
}

/// `--clusters FILE`: one ARM id per line; blank lines and `#` comments are ignored.
pub fn read_ids(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if parse_id(line).is_none() {
            return Err(format!(
                "line {}: '{line}' is not a managed cluster's ARM id (/subscriptions/S/resourceGroups/G/providers/Microsoft.ContainerService/managedClusters/N)",
                n + 1
            ));
        }
        out.push(line.to_string());
    }
    Ok(out)
}

/// The fleet: the rows that pass `filter`, sorted by id (lowercased), one per id.
pub fn clusters(rows: &[Value], filter: &Filter) -> Vec<Cluster> {
    let mut out: Vec<Cluster> = rows
        .iter()
        .filter_map(Cluster::from_row)
        .filter(|c| filter.admits(c))
        .collect();
    out.sort_by_key(|c| c.id.to_ascii_lowercase());
    out.dedup_by(|a, b| a.id.eq_ignore_ascii_case(&b.id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sub: &str, rg: &str, name: &str, platform: bool) -> Value {
        let mut sp = json!({ "azureKeyVaultKms": { "enabled": true, "keyId": "https://v.vault.azure.net/keys/k/1" } });
        if platform {
            sp["kubernetesResourceObjectEncryptionProfile"] = json!({});
        }
        json!({ "id": format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{name}"),
                "name": name, "resourceGroup": rg, "subscriptionId": sub, "tags": { "env": "prod" },
                "properties": { "securityProfile": sp } })
    }

    #[test]
    fn flags_narrow_the_fleet_and_platform_managed_clusters_are_marked_skipped() {
        let rows = vec![
            row("s1", "rg-a", "b", false),
            row("s2", "rg-b", "a", true),
            row("s1", "rg-b", "c", false),
        ];
        let all = clusters(&rows, &Filter::default());
        assert_eq!(all.len(), 3);
        assert!(all[2].skip.is_some() && all[0].skip.is_none());
        let f = Filter {
            subscriptions: vec!["S1".into()],
            resource_groups: vec!["RG-B".into()],
            ..Default::default()
        };
        let some = clusters(&rows, &f);
        assert_eq!(some.len(), 1);
        assert_eq!(some[0].name, "c");
        let f = Filter {
            tags: vec![("env".into(), "dev".into())],
            ..Default::default()
        };
        assert!(clusters(&rows, &f).is_empty());
    }

    #[test]
    fn the_filter_becomes_where_lines_before_the_projection() {
        let f = Filter {
            resource_groups: vec!["rg-a".into(), "rg'b".into()],
            tags: vec![("env".into(), "prod".into())],
            where_: Some("location =~ 'westeurope'".into()),
            ..Default::default()
        };
        let k = f.kql();
        assert_eq!(
            k,
            "| where resourceGroup =~ 'rg-a' or resourceGroup =~ 'rg\\'b' | where tostring(tags['env']) =~ 'prod' | where location =~ 'westeurope'"
        );
        let q = QUERY.replacen("| project", &format!("{k} | project"), 1);
        assert!(q.find("westeurope").unwrap() < q.find("| project").unwrap());
    }

    #[test]
    fn a_clusters_file_holds_arm_ids() {
        let ids = read_ids("# prod\n/subscriptions/s/resourceGroups/g/providers/Microsoft.ContainerService/managedClusters/n\n\n").unwrap();
        assert_eq!(ids.len(), 1);
        assert!(read_ids("aks-1\n").unwrap_err().contains("line 1"));
    }
}
