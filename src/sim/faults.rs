//! Fault injection: rules that match a request by method, host and path pattern and answer it
//! with a status code, extra latency, a dropped connection, or a long-running operation that
//! ends Failed. Loaded with `sim serve --faults FILE` (YAML or JSON) or added at run time with
//! `kmsctl sim fault`.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultRule {
    /// HTTP method, or any.
    #[serde(default)]
    pub method: Option<String>,
    /// Path pattern: `*` matches one segment, `**` any number; a trailing `**` the rest.
    pub path: String,
    /// Host suffix to match (e.g. `vault.azure.net`), or any.
    #[serde(default)]
    pub host: Option<String>,
    /// Answer with this status (with `Retry-After: 1` for 429 and 503).
    #[serde(default)]
    pub status: Option<u16>,
    /// How many requests this rule hits; unlimited when absent.
    #[serde(default)]
    pub count: Option<u64>,
    /// Chance of hitting a matching request (0..1); every one when absent.
    #[serde(default)]
    pub probability: Option<f64>,
    /// Added latency, in milliseconds.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Close the connection without an answer.
    #[serde(default)]
    pub drop: bool,
    /// For a cluster PUT: the long-running operation it starts ends Failed.
    #[serde(default)]
    pub fail_operation: bool,
    #[serde(skip)]
    pub hits: std::sync::Arc<AtomicU64>,
}

#[derive(Debug, Default, Clone)]
pub struct FaultAction {
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub drop: bool,
    pub fail_operation: bool,
}

pub fn path_matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    fn go(p: &[&str], s: &[&str]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(&"**"), _) => (0..=s.len()).any(|i| go(&p[1..], &s[i..])),
            (Some(x), Some(y)) if *x == "*" || x.eq_ignore_ascii_case(y) => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(&pat, &segs)
}

impl FaultRule {
    fn matches(&self, method: &str, host: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.host.as_deref().is_none_or(|h| host.ends_with(h))
            && path_matches(&self.path, path)
    }
}

/// Applies the first matching rule with hits left; combines latency of all matching rules.
pub fn decide(
    rules: &[FaultRule],
    method: &str,
    host: &str,
    path: &str,
    mut roll: impl FnMut() -> f64,
) -> FaultAction {
    let mut action = FaultAction::default();
    for r in rules.iter().filter(|r| r.matches(method, host, path)) {
        // Each rule draws on its own, so rules with different probabilities all fire.
        if r.probability.is_some_and(|p| roll() >= p) {
            continue;
        }
        let n = r.hits.fetch_add(1, Ordering::Relaxed);
        if r.count.is_some_and(|c| n >= c) {
            continue;
        }
        action.latency_ms += r.latency_ms.unwrap_or(0);
        action.status = action.status.or(r.status);
        action.drop |= r.drop;
        action.fail_operation |= r.fail_operation;
    }
    action
}

pub fn load(text: &str) -> Result<Vec<FaultRule>, String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Doc {
        List(Vec<FaultRule>),
        Wrapped { rules: Vec<FaultRule> },
    }
    match serde_saphyr::from_str::<Doc>(text).map_err(|e| e.to_string())? {
        Doc::List(l) | Doc::Wrapped { rules: l } => Ok(l),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_counts() {
        assert!(path_matches(
            "/api/v1/namespaces/*/secrets/*",
            "/api/v1/namespaces/a/secrets/b"
        ));
        assert!(!path_matches(
            "/api/v1/namespaces/*/secrets/*",
            "/api/v1/namespaces/a/secrets"
        ));
        assert!(path_matches(
            "/subscriptions/**",
            "/subscriptions/x/resourceGroups/y"
        ));
        let rules = load("- method: PUT\n  path: /api/**\n  status: 500\n  count: 1\n").unwrap();
        assert_eq!(
            decide(&rules, "PUT", "h", "/api/v1", || 0.5).status,
            Some(500)
        );
        assert_eq!(decide(&rules, "PUT", "h", "/api/v1", || 0.5).status, None);
        assert_eq!(decide(&rules, "GET", "h", "/api/v1", || 0.5).status, None);
    }
}
