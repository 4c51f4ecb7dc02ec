//! Renders a run's plan and preflight before it starts, and its report and summary when it ends
//! (what it shows while it runs: `events`).

use crate::checks::{Finding, Level};
use crate::engine::events::PassKind;
use crate::engine::runner::RunReport;
use crate::engine::summary::Summary;
use crate::playbook::Procedure;

pub fn render_findings(findings: &[Finding]) -> String {
    let mut out = String::from("preflight:\n");
    for f in findings {
        let mark = match f.level {
            Level::Pass => "ok    ",
            Level::Warn => "WARN  ",
            Level::Refuse => "REFUSE",
        };
        out.push_str(&format!("  {mark} {}: {}\n", f.check, f.message));
        if f.level != Level::Pass
            && let Some(fix) = &f.fix
        {
            out.push_str(&format!("         fix: {fix}\n"));
        }
    }
    out
}

pub fn render_plan(p: &Procedure, flag: impl Fn(&str) -> bool) -> String {
    let mut out = format!("plan: {} ({})\n", p.name, p.description);
    for (i, s) in p.steps.iter().enumerate() {
        let skipped = s.condition().is_some_and(|c| !flag(c));
        out.push_str(&format!(
            "  {:>2}. {}{}\n",
            i + 1,
            s.describe(),
            if skipped {
                " (skipped: not asked for)"
            } else {
                ""
            }
        ));
    }
    out
}

pub fn render_report(r: &RunReport) -> String {
    let mut out = format!("run {} ({}): {}\n", r.run_id, r.procedure, r.status);
    let labels: Vec<&str> = r
        .summary
        .passes
        .iter()
        .filter(|p| p.kind == PassKind::Reencryption)
        .map(|p| p.label.as_str())
        .collect();
    for (i, s) in r.reencrypt.iter().enumerate() {
        match labels.get(i).filter(|l| !l.is_empty()) {
            Some(l) => out.push_str(&format!("re-encryption ({l}), by namespace:\n")),
            None => out.push_str("re-encryption, by namespace:\n"),
        }
        out.push_str(&super::render_reencrypt(s));
    }
    out.push_str(&render_summary(&r.summary));
    if let Some(e) = &r.error {
        out.push_str(&format!("error: {e}\n"));
        out.push_str(&format!(
            "journal: {} (continue with `kmsctl resume`)\n",
            r.journal
        ));
    }
    out
}

/// The closing summary: what changed, what proved each switch, the passes, the key versions.
pub fn render_summary(s: &Summary) -> String {
    let mut out = format!(
        "\nsummary: run {} ({}) {} in {}\n",
        s.run_id,
        s.procedure,
        s.status,
        super::events::duration(s.seconds.round() as u64)
    );
    let labelled = |l: &str| {
        if l.is_empty() {
            String::new()
        } else {
            format!(" ({l})")
        }
    };
    if s.changed.is_empty() {
        out.push_str("  changed: nothing\n");
    } else {
        out.push_str("  changed:\n");
        for c in &s.changed {
            out.push_str(&format!("    - {c}\n"));
        }
    }
    for p in &s.switches {
        out.push_str(&format!(
            "  key switch{}: every API server replica writes {} — proven by {} after {:.0}s: {}\n",
            labelled(&p.label),
            p.to.as_deref()
                .map_or("without KMS".to_string(), |k| format!("with {k}")),
            match p.evidence.as_str() {
                "attributed" => "each replica's own writes",
                "time" => "the canary's quiet time",
                "settled" => "the replicas' agreement",
                "ledger" => "the key ledger",
                other => other,
            },
            p.waited_seconds,
            p.detail
        ));
    }
    for p in &s.passes {
        out.push_str(&match p.kind {
            PassKind::Reencryption => format!(
                "  re-encryption{}: {} rewritten, {} unchanged, {} deleted meanwhile, {} failed\n",
                labelled(&p.label),
                p.rewritten,
                p.unchanged,
                p.deleted,
                p.failed
            ),
            PassKind::Verification => format!(
                "  verification{}: {} rewritten, {} unchanged over fresh connections{}\n",
                labelled(&p.label),
                p.rewritten,
                p.unchanged,
                match p.rounds {
                    Some(r) if r > 1 => format!(" (after {r} rounds)"),
                    _ => String::new(),
                }
            ),
        });
    }
    match (&s.keys, &s.keys_error) {
        (Some(k), _) => {
            out.push_str(&format!(
                "  key version in use: {}\n",
                k.in_use.as_deref().unwrap_or("none (KMS off)")
            ));
            if k.must_stay_alive.is_empty() {
                out.push_str("  must stay alive: none\n");
            } else {
                out.push_str("  must stay alive (enabled and unexpired):\n");
                for l in &k.must_stay_alive {
                    out.push_str(&format!("    - {}: {}\n", l.key_id, l.until));
                }
            }
            if k.retirable_now.is_empty() {
                out.push_str("  retirable now: none\n");
            } else {
                out.push_str(
                    "  retirable now (every Secret re-encrypted away, not needed by KMS):\n",
                );
                for id in &k.retirable_now {
                    out.push_str(&format!("    - {id}\n"));
                }
            }
            for l in &k.retired {
                out.push_str(&format!("  retired: {} ({})\n", l.key_id, l.until));
            }
        }
        (None, e) => out.push_str(&format!(
            "  key versions: the key ledger could not be read ({}); `kmsctl status` shows them\n",
            e.as_deref().unwrap_or("?")
        )),
    }
    if let Some(n) = &s.next {
        out.push_str(&format!("  next: {n}\n"));
    }
    out
}
