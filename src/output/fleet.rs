//! What a fleet run shows: on a terminal a live line per active cluster (its step, wait or
//! pass, from its run's events) and a line per finished cluster and wave above them; plain
//! lines without a terminal (every cluster's lines, prefixed with its name, and a line at
//! least every 10 s while clusters wait); `-o json` JSON lines on stdout (one per cluster
//! outcome, one for the fleet); `-o html` one self-contained page; Prometheus metrics.

use super::events::{Lines, PLAIN_EVERY};
use crate::engine::events::Event;
use crate::engine::summary::Summary;
use crate::fleet::journal::{ClusterResult, FleetRecord, Outcome};
use crate::fleet::rollout::View;
use crate::fleet::select::Cluster;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn write_err(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// One active cluster: its run's lines model, and its live bar on a terminal.
struct Active {
    lines: Lines,
    bar: Option<ProgressBar>,
}

struct State {
    active: BTreeMap<String, Active>,
    last_line: Instant,
    wave: Option<(usize, usize)>,
    done: usize,
}

/// The fleet's reporter (stderr), and JSON lines on stdout with `-o json`.
pub struct FleetView {
    multi: Option<MultiProgress>,
    json: bool,
    state: Arc<Mutex<State>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// `--textfile`: the metrics file, rewritten from the fleet journal after each wave.
    textfile: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The line a cluster's live view shows.
fn live_text(lines: &Lines) -> Option<String> {
    lines.live().first().map(|l| match l.bar {
        Some(_) => l.render(),
        None => l.text.clone(),
    })
}

impl FleetView {
    /// `textfile`: (the metrics file, the fleet journal it is written from).
    pub fn new(
        terminal: bool,
        json: bool,
        textfile: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> FleetView {
        let state = Arc::new(Mutex::new(State {
            active: BTreeMap::new(),
            last_line: Instant::now(),
            wave: None,
            done: 0,
        }));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let multi = terminal.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        super::events::logs_above(multi.clone());
        let ticker = (!terminal).then(|| {
            let (s, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(500));
                    heartbeat(&mut s.lock().unwrap_or_else(|e| e.into_inner()));
                }
            })
        });
        FleetView {
            multi,
            json,
            state,
            stop,
            ticker: Mutex::new(ticker),
            textfile,
        }
    }

    fn print(&self, s: &mut State, line: &str) {
        s.last_line = Instant::now();
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => write_err(line),
        }
    }

    pub fn finish(&self) {
        super::events::logs_above(None);
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.ticker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for a in s.active.values_mut() {
            if let Some(b) = a.bar.take() {
                b.finish_and_clear();
            }
        }
    }
}

/// Without a terminal: each wait or pass of an active cluster at least every 10 s, and a line
/// on the fleet when nothing else was said for that long.
fn heartbeat(s: &mut State) {
    let now = Instant::now();
    let mut out = Vec::new();
    for (name, a) in s.active.iter_mut() {
        out.extend(
            a.lines
                .heartbeat(now)
                .into_iter()
                .map(|l| format!("{name}: {}", l.trim_start())),
        );
    }
    if out.is_empty() && now.duration_since(s.last_line) >= PLAIN_EVERY && !s.active.is_empty() {
        let (w, of) = s.wave.unwrap_or((0, 0));
        let running: Vec<String> = s
            .active
            .iter()
            .map(|(n, a)| format!("{n}: {}", live_text(&a.lines).unwrap_or("starting".into())))
            .collect();
        out.push(format!(
            "wave {}/{of}: {} running, {} finished; {}",
            w + 1,
            s.active.len(),
            s.done,
            running.join("; ")
        ));
    }
    if !out.is_empty() {
        s.last_line = now;
    }
    for l in out {
        write_err(&l);
    }
}

impl View for FleetView {
    fn wave_started(&self, wave: usize, waves: usize, members: &[Cluster]) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.wave = Some((wave, waves));
        let names: Vec<&str> = members.iter().map(|c| c.name.as_str()).collect();
        self.print(
            &mut s,
            &format!(
                "wave {}/{waves}: {} cluster(s): {}",
                wave + 1,
                names.len(),
                names.join(", ")
            ),
        );
    }

    fn cluster_started(&self, _wave: usize, c: &Cluster, run_id: &str, how: &str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let bar = self.multi.as_ref().map(|m| {
            let pb = m.add(ProgressBar::new_spinner());
            pb.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] {prefix}: {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            pb.set_prefix(c.name.clone());
            pb.set_message("starting");
            pb.enable_steady_tick(Duration::from_millis(200));
            pb
        });
        let lines = if self.multi.is_some() {
            Lines::terminal()
        } else {
            Lines::default()
        };
        s.active.insert(c.name.clone(), Active { lines, bar });
        self.print(&mut s, &format!("{}: {how} (run {run_id})", c.name));
    }

    fn cluster_event(&self, c: &Cluster, e: &Event) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(a) = s.active.get_mut(&c.name) else {
            return;
        };
        let lines = a.lines.apply(e);
        // Between steps nothing is live: the line keeps what it said last.
        if let (Some(b), Some(live)) = (&a.bar, live_text(&a.lines)) {
            b.set_message(live);
        }
        // On a terminal the live line shows where a cluster stands; only its ends are told.
        let shown: Vec<String> = match self.multi {
            Some(_) => lines
                .into_iter()
                .filter(|l| l.starts_with("failed:"))
                .collect(),
            None => lines,
        };
        for l in shown {
            self.print(&mut s, &format!("{}: {}", c.name, l.trim_start()));
        }
    }

    fn cluster_note(&self, c: &Cluster, line: &str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.multi.is_none() || line.contains("error") || line.contains("refused") {
            self.print(&mut s, &format!("{}: {line}", c.name));
        }
    }

    fn cluster_finished(
        &self,
        wave: usize,
        c: &Cluster,
        r: &ClusterResult,
        summary: Option<&Summary>,
    ) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = s.active.remove(&c.name)
            && let Some(b) = a.bar
        {
            b.finish_and_clear();
            if let Some(m) = &self.multi {
                m.remove(&b);
            }
        }
        s.done += 1;
        self.print(&mut s, &cluster_line(c, r));
        if self.json {
            super::out(&format!("{}\n", cluster_json(wave, c, r, summary)));
        }
    }

    fn wave_finished(&self, wave: usize, waves: usize, succeeded: usize, failed: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.print(
            &mut s,
            &format!(
                "wave {}/{waves} finished: {succeeded} succeeded, {failed} failed",
                wave + 1
            ),
        );
        if let Some((file, journal)) = &self.textfile {
            let written = crate::fleet::journal::replay(journal)
                .and_then(|r| crate::commands::expiry::write_atomic(file, &prometheus(&r)));
            if let Err(e) = written {
                self.print(&mut s, &format!("warning: {e:#}"));
            }
        }
    }

    fn stopped(&self, why: &str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.print(&mut s, why);
    }
}

fn cluster_line(c: &Cluster, r: &ClusterResult) -> String {
    let keys = match (&r.key_before, &r.key_after) {
        (Some(b), Some(a)) if b != a => format!("; key {} -> {}", version(b), version(a)),
        _ => String::new(),
    };
    format!(
        "{}: {} in {}{keys}{}",
        c.name,
        r.outcome.label(),
        super::events::duration(r.seconds.round() as u64),
        r.message
            .as_ref()
            .filter(|_| !r.outcome.ok() || r.outcome == Outcome::Done)
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    )
}

/// A key id's version (its last segment), for short lines.
fn version(key_id: &str) -> &str {
    key_id
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(key_id)
}

pub fn cluster_json(wave: usize, c: &Cluster, r: &ClusterResult, s: Option<&Summary>) -> String {
    json!({
        "cluster": c.id, "name": c.name, "wave": wave + 1, "runId": r.run_id,
        "outcome": r.outcome.label(), "keyBefore": r.key_before, "keyAfter": r.key_after,
        "message": r.message, "seconds": r.seconds, "summary": s,
    })
    .to_string()
}

/// Per outcome, how many clusters (of the waves; skipped ones apart).
pub fn counts(r: &FleetRecord) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for id in r.header.waves.iter().flatten() {
        let label = match r.cluster(id).result {
            Some(x) => x.outcome.label(),
            None if r.cluster(id).run_id.is_some() => "unfinished",
            None => "not-started",
        };
        *out.entry(label).or_insert(0) += 1;
    }
    let skipped = r
        .header
        .selection
        .iter()
        .filter(|c| c.skip.is_some())
        .count();
    if skipped > 0 {
        out.insert("skipped", skipped);
    }
    out
}

pub fn fleet_json(r: &FleetRecord) -> String {
    json!({
        "fleet": r.header.fleet_run_id, "procedure": r.header.procedure, "status": r.state(),
        "reason": r.finished.as_ref().map(|f| f.1.clone()), "waves": r.header.waves.len(),
        "clusters": counts(r), "startedAt": r.header.started_at,
    })
    .to_string()
}

/// `fleet plan` and the head of `fleet status`: the selection, the skipped and the waves.
pub fn plan_text(r: &FleetRecord, run_state: &dyn Fn(&str) -> Option<String>) -> String {
    let h = &r.header;
    let mut s = format!(
        "fleet {} ({}): {} cluster(s) selected, {} in {} wave(s), at most {} at once, stop after a wave with more than {} failure(s){}\n",
        h.fleet_run_id,
        h.procedure,
        h.selection.len(),
        h.waves.iter().map(Vec::len).sum::<usize>(),
        h.waves.len(),
        h.params.max_parallel,
        h.params.max_failures,
        h.params
            .shard
            .map(|s| format!("; shard {}/{}", s.index, s.of))
            .unwrap_or_default()
    );
    for c in h.selection.iter().filter(|c| c.skip.is_some()) {
        s.push_str(&format!(
            "skipped {} ({}): {}\n",
            c.name,
            c.id,
            c.skip.as_deref().unwrap_or_default()
        ));
    }
    let by_id: BTreeMap<String, &Cluster> = h
        .selection
        .iter()
        .map(|c| (c.id.to_ascii_lowercase(), c))
        .collect();
    for (i, w) in h.waves.iter().enumerate() {
        s.push_str(&format!(
            "wave {}/{} ({} cluster(s)):\n",
            i + 1,
            h.waves.len(),
            w.len()
        ));
        for id in w {
            let name = by_id
                .get(&id.to_ascii_lowercase())
                .map_or(id.as_str(), |c| &c.name);
            let state = r.cluster(id);
            let what = match (&state.result, &state.run_id) {
                (Some(x), run) => format!(
                    "{}{}{}",
                    x.outcome.label(),
                    run.as_deref()
                        .and_then(|id| run_state(id).filter(|_| !x.outcome.ok()))
                        .map(|s| format!(" [{s}]"))
                        .unwrap_or_default(),
                    x.message
                        .as_ref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
                (None, Some(run)) => {
                    run_state(run).unwrap_or_else(|| format!("unfinished (run {run})"))
                }
                (None, None) if r.path.as_os_str().is_empty() => String::new(),
                (None, None) => "not started".into(),
            };
            s.push_str(format!("  {name:<28} {what}").trim_end());
            s.push('\n');
        }
    }
    s
}

pub fn plan_json(r: &FleetRecord) -> String {
    let h = &r.header;
    json!({
        "fleet": h.fleet_run_id, "procedure": h.procedure, "params": h.params,
        "selection": h.selection, "waves": h.waves,
    })
    .to_string()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn colour(o: Option<Outcome>) -> &'static str {
    match o {
        Some(o) if o.ok() => "#2e7d32",
        Some(Outcome::Interrupted) | None => "#757575",
        Some(_) => "#c62828",
    }
}

/// One self-contained page (inline CSS, no script, nothing fetched): a section per wave, a row
/// per cluster with its outcome, run and key versions, and the clusters skipped.
pub fn page(r: &FleetRecord) -> String {
    let h = &r.header;
    let by_id: BTreeMap<String, &Cluster> = h
        .selection
        .iter()
        .map(|c| (c.id.to_ascii_lowercase(), c))
        .collect();
    let mut body = String::new();
    for (i, w) in h.waves.iter().enumerate() {
        let ok = w
            .iter()
            .filter(|id| r.cluster(id).result.is_some_and(|x| x.outcome.ok()))
            .count();
        body.push_str(&format!(
            "<section class=\"wave\" id=\"wave-{}\"><h2>Wave {} of {} <small>{ok}/{} done</small></h2><table><thead><tr><th>Cluster</th><th>Outcome</th><th>Key before</th><th>Key after</th><th>Run</th><th>Detail</th></tr></thead><tbody>",
            i + 1,
            i + 1,
            h.waves.len(),
            w.len()
        ));
        for id in w {
            let c = by_id.get(&id.to_ascii_lowercase());
            let st = r.cluster(id);
            let res = st.result.as_ref();
            let label = res.map_or(
                if st.run_id.is_some() {
                    "unfinished"
                } else {
                    "not started"
                },
                |x| x.outcome.label(),
            );
            body.push_str(&format!(
                "<tr class=\"cluster\" data-outcome=\"{label}\"><td title=\"{}\">{}</td><td><span class=\"badge\" style=\"background:{}\">{label}</span></td><td class=\"key\">{}</td><td class=\"key\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(id),
                esc(c.map_or(id.as_str(), |c| &c.name)),
                colour(res.map(|x| x.outcome)),
                esc(res.and_then(|x| x.key_before.as_deref()).or(c.and_then(|c| c.key_id.as_deref())).unwrap_or("-")),
                esc(res.and_then(|x| x.key_after.as_deref()).unwrap_or("-")),
                esc(st.run_id.as_deref().unwrap_or("-")),
                esc(res.and_then(|x| x.message.as_deref()).unwrap_or(""))
            ));
        }
        body.push_str("</tbody></table></section>");
    }
    let skipped: Vec<String> = h
        .selection
        .iter()
        .filter_map(|c| {
            Some(format!(
                "<li>{}: {}</li>",
                esc(&c.name),
                esc(c.skip.as_deref()?)
            ))
        })
        .collect();
    if !skipped.is_empty() {
        body.push_str(&format!(
            "<section id=\"skipped\"><h2>Skipped</h2><ul>{}</ul></section>",
            skipped.join("")
        ));
    }
    let counts: Vec<String> = counts(r).iter().map(|(k, v)| format!("{v} {k}")).collect();
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>kmsctl fleet {id}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; width: 100%; margin-bottom: 1.5em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; font-size: 13px; }}
td.key {{ font-family: monospace; font-size: 12px; word-break: break-all; }}
.badge {{ color: #fff; border-radius: 3px; padding: 1px 6px; }}
small {{ color: #666; font-weight: normal; }}
</style></head><body>
<h1>Fleet {procedure}: {status}</h1>
<p id="summary">{id}, started {started}: {counts}.{reason}</p>
{body}
</body></html>
"#,
        id = esc(&h.fleet_run_id),
        procedure = esc(&h.procedure),
        status = r.state(),
        started = h.started_at.to_rfc3339(),
        counts = esc(&counts.join(", ")),
        reason = r
            .finished
            .as_ref()
            .map(|f| format!(" {}", esc(&f.1)))
            .unwrap_or_default(),
    )
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition: one series per cluster (its outcome as a label, its wave, its
/// seconds) and the fleet's counts.
pub fn prometheus(r: &FleetRecord) -> String {
    let h = &r.header;
    let mut out = String::from(
        "# HELP kmsctl_fleet_cluster_outcome A fleet cluster's outcome (1 for its current one): succeeded, done, failed, refused, unreachable, interrupted, unfinished, not-started.\n# TYPE kmsctl_fleet_cluster_outcome gauge\n",
    );
    let mut secs = String::from(
        "# HELP kmsctl_fleet_cluster_seconds How long the cluster's part of the fleet run took.\n# TYPE kmsctl_fleet_cluster_seconds gauge\n",
    );
    let by_id: BTreeMap<String, &Cluster> = h
        .selection
        .iter()
        .map(|c| (c.id.to_ascii_lowercase(), c))
        .collect();
    for (i, w) in h.waves.iter().enumerate() {
        for id in w {
            let st = r.cluster(id);
            let outcome = match &st.result {
                Some(x) => x.outcome.label(),
                None if st.run_id.is_some() => "unfinished",
                None => "not-started",
            };
            let name = by_id
                .get(&id.to_ascii_lowercase())
                .map_or("", |c| c.name.as_str());
            let l = format!(
                "fleet=\"{}\",cluster=\"{}\",id=\"{}\",wave=\"{}\"",
                label(&h.fleet_run_id),
                label(name),
                label(id),
                i + 1
            );
            out.push_str(&format!(
                "kmsctl_fleet_cluster_outcome{{{l},outcome=\"{outcome}\"}} 1\n"
            ));
            if let Some(x) = &st.result {
                secs.push_str(&format!(
                    "kmsctl_fleet_cluster_seconds{{{l}}} {:.1}\n",
                    x.seconds
                ));
            }
        }
    }
    out.push_str(&secs);
    out.push_str("# HELP kmsctl_fleet_clusters Clusters of the fleet run by outcome.\n# TYPE kmsctl_fleet_clusters gauge\n");
    for (k, v) in counts(r) {
        out.push_str(&format!(
            "kmsctl_fleet_clusters{{fleet=\"{}\",outcome=\"{k}\"}} {v}\n",
            label(&h.fleet_run_id)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::journal::{ClusterState, FleetHeader, FleetParams, FleetStatus};

    fn record() -> FleetRecord {
        let ids: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|n| format!("/subscriptions/s/resourceGroups/g/providers/Microsoft.ContainerService/managedClusters/{n}"))
            .collect();
        let mut selection: Vec<Cluster> = ids
            .iter()
            .map(|id| Cluster {
                id: id.clone(),
                name: id.rsplit('/').next().unwrap().into(),
                ..Default::default()
            })
            .collect();
        selection.push(Cluster {
            id: "/x/managedClusters/p".into(),
            name: "p<".into(),
            skip: Some("platform-managed".into()),
            ..Default::default()
        });
        let header = FleetHeader {
            format: 1,
            fleet_run_id: "f1".into(),
            procedure: "rotate".into(),
            params: FleetParams {
                waves: "1,100%".into(),
                order: crate::fleet::waves::Order::Name,
                max_parallel: 2,
                max_failures: 0,
                admin: false,
                shard: None,
                filter: Default::default(),
                run: Default::default(),
            },
            selection,
            waves: vec![vec![ids[0].clone()], vec![ids[1].clone(), ids[2].clone()]],
            started_at: chrono::Utc::now(),
        };
        let mut clusters = std::collections::HashMap::new();
        let res = |o| ClusterResult {
            outcome: o,
            run_id: Some("r".into()),
            key_before: Some("https://v.vault.azure.net/keys/k/1".into()),
            key_after: Some("https://v.vault.azure.net/keys/k/2".into()),
            message: None,
            seconds: 3.0,
        };
        clusters.insert(
            ids[0].to_ascii_lowercase(),
            ClusterState {
                run_id: Some("r".into()),
                result: Some(res(Outcome::Succeeded)),
            },
        );
        clusters.insert(
            ids[1].to_ascii_lowercase(),
            ClusterState {
                run_id: Some("r".into()),
                result: Some(res(Outcome::Unreachable)),
            },
        );
        FleetRecord {
            path: "/f.jsonl".into(),
            header,
            clusters,
            waves_finished: Default::default(),
            finished: Some((FleetStatus::Stopped, "1 failed".into())),
        }
    }

    #[test]
    fn the_status_page_metrics_and_text_tell_each_cluster_and_the_skipped() {
        let r = record();
        let c = counts(&r);
        assert_eq!(
            (
                c["succeeded"],
                c["unreachable"],
                c["not-started"],
                c["skipped"]
            ),
            (1, 1, 1, 1)
        );
        let text = plan_text(&r, &|_| None);
        assert!(
            text.contains("skipped p<") && text.contains("not started"),
            "{text}"
        );
        let page = page(&r);
        assert_eq!(page.matches("<tr class=\"cluster\"").count(), 3);
        assert!(page.contains("data-outcome=\"unreachable\"") && page.contains("p&lt;"));
        assert!(!page.contains("<script"));
        let m = prometheus(&r);
        assert!(m.contains("wave=\"2\",outcome=\"unreachable\"} 1"), "{m}");
        assert!(m.contains("kmsctl_fleet_clusters{fleet=\"f1\",outcome=\"skipped\"} 1"));
        let j: serde_json::Value = serde_json::from_str(&fleet_json(&r)).unwrap();
        assert_eq!(j["status"], "stopped");
        let line = cluster_line(
            &r.header.selection[1],
            &r.cluster(&r.header.waves[1][0]).result.unwrap(),
        );
        assert!(
            line.starts_with("b: unreachable in 3s; key 1 -> 2"),
            "{line}"
        );
    }
}
