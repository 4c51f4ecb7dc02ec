//! `kmsctl doctor`: what the troubleshooting guides (shared/domain.md §4–6) tell people to check
//! by hand, done in one read-only pass. Each finding has a severity, the cause (with the guide's
//! number where it has one), the evidence (the matched line and where it came from, secrets
//! redacted) and the remedy.

pub mod identity;
pub mod kms;
pub mod redact;
pub mod secrets_provider;
pub mod signatures;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub cause: String,
    /// The troubleshooting guide's cause number (domain.md §5), where it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guide: Option<&'static str>,
    pub evidence: String,
    pub remedy: String,
}

impl Finding {
    pub fn new(
        severity: Severity,
        cause: impl Into<String>,
        evidence: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Self {
        Finding {
            severity,
            cause: cause.into(),
            guide: None,
            evidence: redact::redact(&evidence.into()),
            remedy: remedy.into(),
        }
    }

    pub fn info(cause: impl Into<String>, evidence: impl Into<String>) -> Self {
        Finding::new(Severity::Info, cause, evidence, "nothing to do")
    }
}

/// Errors first, then warnings, then information; the guide's order within each.
pub fn sorted(mut findings: Vec<Finding>) -> Vec<Finding> {
    findings.sort_by_key(|f| f.severity);
    findings
}

pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let label = match f.severity {
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Info => "INFO",
        };
        let guide = f.guide.map(|g| format!(" [cause {g}]")).unwrap_or_default();
        s.push_str(&format!("{label}{guide} {}\n", f.cause));
        s.push_str(&format!("  evidence: {}\n", f.evidence));
        if f.severity != Severity::Info {
            s.push_str(&format!("  remedy: {}\n", f.remedy));
        }
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    s.push_str(&format!("{errors} error(s), {warnings} warning(s)\n"));
    s
}
