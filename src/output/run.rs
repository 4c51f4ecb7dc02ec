//! Renders a run as it happens (step lines and progress on stderr) and when it ends.

use super::progress::{ReencryptProgress, step_spinner};
use crate::checks::{Finding, Level};
use crate::engine::RunObserver;
use crate::engine::runner::RunReport;
use crate::playbook::Procedure;
use indicatif::ProgressBar;
use std::sync::Mutex;

pub struct RunDisplay {
    reencrypt: ReencryptProgress,
    spinner: Mutex<Option<ProgressBar>>,
    /// The last plain status line, so a repeated one (each poll of an operation) prints once.
    last_status: Mutex<String>,
}

impl Default for RunDisplay {
    fn default() -> Self {
        RunDisplay {
            reencrypt: ReencryptProgress::new(),
            spinner: Mutex::new(None),
            last_status: Mutex::new(String::new()),
        }
    }
}

impl RunDisplay {
    fn clear(&self) {
        if let Some(s) = self
            .spinner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            s.finish_and_clear();
        }
    }
    pub fn finish(&self) {
        self.clear();
        self.reencrypt.finish();
    }
}

impl RunObserver for RunDisplay {
    fn step_started(&self, index: usize, total: usize, name: &str) {
        self.clear();
        eprintln!("[{}/{total}] {name}", index + 1);
        *self.spinner.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(step_spinner(name.to_string()));
    }
    fn step_status(&self, message: &str) {
        let spinner = self.spinner.lock().unwrap_or_else(|e| e.into_inner());
        match spinner.as_ref() {
            Some(s) if !s.is_hidden() => s.set_message(message.to_string()),
            // No terminal (or the spinner made way for the bars): a plain line, once.
            _ => {
                let mut last = self.last_status.lock().unwrap_or_else(|e| e.into_inner());
                if *last != message {
                    eprintln!("      {message}");
                    *last = message.to_string();
                }
            }
        }
        tracing::info!("{message}");
    }
    fn step_finished(&self, _index: usize, name: &str, detail: &str) {
        self.clear();
        self.reencrypt.finish();
        eprintln!(
            "      {name} done{}{detail}",
            if detail.is_empty() { "" } else { ": " }
        );
    }
    fn step_skipped(&self, index: usize, name: &str, reason: &str) {
        eprintln!("[{}] {name} skipped ({reason})", index + 1);
    }
    fn reencrypt(&self) -> &dyn crate::reencrypt::Observer {
        // The step's spinner would fight the re-encryption bars for the terminal.
        self.clear();
        &self.reencrypt
    }
}

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
    for s in &r.reencrypt {
        out.push_str(&super::render_reencrypt(s));
    }
    if let Some(e) = &r.error {
        out.push_str(&format!("error: {e}\n"));
        out.push_str(&format!(
            "journal: {} (continue with `kmsctl resume`)\n",
            r.journal
        ));
    }
    out
}
