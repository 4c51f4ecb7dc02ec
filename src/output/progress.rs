//! Progress bars: one for the whole re-encryption (done/total, rate, ETA) and a line naming the
//! namespaces in flight; a spinner for lifecycle steps.

use crate::reencrypt::{Event, Observer};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

pub struct ReencryptProgress {
    _multi: MultiProgress,
    bar: ProgressBar,
    line: ProgressBar,
    in_flight: Mutex<BTreeSet<String>>,
}

impl Default for ReencryptProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl ReencryptProgress {
    pub fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let bar = multi.add(ProgressBar::no_length());
        bar.set_style(
            ProgressStyle::with_template(
                "re-encrypting {bar:40.cyan/blue} {pos}/{len} Secrets {per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let line = multi.add(ProgressBar::new_spinner());
        line.set_style(
            ProgressStyle::with_template("  {spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        line.enable_steady_tick(Duration::from_millis(200));
        ReencryptProgress {
            _multi: multi,
            bar,
            line,
            in_flight: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn finish(&self) {
        self.line.finish_and_clear();
        self.bar.finish_and_clear();
    }

    fn show_in_flight(&self) {
        let set = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let names: Vec<&str> = set.iter().map(String::as_str).take(6).collect();
        self.line
            .set_message(format!("namespaces in flight: {}", names.join(", ")));
    }
}

impl Observer for ReencryptProgress {
    fn event(&self, event: &Event) {
        match event {
            Event::Started {
                total,
                already_done,
            } => {
                if let Some(t) = total {
                    self.bar.set_length(*t);
                }
                self.bar.set_position(*already_done);
                self.bar.reset_eta();
            }
            Event::NamespaceStarted { namespace } => {
                self.in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(namespace.clone());
                self.show_in_flight();
            }
            Event::PageDone { counts, .. } => {
                self.bar.inc(counts.processed());
                if self.bar.length().is_some_and(|l| self.bar.position() > l) {
                    self.bar.set_length(self.bar.position());
                }
            }
            Event::NamespaceDone { namespace } => {
                self.in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(namespace);
                self.show_in_flight();
            }
            Event::Failed {
                namespace,
                name,
                reason,
            } => {
                self.bar
                    .suspend(|| eprintln!("failed: {namespace}/{name}: {reason}"));
            }
        }
    }
}

/// A spinner for one lifecycle step.
pub fn step_spinner(message: String) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(message);
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}
