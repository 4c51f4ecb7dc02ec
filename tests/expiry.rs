//! `kmsctl check-expiry` end to end against the twin: each boundary, disabled, missing, no
//! expiry, not yet valid, the previous version expiring while the current one is fine, and the
//! Prometheus output as a scraper reads it.

mod common;

use common::{World, small, text, world};
use kmsctl::sim::SimOptions;
use std::time::Duration;

const DAY: i64 = 86_400;

/// (case, expires in, not before in, enabled, exit code)
type Case = (&'static str, Option<i64>, Option<i64>, bool, i32);

/// One metric sample: (name, labels, value).
type Sample = (String, Vec<(String, String)>, f64);

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn check(w: &World, args: &[&str]) -> (i32, String) {
    let mut all = vec!["check-expiry", "--warn", "30d", "--critical", "7d"];
    all.extend_from_slice(args);
    let out = w.run(&all).await;
    (out.status.code().unwrap_or(-1), text(&out))
}

#[tokio::test]
async fn each_window_boundary_and_key_state_gives_its_exit_code() {
    let w = world(small(10)).await;
    let cases: &[Case] = &[
        ("90 days", Some(90 * DAY), None, true, 0),
        ("31 days", Some(31 * DAY), None, true, 0),
        ("29 days", Some(29 * DAY), None, true, 1),
        ("8 days", Some(8 * DAY), None, true, 1),
        ("6 days", Some(6 * DAY), None, true, 2),
        ("expired", Some(-DAY), None, true, 2),
        ("disabled", Some(90 * DAY), None, false, 2),
        ("not yet valid", Some(90 * DAY), Some(2 * DAY), true, 2),
        ("no expiry", None, None, true, 0),
    ];
    for (case, exp, nbf, enabled, want) in cases {
        w.first_key_version(|v| {
            v.exp = exp.map(|e| now() + e);
            v.nbf = nbf.map(|n| now() + n);
            v.enabled = *enabled;
        });
        let (code, out) = check(&w, &[]).await;
        assert_eq!(code, *want, "{case}: {out}");
    }
    let (_, out) = check(&w, &[]).await;
    assert!(
        out.contains("no expiry date"),
        "a key without expiry is OK with a note: {out}"
    );
}

#[tokio::test]
async fn a_missing_version_is_unknown_not_a_crash() {
    let w = world(small(10)).await;
    w.twin
        .shared
        .world()
        .keys
        .get_mut("kms-key")
        .unwrap()
        .versions
        .clear();
    let (code, out) = check(&w, &[]).await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("UNKNOWN") && out.contains("could not be read"),
        "{out}"
    );
}

#[tokio::test]
async fn the_previous_version_expiring_while_the_current_is_fine_is_critical() {
    let w = world(SimOptions {
        kms_status_period_seconds: 1,
        ..small(30)
    })
    .await;
    let out = w.run(&["rotate", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    // The version before the rotation: KMS may still use it, the ledger says it must stay alive.
    w.first_key_version(|v| v.exp = Some(now() + 3 * DAY));
    let (code, out) = check(&w, &["-o", "json"]).await;
    assert_eq!(code, 2, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out[..out.rfind('}').unwrap() + 1]).unwrap();
    let versions = doc["clusters"][0]["versions"].as_array().unwrap().clone();
    let previous = versions
        .iter()
        .find(|v| {
            v["roles"].to_string().contains("must-stay-alive")
                && !v["roles"].to_string().contains("in-use")
        })
        .unwrap_or_else(|| panic!("no previous version in {versions:?}"));
    assert_eq!(previous["status"], "CRITICAL");
    let current = versions
        .iter()
        .find(|v| v["roles"].to_string().contains("in-use"))
        .unwrap();
    assert_eq!(current["status"], "OK");
}

/// One sample: (metric name, labels, value), as a Prometheus scraper parses the text format.
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (head, value) = l.rsplit_once(' ').expect("name{labels} value");
            let (name, labels) = head.split_once('{').expect("labels");
            let labels = labels
                .trim_end_matches('}')
                .split("\",")
                .map(|kv| {
                    let (k, v) = kv.split_once("=\"").expect("k=\"v\"");
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value.parse().expect("a number"))
        })
        .collect()
}

#[tokio::test]
async fn prometheus_output_and_textfile_parse_as_metrics() {
    let w = world(SimOptions {
        key_expires_in: Some(Duration::from_secs(20 * DAY as u64)),
        ..small(10)
    })
    .await;
    let file = w.dir.path().join("kmsctl.prom");
    let out = w
        .run(&[
            "check-expiry",
            "-o",
            "prometheus",
            "--textfile",
            file.to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        stdout,
        "the textfile holds the same metrics"
    );
    for name in [
        "kmsctl_key_expiry_timestamp_seconds",
        "kmsctl_key_enabled",
        "kmsctl_check_status",
    ] {
        assert!(stdout.contains(&format!("# TYPE {name} gauge")), "{name}");
    }
    let s = samples(&stdout);
    let expiry = s
        .iter()
        .find(|(n, _, _)| n == "kmsctl_key_expiry_timestamp_seconds")
        .unwrap();
    let label = |k: &str| {
        expiry
            .1
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(label("cluster"), "aks-twin");
    assert_eq!(label("key"), "kms-key");
    assert_eq!(label("vault"), w.twin.ids().vault_host());
    assert!(
        (expiry.2 - (now() + 20 * DAY) as f64).abs() < 120.0,
        "{}",
        expiry.2
    );
    let status = s
        .iter()
        .find(|(n, _, _)| n == "kmsctl_check_status")
        .unwrap();
    assert_eq!(status.2, 1.0);
    // The only version is both in use and the newest: two series, one role each.
    let roles: Vec<String> = s
        .iter()
        .filter(|(n, _, _)| n == "kmsctl_key_expiry_timestamp_seconds")
        .flat_map(|(_, l, _)| {
            l.iter()
                .filter(|(k, _)| k == "role")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(roles, ["in-use", "newest"], "{stdout}");
    assert!(
        std::fs::read_dir(w.dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp")),
        "no temporary file left"
    );
}

/// A twin with four more clusters over two subscriptions: keys expiring in 90 and 20 days, one
/// on AKS's platform-managed rotation expiring in 5 days, one without expiry.
async fn fleet() -> World {
    let member = |s: &str| kmsctl::sim::fleet::parse_member(s).unwrap();
    world(SimOptions {
        key_expires_in: Some(Duration::from_secs(60 * DAY as u64)),
        fleet: ["90d", "20d", "auto:5d", "none"].map(member).to_vec(),
        ..small(10)
    })
    .await
}

#[tokio::test]
async fn all_clusters_in_two_subscriptions_one_row_each_and_the_worst_exit_code() {
    let w = fleet().await;
    let out = w.run(&["check-expiry", "--all", "-o", "json"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "the worst is CRITICAL: {}",
        text(&out)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    // Each line is a document shaped as the single-cluster one: {"clusters": [report]}.
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|doc| {
            let clusters = doc["clusters"].as_array().expect("a clusters array");
            assert_eq!(clusters.len(), 1, "one cluster per line: {doc}");
            clusters[0].clone()
        })
        .collect();
    let by_name = |n: &str| {
        rows.iter()
            .find(|r| r["cluster"] == n)
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert_eq!(by_name("aks-twin")["status"], "OK");
    assert_eq!(by_name("aks-fleet-1")["status"], "OK");
    assert_eq!(by_name("aks-fleet-2")["status"], "WARNING");
    assert_eq!(by_name("aks-fleet-3")["status"], "CRITICAL");
    assert_eq!(
        by_name("aks-fleet-3")["experience"],
        "platform-managed-rotation"
    );
    assert_eq!(by_name("aks-fleet-4")["status"], "OK");
    // The single-cluster document has the same keys, at every level the fleet line has.
    let single = w.run(&["check-expiry", "-o", "json"]).await;
    let single: serde_json::Value = serde_json::from_slice(&single.stdout).unwrap();
    let keys = |v: &serde_json::Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<String>>()
    };
    assert_eq!(keys(&single), ["clusters"]);
    assert_eq!(keys(&single["clusters"][0]), keys(by_name("aks-twin")));
    // Platform-managed rotation: its own remedy, never kmsctl's versioned-key rotation.
    let platform = by_name("aks-fleet-3").to_string();
    assert!(!platform.contains("rotate --twice"), "{platform}");
    let subscriptions: std::collections::BTreeSet<&str> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().split('/').nth(2).unwrap())
        .collect();
    assert_eq!(
        subscriptions.len(),
        2,
        "two subscriptions: {subscriptions:?}"
    );
    let table = w.run(&["check-expiry", "--all"]).await;
    let table = String::from_utf8(table.stdout).unwrap();
    assert_eq!(
        table.lines().filter(|l| l.contains("aks-")).count(),
        5,
        "{table}"
    );
}

fn chromium(args: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("chromium runs (Debian's package; bash .ci/run installs it)");
    assert!(out.status.success(), "chromium: {}", text(&out));
    out
}

#[tokio::test]
async fn the_html_timeline_renders_in_headless_chromium() {
    let w = fleet().await;
    let out = w.run(&["check-expiry", "--all", "-o", "html"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let page = w.dir.path().join("fleet.html");
    std::fs::write(&page, &out.stdout).unwrap();
    let html = String::from_utf8(out.stdout).unwrap();
    assert!(
        !html.contains("http://") || html.matches("http://").count() == 1,
        "only the SVG namespace"
    );
    assert!(
        !html.contains("<script") && !html.contains("<link") && !html.contains("src="),
        "self-contained"
    );
    let url = format!("file://{}", page.display());
    // The DOM as the browser built it: one timeline row per cluster, with its status.
    let dom = String::from_utf8(chromium(&["--dump-dom", &url]).stdout).unwrap();
    assert_eq!(dom.matches("<g class=\"cluster\"").count(), 5, "{dom}");
    for (cluster, status) in [
        ("aks-fleet-3", "CRITICAL"),
        ("aks-fleet-2", "WARNING"),
        ("aks-twin", "OK"),
    ] {
        assert!(
            dom.contains(&format!(
                "data-cluster=\"{cluster}\" data-status=\"{status}\""
            )),
            "{cluster} {status}"
        );
    }
    assert!(dom.contains("data-worst=\"CRITICAL\""));
    // The screenshot shows the statuses' colours.
    let shot = w.dir.path().join("fleet.png");
    chromium(&[
        "--window-size=1200,700",
        &format!("--screenshot={}", shot.display()),
        &url,
    ]);
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let count = |rgb: [u8; 3]| {
        buf[..info.buffer_size()]
            .chunks(channels)
            .filter(|p| p[..3].iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 6))
            .count()
    };
    assert!(count([0xc6, 0x28, 0x28]) > 200, "critical red drawn");
    assert!(count([0xf9, 0xa8, 0x25]) > 200, "warning amber drawn");
    assert!(count([0x2e, 0x7d, 0x32]) > 1000, "ok green drawn");
}

#[tokio::test]
async fn the_cronjob_applies_and_runs_the_check_with_workload_identity() {
    let w = world(small(10)).await;
    let client = "0b5c3e2a-8d7f-4e61-9a43-2f1c6d8e7b90";
    let out = w
        .run(&[
            "check-expiry",
            "--cronjob",
            "--client-id",
            client,
            "--schedule",
            "30 5 * * 1",
            "--namespace",
            "ops",
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_json::Value> = yaml
        .split("\n---\n")
        .skip(1)
        .map(|d| serde_saphyr::from_str(d).expect("each document parses"))
        .collect();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    assert_eq!(
        kind("ServiceAccount")["metadata"]["annotations"]["azure.workload.identity/client-id"],
        client
    );
    let cron = kind("CronJob");
    assert_eq!(cron["spec"]["schedule"], "30 5 * * 1");
    assert_eq!(cron["metadata"]["namespace"], "ops");
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "kmsctl-check-expiry");
    assert!(
        pod["spec"]["containers"][0]["args"]
            .to_string()
            .contains("\"workload\"")
    );
    assert_eq!(kind("RoleBinding")["subjects"][0]["namespace"], "ops");

    // Real kubectl accepts it (client-side dry run against the twin's discovery) ...
    let applied = w.kubectl_apply_dry_run(yaml.clone()).await;
    assert!(applied.status.success(), "{}", text(&applied));
    assert!(
        String::from_utf8_lossy(&applied.stdout)
            .contains("cronjob.batch/kmsctl-check-expiry created (dry run)")
    );
    // ... and would reject a broken one (the check can fail).
    let broken = w
        .kubectl_apply_dry_run(yaml.replace("kind: CronJob", "kind: CronJobb"))
        .await;
    assert!(!broken.status.success());

    // What the pod runs: --auth workload with a projected service account token.
    let token = w.dir.path().join("azure-identity-token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6b3BzOmttc2N0bC1jaGVjay1leHBpcnkifQ.c2ln").unwrap();
    let mut c = w.command(&["check-expiry", "--auth", "workload", "-o", "json"]);
    c.env_remove("AZURE_CLIENT_SECRET")
        .env("AZURE_FEDERATED_TOKEN_FILE", &token);
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"status\": \"OK\""),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn fix_extend_sets_a_later_expiry_never_on_a_disabled_version() {
    let w = world(SimOptions {
        key_expires_in: Some(Duration::from_secs(5 * DAY as u64)),
        ..small(10)
    })
    .await;
    assert_eq!(check(&w, &[]).await.0, 2);
    let out = w
        .run(&["check-expiry", "--fix", "extend=90d", "--yes"])
        .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "after the fix the check passes: {}",
        text(&out)
    );
    let exp = w.key_versions()[0]["exp"]
        .as_i64()
        .unwrap_or_else(|| panic!("{:?}", w.key_versions()));
    assert!((exp - (now() + 90 * DAY)).abs() < 120, "{exp}");
    // The check is OK now: a shorter extension has nothing to do (exit 0, nothing changed);
    // a disabled version is refused, nothing changed.
    let before = w.fingerprint();
    let out = w
        .run(&["check-expiry", "--fix", "extend=30d", "--yes"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("nothing needed extending"),
        "{}",
        text(&out)
    );
    assert_eq!(w.fingerprint(), before);
    w.first_key_version(|v| v.enabled = false);
    let before_disabled = w.fingerprint();
    let out = w
        .run(&["check-expiry", "--fix", "extend=120d", "--yes"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("never extends a disabled version"),
        "{}",
        text(&out)
    );
    assert_eq!(w.fingerprint(), before_disabled);
    assert_ne!(before, before_disabled);
    // Without --yes and without a terminal: refused, nothing changed.
    w.first_key_version(|v| {
        v.enabled = true;
        v.exp = Some(now() + 3 * DAY);
    });
    let before = w.fingerprint();
    let out = w.run(&["check-expiry", "--fix", "extend=200d"]).await;
    assert!(text(&out).contains("pass --yes"), "{}", text(&out));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(w.fingerprint(), before);
}

#[tokio::test]
async fn fix_rotate_runs_the_rotate_playbook() {
    let w = world(SimOptions {
        key_expires_in: Some(Duration::from_secs(20 * DAY as u64)),
        kms_status_period_seconds: 1,
        ..small(30)
    })
    .await;
    let out = w.run(&["check-expiry", "--fix", "rotate", "--yes"]).await;
    let versions = w.key_versions();
    assert_eq!(versions.len(), 2, "one rotation: {}", text(&out));
    assert_eq!(w.kms()["keyId"], versions[1]["kid"]);
    w.assert_all_current();
    // The version before stays needed by KMS until the next rotation: still a WARNING.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("must-stay-alive"), "{}", text(&out));
}

/// The twin's key ledger, as kmsctl wrote it.
fn ledger(w: &World) -> serde_json::Value {
    let wld = w.twin.shared.world();
    wld.objects
        .list("configmaps", Some("kube-system"), None)
        .into_iter()
        .find(|c| c["metadata"]["name"] == "kmsctl-key-ledger")
        .and_then(|c| serde_json::from_str(c["data"]["ledger.json"].as_str()?).ok())
        .expect("a key ledger")
}

#[tokio::test]
async fn kms_off_with_versions_the_ledger_still_needs_is_judged_on_them() {
    let w = world(SimOptions {
        key_expires_in: Some(Duration::from_secs(3 * DAY as u64)),
        kms_status_period_seconds: 1,
        ..small(60)
    })
    .await;
    let kid = w.kms()["keyId"].as_str().unwrap().to_string();
    // A disable that cannot rewrite every Secret: KMS is off, the Secrets left are still under
    // the key version, which the ledger keeps as must-stay-alive.
    // Only the applications' namespaces (team-000...): the canary in kube-system is written.
    w.twin.add_faults(
        (0..5)
            .map(|i| {
                serde_json::from_value(serde_json::json!({
                    "method": "PUT",
                    "path": format!("/api/v1/namespaces/team-{i:03}/secrets/*"),
                    "status": 403,
                    "probability": 0.5
                }))
                .unwrap()
            })
            .collect(),
    );
    let out = w.run(&["disable", "--yes", "--margin-days", "1"]).await;
    // 4: some Secrets could not be re-encrypted (resumable).
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    w.twin.shared.world().faults.clear();
    assert_eq!(w.kms()["enabled"], false, "KMS is off: {}", text(&out));
    assert!(ledger(&w).to_string().contains(&kid), "{}", ledger(&w));

    let (code, out) = check(&w, &[]).await;
    assert_eq!(code, 2, "CRITICAL, not OK (off): {out}");
    assert!(
        out.contains("must-stay-alive") && out.contains(&kid),
        "{out}"
    );
    let out = w
        .run(&["check-expiry", "--warn", "30d", "--critical", "2d"])
        .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "WARNING inside the warning window only: {}",
        text(&out)
    );

    // A textfile that cannot be written: UNKNOWN, naming it, whatever the clusters' status.
    let file = w.dir.path().join("no-such-dir").join("kmsctl.prom");
    let (code, out) = check(&w, &["--textfile", file.to_str().unwrap()]).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains(file.to_str().unwrap()), "{out}");

    // --fix extend acts on the version that made it CRITICAL, and says what it changed.
    let out = w
        .run(&["check-expiry", "--fix", "extend=90d", "--yes", "-o", "json"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let x = &doc["clusters"][0]["extended"][0];
    assert_eq!(x["keyId"], kid.as_str(), "{doc}");
    assert!(x["from"].is_string() && x["to"].is_string(), "{doc}");
    let exp = w.key_versions()[0]["exp"].as_i64().unwrap();
    assert!((exp - (now() + 90 * DAY)).abs() < 120, "{exp}");
}

#[tokio::test]
async fn kms_off_with_nothing_in_the_ledger_is_ok_off() {
    let w = world(SimOptions {
        kms: false,
        key_expires_in: Some(Duration::from_secs(3 * DAY as u64)),
        ..small(10)
    })
    .await;
    let (code, out) = check(&w, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK") && out.contains("(off)"), "{out}");
}

#[tokio::test]
async fn durations_need_a_unit_and_the_error_names_the_flag() {
    let w = world(small(10)).await;
    // A mistake in the command line is refused (2), as clap refuses an unknown flag.
    for (args, flag, code) in [
        (&["check-expiry", "--warn", "30"][..], "--warn", 2),
        (&["check-expiry", "--critical", "7"][..], "--critical", 2),
        (
            &["check-expiry", "--fix", "extend=90", "--yes"][..],
            "--fix",
            2,
        ),
    ] {
        let before = w.fingerprint();
        let out = w.run(args).await;
        let t = text(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {t}");
        assert!(t.contains(flag) && t.contains("unit"), "{args:?}: {t}");
        let other = if flag == "--warn" {
            "--critical"
        } else {
            "--warn"
        };
        assert!(!t.contains(other), "{args:?} blames {other}: {t}");
        assert_eq!(w.fingerprint(), before);
    }
}

#[tokio::test]
async fn fix_extend_acts_on_the_must_stay_alive_version_and_adds_no_expiry() {
    let w = world(SimOptions {
        kms_status_period_seconds: 1,
        ..small(30)
    })
    .await;
    let out = w.run(&["rotate", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    // The previous version expires in 3 days; the one in use has no expiry.
    w.first_key_version(|v| v.exp = Some(now() + 3 * DAY));
    assert_eq!(check(&w, &[]).await.0, 2);
    let out = w
        .run(&["check-expiry", "--fix", "extend=90d", "--yes"])
        .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let versions = w.key_versions();
    let previous = versions[0]["exp"].as_i64().unwrap();
    assert!((previous - (now() + 90 * DAY)).abs() < 120, "{versions:?}");
    assert!(
        versions[1]["exp"].is_null(),
        "no expiry added: {versions:?}"
    );
    let kid = versions[0]["kid"].as_str().unwrap();
    assert!(
        t.contains(&format!("extended {kid}")) && t.contains(" -> "),
        "{t}"
    );
}

#[tokio::test]
async fn a_platform_managed_cluster_is_not_told_to_run_rotate_twice() {
    let w = fleet().await;
    let out = w.run(&["check-expiry", "--all", "-o", "json"]).await;
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout
        .lines()
        .find(|l| l.contains("\"aks-fleet-3\""))
        .unwrap_or_else(|| panic!("no aks-fleet-3 in {stdout}"));
    assert!(line.contains("platform-managed-rotation"), "{line}");
    assert!(!line.contains("rotate --twice"), "{line}");
    assert!(line.contains("az keyvault key rotate"), "{line}");
}

#[tokio::test]
async fn a_textfile_that_cannot_be_written_is_unknown_and_named() {
    let w = world(small(10)).await;
    let file = w.dir.path().join("no-such-dir").join("kmsctl.prom");
    let (code, out) = check(&w, &["--textfile", file.to_str().unwrap()]).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains(file.to_str().unwrap()), "{out}");
    let out = w
        .run(&[
            "check-expiry",
            "--all",
            "--textfile",
            file.to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains(file.to_str().unwrap()),
        "{}",
        text(&out)
    );
}

fn fault(w: &World, rule: serde_json::Value) {
    w.twin
        .add_faults(vec![serde_json::from_value(rule).expect("a fault rule")]);
}

#[tokio::test]
async fn a_version_list_that_cannot_be_read_is_unknown() {
    let w = world(small(10)).await;
    assert_eq!(check(&w, &[]).await.0, 0);
    fault(
        &w,
        serde_json::json!({ "method": "GET", "path": "/subscriptions/**/keys/kms-key/versions", "status": 500 }),
    );
    let out = w
        .run(&["check-expiry", "--warn", "10d", "--critical", "7d"])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("version list could not be read"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_rotation_policy_that_cannot_be_read_is_unknown() {
    let w = world(small(10)).await;
    fault(
        &w,
        serde_json::json!({ "method": "GET", "path": "/subscriptions/**/vaults/*/keys/kms-key", "status": 429 }),
    );
    let out = w
        .run(&[
            "check-expiry",
            "--warn",
            "1d",
            "--critical",
            "1h",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["clusters"][0]["status"], "UNKNOWN", "{doc}");
    assert!(
        doc["clusters"][0]["rotation"]
            .as_str()
            .unwrap()
            .contains("could not be read"),
        "{doc}"
    );
}

#[tokio::test]
async fn whatever_keeps_the_check_from_judging_is_unknown_and_fix_extend_with_nothing_to_do_is_ok()
{
    let w = world(small(10)).await;
    // No credential secret: a refusal of the configuration, which a monitor must read as
    // UNKNOWN, not CRITICAL.
    let mut c = w.command(&["check-expiry"]);
    c.env_remove("AZURE_CLIENT_SECRET");
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("UNKNOWN"), "{}", text(&out));
    // Overflowing durations: refused naming the flag, never a panic.
    let out = w
        .run(&["check-expiry", "--warn", "99999999999999999d"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--warn"), "{}", text(&out));
    let before = w.fingerprint();
    let out = w
        .run(&["check-expiry", "--fix", "extend=100000000d", "--yes"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--fix"), "{}", text(&out));
    // Everything OK: nothing needed extending, exit 0, nothing changed.
    let out = w
        .run(&["check-expiry", "--fix", "extend=90d", "--yes"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("nothing needed extending"),
        "{}",
        text(&out)
    );
    assert_eq!(w.fingerprint(), before);
    // A version that cannot be read: UNKNOWN, nothing changed.
    w.first_key_version(|v| v.exp = Some(now() + 3 * DAY));
    let before = w.fingerprint();
    fault(
        &w,
        serde_json::json!({ "method": "GET", "path": "/subscriptions/**/keys/kms-key/versions/*", "status": 500 }),
    );
    let out = w
        .run(&["check-expiry", "--fix", "extend=90d", "--yes"])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(w.fingerprint(), before);
}

#[tokio::test]
async fn the_ledger_of_another_cluster_is_not_trusted() {
    let w = fleet().await;
    // The twin's kubeconfig is aks-twin's: aks-fleet-1's check cannot read its ledger there.
    let (code, out) = check(&w, &["-g", "rg-fleet", "-n", "aks-fleet-1"]).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("is not this cluster's API server"), "{out}");
    // aks-twin's own check reads it.
    assert_eq!(check(&w, &[]).await.0, 0);
}

#[tokio::test]
async fn a_disable_that_rewrote_every_secret_leaves_nothing_to_watch() {
    let w = world(SimOptions {
        key_expires_in: Some(Duration::from_secs(3 * DAY as u64)),
        kms_status_period_seconds: 1,
        ..small(20)
    })
    .await;
    let out = w.run(&["disable", "--yes", "--margin-days", "1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        ledger(&w).to_string().contains("reencryptedAwayAt"),
        "{}",
        ledger(&w)
    );
    let (code, out) = check(&w, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(off)") && !out.contains("resume"), "{out}");
}

#[tokio::test]
async fn a_disabled_newest_version_the_cluster_does_not_use_is_a_note() {
    let w = world(small(10)).await;
    {
        let mut wld = w.twin.shared.world();
        let key = wld.keys.get_mut("kms-key").unwrap();
        let mut v = key.versions[0].clone();
        v.version = "f".repeat(32);
        v.enabled = false;
        v.created += 60;
        key.versions.push(v);
    }
    let (code, out) = check(&w, &[]).await;
    assert_eq!(code, 0, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("newest"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        !line.contains("CRITICAL") && line.contains("note") && line.contains("disabled"),
        "{out}"
    );
}

#[tokio::test]
async fn all_judges_older_enabled_versions_as_possibly_needed() {
    let w = world(SimOptions {
        key_expires_in: Some(Duration::from_secs(3 * DAY as u64)),
        kms_status_period_seconds: 1,
        ..small(30)
    })
    .await;
    let out = w.run(&["rotate", "--yes", "--margin-days", "1"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(check(&w, &[]).await.0, 2);
    let (code, out) = check(&w, &["--all"]).await;
    assert_eq!(code, 2, "{out}");
    let out = w.run(&["check-expiry", "--all", "-o", "json"]).await;
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        t.contains("possibly-needed") && t.contains("check-expiry --subscription"),
        "{t}"
    );
    // Disabled, an older version decides nothing.
    w.first_key_version(|v| v.enabled = false);
    assert_eq!(check(&w, &["--all"]).await.0, 0);
}

#[tokio::test]
async fn fix_extend_failing_part_way_says_what_changed_and_which_failed() {
    let w = world(SimOptions {
        kms_status_period_seconds: 1,
        ..small(30)
    })
    .await;
    let out = w.run(&["rotate", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let v2 = {
        let mut wld = w.twin.shared.world();
        let key = wld.keys.get_mut("kms-key").unwrap();
        for v in key.versions.iter_mut() {
            v.exp = Some(now() + 3 * DAY);
        }
        // The previous version (must stay alive) comes after the one in use.
        key.versions[0].version.clone()
    };
    fault(
        &w,
        serde_json::json!({ "method": "PATCH", "host": "vault.azure.net", "path": format!("/keys/kms-key/{v2}"), "status": 403 }),
    );
    let out = w
        .run(&["check-expiry", "--fix", "extend=90d", "--yes", "-o", "json"])
        .await;
    let t = text(&out);
    // The check after the fix: still CRITICAL, from the version that was not extended.
    assert_eq!(out.status.code(), Some(2), "{t}");
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {t}"));
    let c = &doc["clusters"][0];
    assert_eq!(c["extended"].as_array().map(Vec::len), Some(1), "{doc}");
    assert!(
        !c["extended"][0]["keyId"].as_str().unwrap().contains(&v2),
        "{doc}"
    );
    assert!(
        c["notes"].to_string().contains(&v2) && c["notes"].to_string().contains("could not set"),
        "{doc}"
    );
    assert_eq!(t.matches("extended https").count(), 1, "{t}");
}

#[tokio::test]
async fn fix_rotate_with_nothing_inside_a_window_rotates_nothing() {
    let w = world(SimOptions {
        key_expires_in: Some(Duration::from_secs(90 * DAY as u64)),
        ..small(10)
    })
    .await;
    let out = w.run(&["check-expiry", "--fix", "rotate", "--yes"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("nothing needed rotating"),
        "{}",
        text(&out)
    );
    assert_eq!(w.key_versions().len(), 1, "no rotation");
}

/// A schedule's `--fix rotate` finds the rotation a previous job left (killed mid-way) and
/// finishes it instead of starting another.
#[tokio::test]
async fn fix_rotate_resumes_an_unfinished_run_first() {
    let w = world(SimOptions {
        key_expires_in: Some(Duration::from_secs(20 * DAY as u64)),
        kms_status_period_seconds: 1,
        lro_seconds: 1,
        ..small(30)
    })
    .await;
    let killed = w
        .kill_when(&["rotate", "--yes"], |journal, _| {
            journal.matches("\"type\":\"step-finished\"").count() >= 3
        })
        .await;
    assert!(killed, "the rotation was killed mid-way");
    let out = w.run(&["check-expiry", "--fix", "rotate", "--yes"]).await;
    assert!(text(&out).contains("resuming it"), "{}", text(&out));
    let versions = w.key_versions();
    assert_eq!(versions.len(), 2, "one rotation, finished: {}", text(&out));
    assert_eq!(w.kms()["keyId"], versions[1]["kid"]);
    w.assert_all_current();
}

#[tokio::test]
async fn a_cronjob_with_fix_rotate_carries_the_roles_and_a_volume_for_its_journal() {
    let w = world(small(5)).await;
    let client = "0b5c3e2a-8d7f-4e61-9a43-2f1c6d8e7b90";
    let args = ["check-expiry", "--cronjob", "--client-id", client];
    let out = w.run(&[&args[..], &["--fix", "extend=90d"]].concat()).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--fix rotate only"), "{}", text(&out));
    let out = w.run(&[&args[..], &["--fix", "rotate"]].concat()).await;
    assert!(out.status.success(), "{}", text(&out));
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_json::Value> = yaml
        .split("\n---\n")
        .skip(1)
        .map(|d| serde_saphyr::from_str(d).expect("each document parses"))
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for k in [
        "ClusterRole",
        "ClusterRoleBinding",
        "PersistentVolumeClaim",
        "CronJob",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    let cron = docs.iter().find(|d| d["kind"] == "CronJob").unwrap();
    let c = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    let a = c["args"].to_string();
    assert!(a.contains("\"--fix\",\"rotate\",\"--yes\""), "{a}");
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/var/lib/kmsctl");
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .unwrap();
    assert_eq!(binding["subjects"][0]["name"], "kmsctl-check-expiry");
    assert_eq!(binding["roleRef"]["name"], "kmsctl");
    // The read-only check has none of it.
    let out = w.run(&args).await;
    let plain = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !plain.contains("ClusterRoleBinding") && !plain.contains("--fix"),
        "{plain}"
    );
    let applied = w.kubectl_apply_dry_run(yaml).await;
    assert!(applied.status.success(), "{}", text(&applied));
}
