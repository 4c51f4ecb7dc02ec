//! Reading a playbook: YAML into a `Procedure`, with every error placed at its file:line:column,
//! then the orders that would be unsafe whatever the cluster refused.

use super::{Procedure, Step, params};
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum PlaybookError {
    #[error(
        "no built-in playbook named '{0}' (built-in: enable, disable, rotate, rotate-twice, reencrypt, vault-mode, migrate-v2)"
    )]
    Unknown(String),
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: u32,
        column: u32,
        message: String,
    },
}

/// The document as written, each step kept with where it starts.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    description: String,
    intent: super::Intent,
    #[serde(default)]
    params: BTreeMap<String, serde_json::Value>,
    steps: Vec<Spanned<serde_json::Value>>,
}

fn invalid(file: &str, (line, column): (u32, u32), message: impl Into<String>) -> PlaybookError {
    PlaybookError::Invalid {
        file: file.to_string(),
        line,
        column,
        message: message.into(),
    }
}

/// Where `token` first appears as a word at or after `from` (a step's start): the offending
/// key or value of an unknown field or variant, rather than the step's first line.
fn locate(text: &str, from: (u32, u32), token: &str) -> (u32, u32) {
    for (i, line) in text
        .lines()
        .enumerate()
        .skip(from.0.saturating_sub(1) as usize)
    {
        if let Some(c) = line.find(token) {
            return (i as u32 + 1, c as u32 + 1);
        }
        // The step ends where a line starts at or left of the step's own indentation.
        let indent = line.len() - line.trim_start().len();
        if i as u32 + 1 > from.0 && !line.trim().is_empty() && indent < from.1 as usize {
            break;
        }
    }
    from
}

/// The quoted name in serde's "unknown variant `x`" / "unknown field `x`" messages.
fn quoted(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

pub fn parse(file: &str, text: &str) -> Result<Procedure, PlaybookError> {
    let raw: Raw = serde_saphyr::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| (l.line() as u32, l.column() as u32))
            .unwrap_or((1, 1));
        let first = e.to_string();
        let first = first.lines().next().unwrap_or_default();
        // saphyr starts its message with its own "error: line L column C: ".
        let message = first
            .split_once(": ")
            .and_then(|(_, rest)| rest.split_once(": ").map(|(_, m)| m))
            .filter(|_| first.starts_with("error: line"))
            .unwrap_or(first);
        invalid(file, at, message)
    })?;
    let mut steps = Vec::with_capacity(raw.steps.len());
    let mut places = Vec::with_capacity(raw.steps.len());
    for s in raw.steps {
        let at = (s.referenced.line() as u32, s.referenced.column() as u32);
        let step: Step = serde_json::from_value(s.value).map_err(|e| {
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or_default();
            let at = quoted(message).map_or(at, |t| locate(text, at, t));
            invalid(file, at, message)
        })?;
        steps.push(step);
        places.push(at);
    }
    for (key, value) in &raw.params {
        params::check_default(key, value).map_err(|m| {
            let token = format!("{key}:");
            let at = text
                .lines()
                .enumerate()
                .find_map(|(i, l)| l.find(&token).map(|c| (i as u32 + 1, c as u32 + 1)))
                .unwrap_or((1, 1));
            invalid(file, at, m)
        })?;
    }
    let p = Procedure {
        name: raw.name,
        description: raw.description,
        intent: raw.intent,
        params: raw.params,
        steps,
    };
    validate(&p).map_err(|(index, message)| {
        let at = places.get(index).copied().unwrap_or((1, 1));
        invalid(file, at, message)
    })?;
    Ok(p)
}

/// Orders that would be unsafe whatever the cluster: a change without preflight first, a key
/// switch without a canary planted before it, or re-encryption before the switch is proven.
/// Errors name the step (by index) they are about.
fn validate(p: &Procedure) -> Result<(), (usize, String)> {
    if p.steps.is_empty() {
        return Err((0, "a playbook needs at least one step".into()));
    }
    if p.steps.iter().any(Step::changes) && p.steps.first() != Some(&Step::Preflight) {
        return Err((
            0,
            "a procedure that changes anything must start with preflight".into(),
        ));
    }
    let mut planted = false;
    let mut switched = false;
    for (i, s) in p.steps.iter().enumerate() {
        match s {
            Step::Preflight if i > 0 => {
                return Err((i, "preflight may only be the first step".into()));
            }
            Step::PlantCanary => planted = true,
            Step::UpdateKms { .. } if !planted => {
                return Err((i, "update-kms needs a plant-canary step before it".into()));
            }
            Step::UpdateKms { .. } if switched => {
                return Err((
                    i,
                    "a second update-kms needs prove-key-switch (and a plant-canary) after the first"
                        .into(),
                ));
            }
            Step::UpdateKms { .. } => switched = true,
            Step::VerifyKms { .. } if !switched => {
                return Err((
                    i,
                    "verify-kms checks what update-kms asked for: put it right after update-kms"
                        .into(),
                ));
            }
            Step::ProveKeySwitch => {
                planted = false;
                switched = false;
            }
            Step::Reencrypt | Step::SetVaultNetwork | Step::UpgradeKubernetes if switched => {
                return Err((i, format!("{} must come after prove-key-switch", s.name())));
            }
            Step::RetireOldest { when: Some(w) } if !params::is_flag(w) => {
                return Err((
                    i,
                    format!(
                        "`when: {w}` names no yes/no parameter (known: {})",
                        params::FLAGS.join(", ")
                    ),
                ));
            }
            _ => {}
        }
    }
    if switched {
        return Err((
            p.steps.len() - 1,
            "the playbook ends before the key switch is proven: add prove-key-switch and reencrypt"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse("p.yaml", text).unwrap_err().to_string()
    }

    #[test]
    fn unsafe_orders_are_refused_at_their_step() {
        let bad = "name: x\ndescription: d\nintent: rotate\nsteps:\n  - step: preflight\n  - step: plant-canary\n  - step: update-kms\n    enabled: true\n  - step: reencrypt\n";
        assert_eq!(
            err(bad),
            "p.yaml:9:5: reencrypt must come after prove-key-switch"
        );
        let no_preflight =
            "name: x\ndescription: d\nintent: rotate\nsteps:\n  - step: rotate-key\n";
        assert!(err(no_preflight).starts_with("p.yaml:5:5: a procedure that changes"));
    }

    #[test]
    fn typos_get_line_and_column() {
        let typo = "name: x\ndescription: d\nintent: disable\nsteps:\n  - step: preflight\n  - step: plant-canary\n  - step: update-kms\n    enabeld: false\n";
        let e = err(typo);
        assert!(e.starts_with("p.yaml:8:5: unknown field `enabeld`"), "{e}");
        let step = "name: x\ndescription: d\nintent: disable\nsteps:\n  - step: preflight\n  - step: plant-canery\n";
        let e = err(step);
        assert!(
            e.starts_with("p.yaml:6:11: unknown variant `plant-canery`"),
            "{e}"
        );
        let top = "name: x\ndescription: d\nintnet: disable\nsteps: []\n";
        assert!(
            err(top).starts_with("p.yaml:3:1: unknown field `intnet`"),
            "{}",
            err(top)
        );
        let syntax = "name: x\nsteps:\n  - step: preflight\n   - bad: [\n";
        assert!(err(syntax).starts_with("p.yaml:4:4: "), "{}", err(syntax));
        let param = "name: x\ndescription: d\nintent: migrate-v2\nparams:\n  targetVersoin: \"1.28\"\nsteps:\n  - step: reencrypt\n";
        assert!(
            err(param).starts_with("p.yaml:5:3: unknown parameter `targetVersoin`"),
            "{}",
            err(param)
        );
    }
}
