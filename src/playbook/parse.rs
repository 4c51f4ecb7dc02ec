//! Reading a playbook: YAML into a `Procedure`, with every error placed at its file:line:column:
//! syntax, unknown fields on any step, parameters, then the rules over the step list.

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
        let keys: Vec<String> = s
            .value
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let step: Step = serde_json::from_value(s.value).map_err(|e| {
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or_default();
            let at = quoted(message).map_or(at, |t| locate(text, at, t));
            invalid(file, at, message)
        })?;
        // serde's deny_unknown_fields does not reach the variants without fields of an
        // internally tagged enum: `- step: rotate-key` with `when: retireOld` would parse,
        // and run unconditionally.
        let unknown = keys
            .iter()
            .filter(|k| *k != "step" && !step.fields().contains(&k.as_str()))
            .map(|k| (locate(text, at, &format!("{k}:")), k))
            .min();
        if let Some((place, key)) = unknown {
            let takes = match step.fields() {
                [] => "it takes none".to_string(),
                fields => format!("it takes `{}`", fields.join("`, `")),
            };
            return Err(invalid(
                file,
                place,
                format!("unknown field `{key}` on step {}: {takes}", step.name()),
            ));
        }
        steps.push(step);
        places.push(at);
    }
    let param_place = |key: &str| {
        let token = format!("{key}:");
        text.lines()
            .enumerate()
            .find_map(|(i, l)| l.find(&token).map(|c| (i as u32 + 1, c as u32 + 1)))
            .unwrap_or((1, 1))
    };
    for (key, value) in &raw.params {
        params::check_default(key, value).map_err(|m| invalid(file, param_place(key), m))?;
    }
    let p = Procedure {
        name: raw.name,
        description: raw.description,
        intent: raw.intent,
        params: raw.params,
        steps,
    };
    for key in p.params.keys() {
        params::check_used(&p, key).map_err(|m| invalid(file, param_place(key), m))?;
    }
    super::rules::check(&p).map_err(|v| {
        let at = places.get(v.index).copied().unwrap_or((1, 1));
        invalid(file, at, v.message)
    })?;
    Ok(p)
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
    fn unknown_fields_are_refused_on_every_step() {
        let when = "name: x\ndescription: d\nintent: rotate\nsteps:\n  - step: preflight\n  - step: plant-canary\n  - step: rotate-key\n    when: retireOld\n";
        assert_eq!(
            err(when),
            "p.yaml:8:5: unknown field `when` on step rotate-key: it takes none"
        );
        let typo = "name: x\ndescription: d\nintent: rotate\nsteps:\n  - step: preflight\n  - {step: reencrypt, namespace: a}\n";
        assert_eq!(
            err(typo),
            "p.yaml:6:23: unknown field `namespace` on step reencrypt: it takes none"
        );
        // Where a step takes fields, serde names them.
        let retire = "name: x\ndescription: d\nintent: rotate\nsteps:\n  - step: preflight\n  - step: retire-oldest\n    if: retireOld\n";
        let e = err(retire);
        assert!(e.starts_with("p.yaml:7:5: unknown field `if`"), "{e}");
    }

    #[test]
    fn rules_and_unused_parameters_point_at_their_line() {
        // Sequence 6 of the proofs script: KMS off, proven, nothing rewritten.
        let no_rewrite = "name: x\ndescription: d\nintent: disable\nsteps:\n  - step: preflight\n  - step: plant-canary\n  - step: update-kms\n    enabled: false\n  - step: verify-kms\n  - step: prove-key-switch\n";
        assert!(
            err(no_rewrite).starts_with(
                "p.yaml:7:5: step 3 (update-kms enabled=false) is not followed by a whole-cluster reencrypt before the end"
            ),
            "{}",
            err(no_rewrite)
        );
        let unused = "name: x\ndescription: d\nintent: disable\nparams:\n  marginDays: 3\n  keyId: https://v.vault.azure.net/keys/k/1\nsteps:\n  - step: reencrypt\n";
        assert_eq!(
            err(unused),
            "p.yaml:6:3: the x playbook (intent disable) does not use `keyId`; it uses: marginDays, switchTimeoutSeconds, kmsStatusPeriodSeconds"
        );
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
