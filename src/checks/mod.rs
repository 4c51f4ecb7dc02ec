//! Checks: preflight rules (every documented limit that can be checked before a change) as pure
//! functions over facts gathered from ARM, Key Vault and the cluster.

pub mod expiry;
pub mod facts;
pub mod preflight;
pub mod reach;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Pass,
    Warn,
    Refuse,
}

/// One check's result: what was found and, when it is a problem, how to fix it.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn pass(check: &'static str, message: impl Into<String>) -> Self {
        Finding {
            check,
            level: Level::Pass,
            message: message.into(),
            fix: None,
        }
    }
    pub fn warn(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            check,
            level: Level::Warn,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
    pub fn refuse(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            check,
            level: Level::Refuse,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

pub fn refused(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.level == Level::Refuse)
}
