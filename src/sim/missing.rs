//! What Resource Manager answers for a name it does not have, in the service's own shapes: a
//! resource group that does not exist is `ResourceGroupNotFound` (whatever resource is asked
//! for in it), a resource missing from an existing group is `ResourceNotFound`. A twin that
//! answered for any name would let a wrong `-g`/`-n` through.

use super::http::{Resp, arm_error};
use super::world::World;
use hyper::StatusCode;
use serde_json::Value;

/// The resource groups of `subscription` (lower case): those the twin's resources live in, and
/// the cluster's node resource group.
pub fn resource_groups(w: &World, subscription: &str) -> Vec<String> {
    let mut ids: Vec<&Value> = vec![&w.cluster["id"], &w.vault["id"]];
    ids.extend(w.fleet.iter().map(|c| &c["id"]));
    let mut rgs: Vec<String> = ids
        .iter()
        .filter_map(|id| {
            let parts: Vec<&str> = id.as_str()?.split('/').collect();
            (parts.get(2)?.eq_ignore_ascii_case(subscription)
                && parts.get(3)?.eq_ignore_ascii_case("resourceGroups"))
            .then(|| parts.get(4).map(|rg| rg.to_ascii_lowercase()))
            .flatten()
        })
        .collect();
    if subscription.eq_ignore_ascii_case(&w.ids.subscription)
        && let Some(node) = w.cluster["properties"]["nodeResourceGroup"].as_str()
    {
        rgs.push(node.to_ascii_lowercase());
    }
    rgs.sort();
    rgs.dedup();
    rgs
}

/// The 404 for a group that does not exist, else None.
pub fn group_missing(w: &World, subscription: &str, rg: &str) -> Option<Resp> {
    (!resource_groups(w, subscription).contains(&rg.to_ascii_lowercase())).then(|| {
        arm_error(
            StatusCode::NOT_FOUND,
            "ResourceGroupNotFound",
            &format!("Resource group '{rg}' could not be found."),
        )
    })
}

/// The 404 for `kind/name` (e.g. `Microsoft.ContainerService/managedClusters`) in `rg`: the
/// group's own 404 when the group does not exist.
pub fn resource_missing(w: &World, subscription: &str, rg: &str, kind: &str, name: &str) -> Resp {
    group_missing(w, subscription, rg).unwrap_or_else(|| {
        arm_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!(
                "The Resource '{kind}/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
            ),
        )
    })
}
