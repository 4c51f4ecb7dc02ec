//! The reporters of a run's events (`engine::events`): a terminal view (indicatif: one line per
//! active wait or pass, finished ones cleared and told in a line above), plain lines for logs
//! and CI (a line for each active wait or pass at least every 10 s), and JSON lines
//! (`--progress json`). Each is a pure model of what to show (tested with snapshots) and a thin
//! writer around it.

use crate::engine::events::{Event, PassKind, Replicas, Sink, WaitKind};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How progress is shown (`--progress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Progress {
    /// A terminal view when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Plain lines, also on a terminal.
    Plain,
    /// One JSON object per line on stderr (see README, Progress as JSON lines).
    Json,
}

/// Without a terminal, an active wait or pass gets a line at least this often.
pub const PLAIN_EVERY: Duration = Duration::from_secs(10);
/// Failed Secrets named as they happen in each pass; the run's summary lists them all.
const FAILURES_SHOWN: usize = 10;

pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn percent(done: u64, total: Option<u64>) -> String {
    match total {
        Some(t) if t > 0 => format!(" ({:.0}%)", 100.0 * done as f64 / t as f64),
        _ => String::new(),
    }
}

fn pass_name(kind: PassKind, label: &str, round: u32, finished: bool) -> String {
    let verb = match (kind, finished) {
        (PassKind::Reencryption, false) => "re-encrypting",
        (PassKind::Reencryption, true) => "re-encrypted",
        (PassKind::Verification, false) => "verifying",
        (PassKind::Verification, true) => "verified",
    };
    let mut parts = Vec::new();
    if !label.is_empty() {
        parts.push(label.to_string());
    }
    if round > 1 {
        parts.push(format!("round {round}"));
    }
    if parts.is_empty() {
        verb.to_string()
    } else {
        format!("{verb} ({})", parts.join(", "))
    }
}

struct WaitState {
    kind: WaitKind,
    what: String,
    deadline: u64,
    elapsed: u64,
    status: Option<String>,
    replicas: Option<Replicas>,
    evidence: Option<String>,
    /// When the last progress was known, so a heartbeat can say how long it has been since.
    known_at: Instant,
    printed: Instant,
}

impl WaitState {
    fn line(&self, elapsed: u64) -> String {
        let mut s = format!(
            "waiting for {}: {} of {}",
            self.what,
            duration(elapsed),
            duration(self.deadline)
        );
        if let Some(st) = &self.status {
            s.push_str(&format!("; Azure says {st}"));
        }
        if let Some(r) = self.replicas {
            s.push_str(&format!("; {}", self.replicas_text(r)));
        }
        if let Some(e) = &self.evidence {
            s.push_str(&format!("; {e}"));
        }
        s
    }

    fn replicas_text(&self, r: Replicas) -> String {
        match self.kind {
            WaitKind::KeySwitchProof => format!("{}/{} replicas switched", r.switched, r.of),
            _ => format!("{}/{} replicas agree", r.switched, r.of),
        }
    }
}

struct PassState {
    kind: PassKind,
    label: String,
    round: u32,
    done: u64,
    total: Option<u64>,
    already_done: u64,
    elapsed: f64,
    in_flight: Vec<String>,
    failures: usize,
    known_at: Instant,
    printed: Instant,
}

impl PassState {
    fn rate(&self) -> f64 {
        (self.done.saturating_sub(self.already_done)) as f64 / self.elapsed.max(1e-3)
    }
    fn line(&self, elapsed: f64) -> String {
        let rate = (self.done.saturating_sub(self.already_done)) as f64 / elapsed.max(1e-3);
        let done = match self.total {
            Some(t) => format!("{}/{t} Secrets", self.done),
            None => format!("{} Secrets", self.done),
        };
        format!(
            "{}: {done}{}, {rate:.0}/s, {elapsed:.0}s",
            pass_name(self.kind, &self.label, self.round, false),
            percent(self.done, self.total)
        )
    }
}

/// What a run shows as lines: the same for plain output (all of it) and for the terminal view
/// (the lines printed above the live ones).
#[derive(Default)]
pub struct Lines {
    /// For the terminal view: what a live line shows (a wait's progress) is not printed too.
    pub terminal: bool,
    waits: BTreeMap<u32, WaitState>,
    passes: BTreeMap<u32, PassState>,
    step: Option<(usize, usize, String)>,
}

impl Lines {
    /// For the terminal view.
    pub fn terminal() -> Lines {
        Lines {
            terminal: true,
            ..Default::default()
        }
    }

    /// The lines an event prints (possibly none).
    pub fn apply(&mut self, e: &Event) -> Vec<String> {
        self.apply_at(e, Instant::now())
    }

    /// `apply`, as of `now` (the heartbeat counts from when each wait or pass was last told of).
    pub fn apply_at(&mut self, e: &Event, now: Instant) -> Vec<String> {
        match e {
            Event::RunStarted {
                run_id,
                procedure,
                description,
                steps,
                from_step,
            } => vec![if *from_step > 0 {
                format!(
                    "run {run_id}: {procedure} ({description}), resuming at step {} of {steps}",
                    from_step + 1
                )
            } else {
                format!("run {run_id}: {procedure} ({description}), {steps} steps")
            }],
            Event::StepStarted { index, total, step } => {
                self.step = Some((*index, *total, step.clone()));
                vec![format!("[{}/{total}] {step}", index + 1)]
            }
            Event::StepFinished {
                step,
                detail,
                seconds,
                ..
            } => {
                self.step = None;
                vec![format!(
                    "      {step} done in {}{}{detail}",
                    duration(seconds.round() as u64),
                    if detail.is_empty() { "" } else { ": " }
                )]
            }
            Event::StepSkipped {
                index,
                step,
                reason,
            } => vec![format!("[{}] {step} skipped ({reason})", index + 1)],
            Event::Note { message } => vec![format!("      {message}")],
            Event::WaitStarted {
                wait,
                kind,
                what,
                why,
                deadline_seconds,
            } => {
                self.waits.insert(
                    *wait,
                    WaitState {
                        kind: *kind,
                        what: what.clone(),
                        deadline: *deadline_seconds,
                        elapsed: 0,
                        status: None,
                        replicas: None,
                        evidence: None,
                        known_at: now,
                        printed: now,
                    },
                );
                vec![format!(
                    "      waiting for {what} (at most {}): {why}",
                    duration(*deadline_seconds)
                )]
            }
            Event::WaitProgress {
                wait,
                elapsed_seconds,
                status,
                replicas,
                evidence,
                ..
            } => {
                let Some(w) = self.waits.get_mut(wait) else {
                    return vec![];
                };
                // A new word from the service or another replica switched is worth a line at
                // once; the rest waits for the next heartbeat.
                let news = *status != w.status || *replicas != w.replicas;
                w.elapsed = *elapsed_seconds;
                w.status = status.clone();
                w.replicas = *replicas;
                w.evidence = evidence.clone();
                w.known_at = now;
                if news && !self.terminal {
                    w.printed = now;
                    vec![format!("      {}", w.line(w.elapsed))]
                } else {
                    vec![]
                }
            }
            Event::WaitFinished {
                wait,
                elapsed_seconds,
                outcome,
                ..
            } => match self.waits.remove(wait) {
                Some(w) => vec![format!(
                    "      {}: {outcome} after {}",
                    w.what,
                    duration(*elapsed_seconds)
                )],
                None => vec![],
            },
            Event::PassStarted {
                pass,
                kind,
                label,
                round,
                total,
                already_done,
            } => {
                let p = PassState {
                    kind: *kind,
                    label: label.clone(),
                    round: *round,
                    done: *already_done,
                    total: *total,
                    already_done: *already_done,
                    elapsed: 0.0,
                    in_flight: vec![],
                    failures: 0,
                    known_at: now,
                    printed: now,
                };
                let line = format!("  {}", p.line(0.0));
                self.passes.insert(*pass, p);
                // On a terminal the pass's bar says it.
                if self.terminal { vec![] } else { vec![line] }
            }
            Event::PassProgress {
                pass,
                done,
                total,
                elapsed_seconds,
                namespaces_in_flight,
            } => {
                if let Some(p) = self.passes.get_mut(pass) {
                    p.done = *done;
                    p.total = *total;
                    p.elapsed = *elapsed_seconds;
                    p.in_flight = namespaces_in_flight.clone();
                    p.known_at = now;
                }
                vec![]
            }
            Event::SecretFailed {
                pass,
                namespace,
                name,
                reason,
            } => {
                let Some(p) = self.passes.get_mut(pass) else {
                    return vec![format!("failed: {namespace}/{name}: {reason}")];
                };
                p.failures += 1;
                match p.failures.cmp(&(FAILURES_SHOWN + 1)) {
                    std::cmp::Ordering::Less => {
                        vec![format!("failed: {namespace}/{name}: {reason}")]
                    }
                    std::cmp::Ordering::Equal => vec![
                        "failed: more Secrets failed; the summary at the end lists them all".into(),
                    ],
                    std::cmp::Ordering::Greater => vec![],
                }
            }
            Event::PassFinished {
                pass,
                counts,
                seconds,
            } => {
                let Some(p) = self.passes.remove(pass) else {
                    return vec![];
                };
                let name = pass_name(p.kind, &p.label, p.round, true);
                let rate = counts.processed() as f64 / seconds.max(1e-3);
                vec![match p.kind {
                    PassKind::Reencryption => format!(
                        "  {name}: {} rewritten, {} unchanged, {} deleted meanwhile, {} failed in {seconds:.1}s ({rate:.0}/s)",
                        counts.rewritten, counts.unchanged, counts.deleted, counts.failed
                    ),
                    PassKind::Verification => format!(
                        "  {name}: {} rewritten, {} unchanged over fresh connections in {seconds:.1}s ({rate:.0}/s)",
                        counts.rewritten, counts.unchanged
                    ),
                }]
            }
            Event::RunFinished { summary } => vec![format!(
                "run {} {} in {}",
                summary.run_id,
                summary.status,
                duration(summary.seconds.round() as u64)
            )],
        }
    }

    /// A line for each active wait or pass not told of for `PLAIN_EVERY`, as of `now`.
    pub fn heartbeat(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        for w in self.waits.values_mut() {
            if now.duration_since(w.printed) >= PLAIN_EVERY {
                w.printed = now;
                let elapsed = w.elapsed + now.duration_since(w.known_at).as_secs();
                out.push(format!("      {}", w.line(elapsed)));
            }
        }
        for p in self.passes.values_mut() {
            if now.duration_since(p.printed) >= PLAIN_EVERY {
                p.printed = now;
                let elapsed = p.elapsed + now.duration_since(p.known_at).as_secs_f64();
                out.push(format!("  {}", p.line(elapsed)));
            }
        }
        out
    }

    /// What the terminal shows live: one line per active wait or pass; the step's own line
    /// while none is active.
    pub fn live(&self) -> Vec<Live> {
        let mut out: Vec<Live> = self
            .waits
            .iter()
            .map(|(id, w)| Live {
                key: format!("wait-{id}"),
                bar: None,
                prefix: String::new(),
                text: {
                    let mut s = format!("waiting for {}", w.what);
                    if let Some(st) = &w.status {
                        s.push_str(&format!(" · Azure: {st}"));
                    }
                    if let Some(r) = w.replicas {
                        s.push_str(&format!(" · {}", w.replicas_text(r)));
                    }
                    if let Some(e) = &w.evidence {
                        s.push_str(&format!(" · {e}"));
                    }
                    s.push_str(&format!(" · at most {}", duration(w.deadline)));
                    s
                },
                elapsed: w.elapsed,
            })
            .collect();
        out.extend(self.passes.iter().map(|(id, p)| {
            let rate = p.rate();
            let eta = match p.total {
                Some(t) if rate > 0.0 && t > p.done => {
                    format!(", ETA {}", duration(((t - p.done) as f64 / rate) as u64))
                }
                _ => String::new(),
            };
            Live {
                key: format!("pass-{id}"),
                bar: Some((p.done, p.total.unwrap_or(p.done))),
                prefix: pass_name(p.kind, &p.label, p.round, false),
                text: format!(
                    "{rate:.0}/s{eta}{}",
                    if p.in_flight.is_empty() {
                        String::new()
                    } else {
                        format!(" · {}", p.in_flight.join(", "))
                    }
                ),
                elapsed: p.elapsed as u64,
            }
        }));
        if out.is_empty()
            && let Some((index, total, step)) = &self.step
        {
            out.push(Live {
                key: format!("step-{index}"),
                bar: None,
                prefix: String::new(),
                text: format!("[{}/{total}] {step}", index + 1),
                elapsed: 0,
            });
        }
        out
    }
}

/// One live line of the terminal view.
#[derive(Clone, Debug, PartialEq)]
pub struct Live {
    pub key: String,
    /// (done, total) for a pass's bar.
    pub bar: Option<(u64, u64)>,
    pub prefix: String,
    pub text: String,
    pub elapsed: u64,
}

impl Live {
    /// As text, the way the terminal draws it (for snapshots).
    pub fn render(&self) -> String {
        match self.bar {
            Some((done, total)) => {
                let width = 20;
                let filled = if total == 0 {
                    width
                } else {
                    (done as usize * width / total as usize).min(width)
                };
                format!(
                    "{} [{}{}] {done}/{total} Secrets {}",
                    self.prefix,
                    "#".repeat(filled),
                    "-".repeat(width - filled),
                    self.text
                )
            }
            None => format!("⠋ {} [{}]", self.text, duration(self.elapsed)),
        }
    }
}

/// A reporter: a sink that also knows how to stop (clear its bars, stop its heartbeat).
pub trait Reporter: Sink {
    fn finish(&self);
}

fn write_err(line: &str) {
    use std::io::Write;
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{line}");
}

/// A thread that calls `tick` every second until stopped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Ticker {
    fn start(tick: impl Fn() + Send + 'static) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(500));
                tick();
            }
        });
        Ticker {
            stop,
            thread: Mutex::new(Some(thread)),
        }
    }
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// Plain lines on stderr.
pub struct PlainReporter {
    lines: Arc<Mutex<Lines>>,
    ticker: Ticker,
}

impl PlainReporter {
    pub fn new() -> PlainReporter {
        let lines = Arc::new(Mutex::new(Lines::default()));
        let l = lines.clone();
        let ticker = Ticker::start(move || {
            let out = l
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .heartbeat(Instant::now());
            for line in out {
                write_err(&line);
            }
        });
        PlainReporter { lines, ticker }
    }
}

impl Default for PlainReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for PlainReporter {
    fn emit(&self, e: &Event) {
        let out = self
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(e);
        for line in out {
            write_err(&line);
        }
    }
}

impl Reporter for PlainReporter {
    fn finish(&self) {
        self.ticker.stop();
    }
}

/// One JSON object per line on stderr: every event, with `at` (RFC 3339). Pass progress at
/// most once a second per pass, and each active wait at least every 10 s.
pub struct JsonReporter {
    state: Arc<Mutex<(Lines, BTreeMap<u32, Instant>)>>,
    ticker: Ticker,
}

pub fn json_line(e: &Event) -> String {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "at".into(),
            serde_json::json!(chrono::Utc::now().to_rfc3339()),
        );
    }
    v.to_string()
}

impl JsonReporter {
    pub fn new() -> JsonReporter {
        *LOG_ROUTE.lock().unwrap_or_else(|e| e.into_inner()) = LogRoute::Json;
        let state: Arc<Mutex<(Lines, BTreeMap<u32, Instant>)>> = Arc::default();
        let s = state.clone();
        let ticker = Ticker::start(move || {
            let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            for (id, w) in g.0.waits.iter_mut() {
                if now.duration_since(w.printed) >= PLAIN_EVERY {
                    w.printed = now;
                    write_err(&json_line(&Event::WaitProgress {
                        wait: *id,
                        elapsed_seconds: w.elapsed + now.duration_since(w.known_at).as_secs(),
                        deadline_seconds: w.deadline,
                        status: w.status.clone(),
                        replicas: w.replicas,
                        evidence: w.evidence.clone(),
                    }));
                }
            }
        });
        JsonReporter { state, ticker }
    }
}

impl Default for JsonReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for JsonReporter {
    fn emit(&self, e: &Event) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Event::PassProgress { pass, .. } = e {
            let last = g.1.get(pass);
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                g.0.apply(e);
                return;
            }
            g.1.insert(*pass, Instant::now());
        }
        g.0.apply(e);
        if let Event::WaitProgress { wait, .. } = e
            && let Some(w) = g.0.waits.get_mut(wait)
        {
            w.printed = Instant::now();
        }
        write_err(&json_line(e));
    }
}

impl Reporter for JsonReporter {
    fn finish(&self) {
        *LOG_ROUTE.lock().unwrap_or_else(|e| e.into_inner()) = LogRoute::Plain;
        self.ticker.stop();
    }
}

/// The terminal view: lines printed above, one live line per active wait or pass below.
pub struct TerminalReporter {
    multi: MultiProgress,
    state: Mutex<(Lines, BTreeMap<String, ProgressBar>)>,
}

impl TerminalReporter {
    pub fn new() -> TerminalReporter {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        *LOG_ROUTE.lock().unwrap_or_else(|e| e.into_inner()) = LogRoute::Above(multi.clone());
        TerminalReporter {
            multi,
            state: Mutex::new((Lines::terminal(), BTreeMap::new())),
        }
    }

    fn bar(&self, l: &Live) -> ProgressBar {
        let pb = match l.bar {
            Some((_, total)) => {
                // Hidden until added: a bar of its own would draw once outside the view.
                let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
                pb.set_style(
                    ProgressStyle::with_template(
                        "{prefix} {bar:30.cyan/blue} {pos}/{len} Secrets {wide_msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                pb
            }
            None => {
                let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
                pb.set_style(
                    ProgressStyle::with_template("{spinner} [{elapsed}] {wide_msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                pb
            }
        };
        pb.set_prefix(l.prefix.clone());
        pb.set_message(l.text.clone());
        if let Some((done, _)) = l.bar {
            pb.set_position(done);
        }
        let pb = self.multi.add(pb);
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }
}

impl Default for TerminalReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for TerminalReporter {
    fn emit(&self, e: &Event) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let printed = g.0.apply(e);
        let live = g.0.live();
        // Finished lines go first (cleared), so what is printed next is not drawn above a
        // line that is already gone.
        let keys: Vec<&String> = live.iter().map(|l| &l.key).collect();
        let gone: Vec<String> = g.1.keys().filter(|k| !keys.contains(k)).cloned().collect();
        for k in gone {
            if let Some(pb) = g.1.remove(&k) {
                pb.finish_and_clear();
                self.multi.remove(&pb);
            }
        }
        for line in printed {
            if g.1.is_empty() {
                write_err(&line);
            } else {
                let _ = self.multi.println(&line);
            }
        }
        for l in &live {
            if !g.1.contains_key(&l.key) {
                let pb = self.bar(l);
                g.1.insert(l.key.clone(), pb);
            }
            let pb = &g.1[&l.key];
            pb.set_prefix(l.prefix.clone());
            pb.set_message(l.text.clone());
            if let Some((done, total)) = l.bar {
                pb.set_length(total);
                pb.set_position(done);
            }
        }
    }
}

impl Reporter for TerminalReporter {
    fn finish(&self) {
        *LOG_ROUTE.lock().unwrap_or_else(|e| e.into_inner()) = LogRoute::Plain;
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (_, pb) in std::mem::take(&mut g.1) {
            pb.finish_and_clear();
        }
    }
}

/// The reporter `--progress` asks for.
pub fn reporter(mode: Progress) -> Box<dyn Reporter> {
    use std::io::IsTerminal;
    match mode {
        Progress::Json => Box::new(JsonReporter::new()),
        Progress::Plain => Box::new(PlainReporter::new()),
        Progress::Auto if std::io::stderr().is_terminal() => Box::new(TerminalReporter::new()),
        Progress::Auto => Box::new(PlainReporter::new()),
    }
}

/// The mode main chose (`--progress`), for the commands that start a run.
static MODE: std::sync::OnceLock<Progress> = std::sync::OnceLock::new();

pub fn set_mode(mode: Progress) {
    let _ = MODE.set(mode);
}

pub fn mode() -> Progress {
    MODE.get().copied().unwrap_or_default()
}

/// Where log lines (tracing) go while a reporter owns stderr: above the live lines of the
/// terminal view (they would tear it), or as `log` events among the JSON lines (so stderr stays
/// one JSON object per line).
enum LogRoute {
    Plain,
    Above(MultiProgress),
    Json,
}

static LOG_ROUTE: Mutex<LogRoute> = Mutex::new(LogRoute::Plain);

/// Log lines above these live lines (a fleet's terminal view), or plainly again (None).
pub fn logs_above(multi: Option<MultiProgress>) {
    *LOG_ROUTE.lock().unwrap_or_else(|e| e.into_inner()) = match multi {
        Some(m) => LogRoute::Above(m),
        None => LogRoute::Plain,
    };
}

/// The writer for tracing's log lines (main installs it): each log event is written whole,
/// where the active reporter wants it.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

/// One log event's bytes, written when tracing is done with them.
pub struct LogLine(Vec<u8>);

impl std::io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        use std::io::Write;
        if self.0.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.0);
        let route = LOG_ROUTE.lock().unwrap_or_else(|e| e.into_inner());
        match &*route {
            LogRoute::Plain => {
                let _ = std::io::stderr().lock().write_all(&self.0);
            }
            LogRoute::Above(multi) => {
                let _ = multi.println(text.trim_end());
            }
            LogRoute::Json => {
                let line = serde_json::json!({
                    "event": "log",
                    "message": text.trim_end(),
                    "at": chrono::Utc::now().to_rfc3339(),
                });
                write_err(&line.to_string());
            }
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}
