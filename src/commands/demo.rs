//! `kmsctl demo`: the main job on an embedded twin. A twin (20 namespaces, 5,000 Secrets, KMS on
//! a public vault) is started in-process; kmsctl itself then runs `rotate --twice --yes` against
//! it as a separate process with only the twin's environment, as a user would.

use crate::cli::DemoArgs;
use crate::sim::{SimOptions, Twin};
use anyhow::Context;

fn storage_line(twin: &Twin) -> String {
    let doc = twin.inspect();
    let kms = &doc["cluster"]["properties"]["securityProfile"]["azureKeyVaultKms"];
    format!(
        "keyId {}\n  storage: {} Secrets, by key: {}",
        kms["keyId"].as_str().unwrap_or("-"),
        doc["storage"]["total"],
        serde_json::to_string_pretty(&doc["storage"]["byKey"]).unwrap_or_default()
    )
}

pub async fn run(a: DemoArgs) -> anyhow::Result<i32> {
    let started = std::time::Instant::now();
    let dir = tempfile_dir()?;
    // Two API server replicas that learn a new key at their own status calls (every 5 s here,
    // about 60 s on AKS): the demo shows the proofs doing their work.
    let status_period = 5;
    let opts = SimOptions {
        namespaces: a.namespaces,
        secrets: a.secrets,
        lro_seconds: 3,
        latency_ms: 2,
        apiserver_replicas: 2,
        kms_status_period_seconds: status_period,
        ..Default::default()
    };
    crate::say!(
        "starting a twin: AKS {} with KMS on a public vault, {} namespaces, {} Secrets, 2 API server replicas (each learns a new key at its own KMS status call, every {status_period}s)",
        opts.kubernetes_version,
        opts.namespaces,
        opts.secrets
    );
    let twin = Twin::start(opts).await?;
    twin.write_files(&dir)?;
    crate::say!("before:\n  {}", storage_line(&twin));
    let exe = std::env::current_exe().context("finding the kmsctl binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["rotate", "--twice", "--yes", "-o", "json"])
        .env("XDG_STATE_HOME", dir.join("state"))
        .env(
            "KMSCTL_KMS_STATUS_PERIOD_SECONDS",
            status_period.to_string(),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    for (k, v) in twin.env_vars(&dir) {
        cmd.env(k, v);
    }
    crate::say!("running: kmsctl rotate --twice --yes\n");
    // Not `output()`: it would capture stderr too, and the run's progress must show.
    let output = cmd
        .spawn()
        .context("running kmsctl rotate --twice")?
        .wait_with_output()
        .await
        .context("running kmsctl rotate --twice")?;
    crate::say!("\nafter:\n  {}", storage_line(&twin));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    crate::say!("{}", explain(&report, started.elapsed()));
    // The twin ends with the demo, and so do its files (for a lasting one: kmsctl sim serve).
    let _ = std::fs::remove_dir_all(&dir);
    Ok(output.status.code().unwrap_or(1))
}

/// What the run proved, in plain words.
fn explain(report: &serde_json::Value, elapsed: std::time::Duration) -> String {
    let mut out = format!(
        "\nwhat happened ({:.0}s in all): run {}\n",
        elapsed.as_secs_f64(),
        report["status"].as_str().unwrap_or("did not report")
    );
    // The run's own closing summary: what changed, what proved each switch, the passes, and
    // which key versions must stay alive or may be retired.
    match serde_json::from_value::<crate::engine::summary::Summary>(report["summary"].clone()) {
        Ok(s) => out.push_str(&crate::output::run::render_summary(&s)),
        Err(e) => out.push_str(&format!("(the run reported no summary: {e})\n")),
    }
    out.push_str(
        "\n- one Secret more than seeded: kube-system/kmsctl-canary, which kmsctl owns to prove each key switch before re-encrypting\n\
         - `kmsctl rotate --twice --retire-old` disables (never deletes) the version in use before the run once it may go\n\
         - the run's journal was in a temporary folder; a real run keeps it in $XDG_STATE_HOME/kmsctl/runs (or ~/.local/state/kmsctl/runs), so `kmsctl resume` continues it after a kill\n\
         next: start a lasting twin with `kmsctl sim serve --dir /tmp/twin`, then `. /tmp/twin/env` and try `kmsctl status`, `kmsctl rotate --dry-run`, `kmsctl disable --yes`, or kill a run and `kmsctl resume --yes`\n",
    );
    out
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("kmsctl-demo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
