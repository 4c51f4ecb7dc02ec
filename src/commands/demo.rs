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
    let dir = tempfile_dir()?;
    let opts = SimOptions {
        namespaces: a.namespaces,
        secrets: a.secrets,
        lro_seconds: 3,
        kms_propagation_seconds: 5,
        latency_ms: 2,
        ..Default::default()
    };
    eprintln!(
        "starting a twin: AKS {} with KMS on a public vault, {} namespaces, {} Secrets",
        opts.kubernetes_version, opts.namespaces, opts.secrets
    );
    let twin = Twin::start(opts).await?;
    twin.write_files(&dir)?;
    eprintln!("before:\n  {}", storage_line(&twin));
    let exe = std::env::current_exe().context("finding the kmsctl binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["rotate", "--twice", "--yes"])
        .env("XDG_STATE_HOME", dir.join("state"));
    for (k, v) in twin.env_vars(&dir) {
        cmd.env(k, v);
    }
    eprintln!("running: kmsctl rotate --twice --yes");
    let status = cmd
        .status()
        .await
        .context("running kmsctl rotate --twice")?;
    eprintln!("after:\n  {}", storage_line(&twin));
    // The twin ends with the demo, and so do its files (for a lasting one: kmsctl sim serve).
    let _ = std::fs::remove_dir_all(&dir);
    Ok(status.code().unwrap_or(1))
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("kmsctl-demo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
