//! Progress bars: one for the whole re-encryption (done/total, rate, ETA) and a line naming the
//! namespaces in flight; a spinner for lifecycle steps.

use crate::reencrypt::{Event, Observer};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The re-encryption display: in a terminal, bars made anew for each pass (a run may make
/// several: each rotation's, and each verification pass); without one, a plain line at the start
/// and about every 10 s, so a long run in a pipeline or a CI log still shows it is moving.
pub struct ReencryptProgress {
    tty: bool,
    /// Failed Secrets shown in this pass: the first few by name, the rest only in the summary.
    failures: std::sync::atomic::AtomicUsize,
    bars: Mutex<Option<Bars>>,
    plain: Mutex<Plain>,
}

struct Bars {
    _multi: MultiProgress,
    bar: ProgressBar,
    line: ProgressBar,
    in_flight: BTreeSet<String>,
}

struct Plain {
    total: Option<u64>,
    done: u64,
    started: Instant,
    printed: Instant,
}

const PLAIN_EVERY: Duration = Duration::from_secs(10);
/// Failed Secrets named as they happen; the run's summary lists them all.
const FAILURES_SHOWN: usize = 10;

impl Default for ReencryptProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Bars {
    fn new() -> Bars {
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
        Bars {
            _multi: multi,
            bar,
            line,
            in_flight: BTreeSet::new(),
        }
    }

    fn clear(&self) {
        self.line.finish_and_clear();
        self.bar.finish_and_clear();
    }

    fn show_in_flight(&self) {
        let names: Vec<&str> = self.in_flight.iter().map(String::as_str).take(6).collect();
        self.line
            .set_message(format!("namespaces in flight: {}", names.join(", ")));
    }
}

impl ReencryptProgress {
    pub fn new() -> Self {
        let now = Instant::now();
        ReencryptProgress {
            tty: std::io::stderr().is_terminal(),
            failures: std::sync::atomic::AtomicUsize::new(0),
            bars: Mutex::new(None),
            plain: Mutex::new(Plain {
                total: None,
                done: 0,
                started: now,
                printed: now,
            }),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = self.bars.lock().unwrap_or_else(|e| e.into_inner()).take() {
            b.clear();
        }
    }

    /// The line for a failed Secret, while fewer than `FAILURES_SHOWN` were shown in this pass.
    fn failure_line(&self, namespace: &str, name: &str, reason: &str) -> Option<String> {
        let n = self
            .failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match n.cmp(&FAILURES_SHOWN) {
            std::cmp::Ordering::Less => Some(format!("failed: {namespace}/{name}: {reason}")),
            std::cmp::Ordering::Equal => Some(
                "failed: more Secrets failed; the summary at the end lists them all".to_string(),
            ),
            std::cmp::Ordering::Greater => None,
        }
    }

    fn plain_line(p: &Plain) -> String {
        let secs = p.started.elapsed().as_secs_f64();
        let rate = p.done as f64 / secs.max(1e-3);
        match p.total {
            Some(t) if t > 0 => format!(
                "  re-encrypting: {}/{} Secrets ({:.0}%), {rate:.0}/s, {secs:.0}s",
                p.done,
                t,
                100.0 * p.done as f64 / t as f64
            ),
            _ => format!(
                "  re-encrypting: {} Secrets, {rate:.0}/s, {secs:.0}s",
                p.done
            ),
        }
    }

    fn plain_event(&self, event: &Event) {
        let mut p = self.plain.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Started {
                total,
                already_done,
            } => {
                p.total = *total;
                p.done = *already_done;
                p.started = Instant::now();
                p.printed = Instant::now();
                eprintln!("{}", Self::plain_line(&p));
            }
            Event::PageDone { counts, .. } => {
                p.done += counts.processed();
                if p.printed.elapsed() >= PLAIN_EVERY {
                    p.printed = Instant::now();
                    eprintln!("{}", Self::plain_line(&p));
                }
            }
            _ => {}
        }
    }
}

impl Observer for ReencryptProgress {
    fn event(&self, event: &Event) {
        if let Event::Started { .. } = event {
            self.failures.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        if let Event::Failed {
            namespace,
            name,
            reason,
        } = event
        {
            if let Some(line) = self.failure_line(namespace, name, reason) {
                // In a terminal the line goes above the bars, without tearing them.
                match self.bars.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    Some(b) => b.bar.suspend(|| eprintln!("{line}")),
                    None => eprintln!("{line}"),
                }
            }
            return;
        }
        if !self.tty {
            return self.plain_event(event);
        }
        let mut guard = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        if let Event::Started { .. } = event {
            if let Some(old) = guard.take() {
                old.clear();
            }
            *guard = Some(Bars::new());
        }
        let Some(b) = guard.as_mut() else { return };
        match event {
            Event::Started {
                total,
                already_done,
            } => {
                if let Some(t) = total {
                    b.bar.set_length(*t);
                }
                b.bar.set_position(*already_done);
                b.bar.reset_eta();
            }
            Event::NamespaceStarted { namespace } => {
                b.in_flight.insert(namespace.clone());
                b.show_in_flight();
            }
            Event::PageDone { counts, .. } => {
                b.bar.inc(counts.processed());
                if b.bar.length().is_some_and(|l| b.bar.position() > l) {
                    b.bar.set_length(b.bar.position());
                }
            }
            Event::NamespaceDone { namespace } => {
                b.in_flight.remove(namespace);
                b.show_in_flight();
            }
            Event::Failed { .. } => {}
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
