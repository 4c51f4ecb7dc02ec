//! The fleet's key expiry as one self-contained HTML page (inline CSS and SVG; it fetches
//! nothing): a timeline row per cluster with a bar per key version from now to its expiry,
//! coloured by status, the warning and critical windows shaded, and a table beneath.

use crate::checks::expiry::{Status, Windows};
use crate::commands::expiry::ClusterReport;
use chrono::{DateTime, Duration, Utc};

const WIDTH: f64 = 1100.0;
const LABEL: f64 = 220.0;
const ROW: f64 = 34.0;
const TOP: f64 = 40.0;

pub fn colour(s: Status) -> &'static str {
    match s {
        Status::Ok => "#2e7d32",
        Status::Warning => "#f9a825",
        Status::Critical => "#c62828",
        Status::Unknown => "#757575",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn page(reports: &[ClusterReport], w: Windows, now: DateTime<Utc>) -> String {
    let latest = reports
        .iter()
        .flat_map(|r| r.versions.iter().filter_map(|v| v.expires_on))
        .max()
        .unwrap_or(now);
    // From now to the last expiry (at least twice the warning window, at most two years).
    let end = latest.max(now + w.warn * 2).min(now + Duration::days(730));
    let span = (end - now).num_seconds().max(1) as f64;
    let x = |t: DateTime<Utc>| {
        LABEL + (WIDTH - LABEL - 20.0) * ((t - now).num_seconds() as f64 / span).clamp(0.0, 1.0)
    };
    let height = TOP + ROW * reports.len().max(1) as f64 + 20.0;
    let worst = reports.iter().fold(Status::Ok, |s, r| s.worst(r.status));
    let mut svg = format!(
        r##"<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">"##
    );
    svg.push_str(&format!(
        r##"<rect class="window critical" x="{:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#c62828" fill-opacity="0.12"/><rect class="window warning" x="{:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#f9a825" fill-opacity="0.12"/>"##,
        x(now),
        x(now + w.critical) - x(now),
        height - TOP - 20.0,
        x(now + w.critical),
        x(now + w.warn) - x(now + w.critical),
        height - TOP - 20.0,
    ));
    // A tick every 30 days, labelled with its date.
    let mut t = now;
    while t <= end {
        svg.push_str(&format!(
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2:.1}" stroke="#bbb"/><text x="{0:.1}" y="{3}" font-size="11" text-anchor="middle">{4}</text>"##,
            x(t),
            TOP - 4.0,
            height - 20.0,
            TOP - 10.0,
            t.format("%Y-%m-%d")
        ));
        t += Duration::days(30);
    }
    for (i, r) in reports.iter().enumerate() {
        let y = TOP + ROW * i as f64 + 8.0;
        svg.push_str(&format!(
            r##"<g class="cluster" data-cluster="{}" data-status="{}"><text x="8" y="{:.1}" font-size="13">{}</text>"##,
            esc(&r.cluster),
            r.status.label(),
            y + 13.0,
            esc(&r.cluster)
        ));
        let needed: Vec<_> = r.versions.iter().filter(|v| v.needed).collect();
        let bar = (ROW - 12.0) / needed.len().max(1) as f64;
        for (j, v) in needed.iter().enumerate() {
            let (x0, x1) = match v.expires_on {
                Some(e) if e <= now => (x(now), x(now) + 6.0),
                Some(e) => (x(now), x(e)),
                None => (x(now), x(end)),
            };
            svg.push_str(&format!(
                r##"<rect class="version" data-key-id="{}" data-status="{}" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"{}><title>{}: {}</title></rect>"##,
                esc(&v.key_id),
                v.status.label(),
                x0,
                y + bar * j as f64,
                (x1 - x0).max(2.0),
                (bar - 2.0).max(2.0),
                colour(v.status),
                if v.expires_on.is_none() { r##" fill-opacity="0.45""## } else { "" },
                esc(&v.key_id),
                esc(&v.note)
            ));
        }
        if needed.is_empty() {
            svg.push_str(&format!(
                r##"<text class="no-version" x="{LABEL}" y="{:.1}" font-size="12" fill="{}">{}</text>"##,
                y + 13.0,
                colour(r.status),
                esc(r.notes.first().map_or("", String::as_str))
            ));
        }
        svg.push_str("</g>");
    }
    svg.push_str("</svg>");
    let mut rows = String::new();
    for r in reports {
        for v in r.versions.iter().filter(|v| v.needed) {
            rows.push_str(&format!(
                r##"<tr class="status-{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"##,
                v.status.label().to_lowercase(),
                v.status.label(),
                esc(&r.cluster),
                esc(&v.roles.join(", ")),
                esc(&v.key_id),
                esc(&v.note)
            ));
        }
        if r.versions.iter().all(|v| !v.needed) {
            rows.push_str(&format!(
                r##"<tr class="status-{}"><td>{}</td><td>{}</td><td></td><td></td><td>{}</td></tr>"##,
                r.status.label().to_lowercase(),
                r.status.label(),
                esc(&r.cluster),
                esc(&r.notes.join("; "))
            ));
        }
    }
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kmsctl: KMS key expiry</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 20px; }}
table {{ border-collapse: collapse; margin-top: 16px; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
tr.status-ok td:first-child {{ background: #2e7d32; color: #fff; }}
tr.status-warning td:first-child {{ background: #f9a825; }}
tr.status-critical td:first-child {{ background: #c62828; color: #fff; }}
tr.status-unknown td:first-child {{ background: #757575; color: #fff; }}
</style></head>
<body>
<h1>KMS key expiry: {n} cluster(s)</h1>
<p id="summary" data-worst="{worst}">Worst status: <strong>{worst}</strong>. Bars run from now ({now}) to each key version's expiry; shaded: critical within {crit} days, warning within {warn} days. Faded bars have no expiry date.</p>
{svg}
<table id="versions"><thead><tr><th>Status</th><th>Cluster</th><th>Role</th><th>Key version</th><th>Detail</th></tr></thead><tbody>{rows}</tbody></table>
</body></html>
"##,
        n = reports.len(),
        worst = worst.label(),
        now = now.format("%Y-%m-%d %H:%M UTC"),
        crit = w.critical.num_days(),
        warn = w.warn.num_days(),
    )
}
