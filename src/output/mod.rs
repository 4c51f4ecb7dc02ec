//! Everything kmsctl shows: progress on stderr (indicatif, hidden when stderr is not a
//! terminal), human summaries, and machine-readable JSON on stdout (`-o json`).

pub mod events;
pub mod fleet;
pub mod run;
#[cfg(test)]
mod snapshots;
pub mod timeline;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
    /// Prometheus text exposition (check-expiry only: offered there, hidden elsewhere).
    #[value(hide = true)]
    Prometheus,
    /// One self-contained HTML page (check-expiry --all only).
    #[value(hide = true)]
    Html,
}

/// Where what a command says goes instead of the terminal (a fleet's cluster runs: their
/// lines go to that cluster's view, and their text is never sprayed over the fleet's).
pub type Route = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

tokio::task_local! {
    pub static ROUTE: Route;
}

/// Sends `text` where the task's route says, if it has one.
fn routed(text: &str) -> bool {
    ROUTE
        .try_with(|r| {
            for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                r(line)
            }
        })
        .is_ok()
}

/// Writes to stdout. A reader that went away (`kmsctl rotate | head -3`) is not an error
/// worth a panic: what it did not read is lost, the run itself goes on and ends as it would.
pub fn out(text: &str) {
    use std::io::Write;
    if routed(text) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// A line on stderr: what a command says beside its output (warnings, what it did). Every
/// module but the reporters and main writes to the terminal through this or `out`.
pub fn say(line: &str) {
    use std::io::Write;
    if routed(line) {
        return;
    }
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The same without a line end (a prompt).
pub fn ask(text: &str) {
    use std::io::Write;
    if routed(text) {
        return;
    }
    let mut e = std::io::stderr().lock();
    let _ = write!(e, "{text}");
    let _ = e.flush();
}

/// `say!("...", args)`: `say` with `format!` arguments.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {
        $crate::output::say(&format!($($t)*))
    };
}

pub fn print_json<T: Serialize>(value: &T) {
    let text =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    out(&format!("{text}\n"));
}

pub fn render_reencrypt(summary: &crate::reencrypt::Summary) -> String {
    let t = &summary.totals;
    let mut out = String::new();
    out.push_str(&format!(
        "{:<32} {:>10} {:>10} {:>8} {:>7}\n",
        "NAMESPACE", "REWRITTEN", "UNCHANGED", "DELETED", "FAILED"
    ));
    for (ns, c) in &summary.namespaces {
        out.push_str(&format!(
            "{ns:<32} {:>10} {:>10} {:>8} {:>7}\n",
            c.rewritten, c.unchanged, c.deleted, c.failed
        ));
    }
    out.push_str(&format!(
        "total: {} rewritten (new resourceVersion), {} unchanged by the replica that served them, {} deleted meanwhile, {} failed in {:.1}s ({:.0}/s; {} requests, {:.1}% answered 429, {} conflicts retried)\n",
        t.rewritten,
        t.unchanged,
        t.deleted,
        t.failed,
        summary.seconds,
        summary.per_second,
        summary.requests,
        summary.throttled_share * 100.0,
        t.conflicts
    ));
    for f in summary.failures.iter().take(50) {
        out.push_str(&format!("failed: {f}\n"));
    }
    out
}
