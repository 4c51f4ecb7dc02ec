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
    let steps = report["steps"].as_array().cloned().unwrap_or_default();
    let label = ["first rotation", "second rotation"];
    let mut rotation = 0;
    for s in &steps {
        let o = &s["output"];
        match s["step"].as_str() {
            Some("rotate-key") => out.push_str(&format!(
                "- {}: new key version {}\n",
                label.get(rotation).unwrap_or(&"rotation"),
                o["keyId"].as_str().unwrap_or("?")
            )),
            Some("prove-key-switch") => out.push_str(&format!(
                "  proof that both API server replicas write with it ({}): {}\n",
                o["evidence"].as_str().unwrap_or("?"),
                o["detail"].as_str().unwrap_or_default()
            )),
            Some("reencrypt") => {
                out.push_str(&format!(
                    "  re-encryption ({}): {} Secrets rewritten under the new key, then a verification pass over fresh connections rewrote none ({} checked)\n",
                    label.get(rotation).unwrap_or(&"rotation"),
                    o["totals"]["rewritten"],
                    o["verification"]["unchanged"]
                ));
                rotation += 1;
            }
            _ => {}
        }
    }
    out.push_str(
        "- one Secret more than seeded: kube-system/kmsctl-canary, which kmsctl owns to prove each key switch before re-encrypting\n\
         - the oldest key version is now safe to retire (kmsctl rotate --twice --retire-old disables it, never deletes it); the previous one must stay alive\n\
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
