//! The playbooks issue end to end against the twin: vault-mode and migrate-v2 (each surviving a
//! SIGKILL in its longest step), users' playbooks and `plan`, completions and man pages.

mod common;

use common::{World, small, text, world};
use kmsctl::sim::{NetworkAccess, SimOptions};
use serde_json::Value;

fn vault(w: &World) -> Value {
    w.inspect()["vault"]["properties"].clone()
}

fn cluster(w: &World) -> Value {
    w.inspect()["cluster"]["properties"].clone()
}

/// A journal line says step `index` started.
fn started(j: &str, index: usize) -> bool {
    j.contains(&format!("\"type\":\"step-started\",\"index\":{index},"))
}

fn public_kms(secrets: usize) -> SimOptions {
    SimOptions {
        network_access: NetworkAccess::Public,
        vnet_integration: true,
        lro_seconds: 2,
        apiserver_replicas: 2,
        kms_status_period_seconds: 1,
        ..small(secrets)
    }
}

#[tokio::test]
async fn vault_mode_to_private_and_back_each_survive_a_sigkill() {
    let w = world(public_kms(300)).await;
    let vault_id = w.twin.ids().vault_id();
    // Killed while AKS turns KMS on again in private mode (the operation is the longest step
    // here), then resumed.
    let killed = w
        .kill_when(
            &[
                "vault-mode",
                "--to",
                "private",
                "--vault-resource-id",
                &vault_id,
                "--yes",
            ],
            |j, twin| {
                started(j, 8)
                    && twin.world().cluster["properties"]["provisioningState"] == "Updating"
            },
        )
        .await;
    assert!(killed, "the run ended before the kill point");
    w.resume_to_the_end().await;
    assert_eq!(w.kms()["enabled"], true);
    assert_eq!(w.kms()["keyVaultNetworkAccess"], "Private");
    assert_eq!(w.kms()["keyVaultResourceId"], vault_id.as_str());
    assert_eq!(vault(&w)["publicNetworkAccess"], "Disabled");
    assert_eq!(vault(&w)["networkAcls"]["defaultAction"], "Deny");
    let endpoints = vault(&w)["privateEndpointConnections"].clone();
    assert_eq!(endpoints.as_array().map(Vec::len), Some(1), "{endpoints}");
    let journal = w.journal_lines();
    assert!(
        journal.contains("\"privateEndpoint\""),
        "verify-kms checked the private endpoint"
    );

    // Back to public, killed while AKS turns KMS off.
    let killed = w
        .kill_when(&["vault-mode", "--to", "public", "--yes"], |j, twin| {
            j.matches("\"type\":\"step-started\",\"index\":2,").count() == 2
                && twin.world().cluster["properties"]["provisioningState"] == "Updating"
        })
        .await;
    assert!(killed, "the second run ended before the kill point");
    w.resume_to_the_end().await;
    assert_eq!(w.kms()["enabled"], true);
    assert_eq!(w.kms()["keyVaultNetworkAccess"], "Public");
    assert_eq!(vault(&w)["publicNetworkAccess"], "Enabled");
    assert_eq!(vault(&w)["networkAcls"]["defaultAction"], "Allow");
    assert_eq!(
        vault(&w)["privateEndpointConnections"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "AKS's private endpoint goes with private mode"
    );
    // Already public: nothing to do, nothing changed.
    let before = w.fingerprint();
    let out = w.run(&["vault-mode", "--to", "public", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing to do"), "{}", text(&out));
    assert_eq!(w.fingerprint(), before);
}

#[tokio::test]
async fn vault_mode_refuses_what_aks_would_break() {
    let no_vnet = world(SimOptions {
        vnet_integration: false,
        ..public_kms(10)
    })
    .await;
    no_vnet
        .refused(
            &["vault-mode", "--to", "private", "--yes"],
            "API Server VNet Integration",
        )
        .await;

    let w = world(public_kms(10)).await;
    // Without Key Vault Contributor the identity cannot get the private link AKS creates.
    w.twin.shared.world().role_assignments.retain(|r| {
        !r["properties"]["roleDefinitionId"]
            .as_str()
            .unwrap_or_default()
            .ends_with("f25e0fa2-a7c8-4377-a976-54943a77a395")
    });
    w.refused(
        &["vault-mode", "--to", "private", "--yes"],
        "Key Vault Contributor",
    )
    .await;
    w.refused(
        &[
            "vault-mode",
            "--to",
            "private",
            "--vault-resource-id",
            "/subscriptions/0/resourceGroups/x/providers/Microsoft.KeyVault/vaults/other",
            "--yes",
        ],
        "is not the vault of the key",
    )
    .await;
    w.refused(
        &[
            "vault-mode",
            "--to",
            "public",
            "--vault-resource-id",
            "/x",
            "--yes",
        ],
        "public mode takes none",
    )
    .await;

    let off = world(SimOptions {
        kms: false,
        ..public_kms(10)
    })
    .await;
    off.refused(
        &["vault-mode", "--to", "private", "--yes"],
        "KMS is not enabled",
    )
    .await;
}

#[tokio::test]
async fn migrate_v2_from_1_25_survives_a_sigkill_in_the_middle_of_the_upgrades() {
    let w = world(SimOptions {
        kubernetes_version: "1.25.11".into(),
        lro_seconds: 2,
        kms_status_period_seconds: 1,
        ..small(300)
    })
    .await;
    // Killed during the second of the two upgrades (1.26 -> 1.27).
    let killed = w
        .kill_when(&["migrate-v2", "--yes"], |j, twin| {
            let c = &twin.world().cluster["properties"];
            started(j, 6)
                && c["provisioningState"] == "Upgrading"
                && c["currentKubernetesVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("1.26."))
        })
        .await;
    assert!(killed, "the run ended before the kill point");
    w.resume_to_the_end().await;
    let c = cluster(&w);
    assert_eq!(
        c["currentKubernetesVersion"], "1.27.16",
        "one hop past 1.26, not more"
    );
    assert_eq!(c["provisioningState"], "Succeeded");
    assert_eq!(w.kms()["enabled"], true);
    let by_key = w.inspect()["storage"]["byKey"].clone();
    let labels: Vec<&String> = by_key.as_object().unwrap().keys().collect();
    assert!(
        labels.iter().all(|k| k.starts_with("kms:v2:")),
        "every Secret under KMS v2: {by_key}"
    );
    let status = w.run(&["status", "-o", "json"]).await;
    let s: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(s["kmsVersion"], "v2", "{s}");
    let journal = w.journal_lines();
    assert!(
        journal.contains("\"kmsVersion\":\"v2\""),
        "verify-kms checked KMS v2"
    );

    // Now on 1.27 with KMS v2: nothing to do, nothing changed.
    let before = w.fingerprint();
    let out = w.run(&["migrate-v2", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("KMS is v2 already"), "{}", text(&out));
    assert_eq!(w.fingerprint(), before);
}

#[tokio::test]
async fn migrate_v2_refuses_a_target_it_cannot_reach_and_skips_kms_off() {
    let w = world(SimOptions {
        kubernetes_version: "1.25.11".into(),
        ..small(10)
    })
    .await;
    w.refused(
        &["migrate-v2", "--target-version", "1.26", "--yes"],
        "not a 1.27+ version",
    )
    .await;
    w.refused(
        &["migrate-v2", "--target-version", "latest", "--yes"],
        "not a Kubernetes version",
    )
    .await;
    // The upgrade profile offers nothing: the hop is refused before any change.
    w.twin.shared.world().faults.push(
        serde_json::from_value(serde_json::json!({
            "path": "/**/upgradeProfiles/default", "status": 404
        }))
        .expect("a fault rule"),
    );
    w.refused(
        &["migrate-v2", "--yes"],
        "upgrade profile could not be read",
    )
    .await;

    let off = world(SimOptions {
        kubernetes_version: "1.25.11".into(),
        kms: false,
        ..small(10)
    })
    .await;
    let before = off.fingerprint();
    let out = off.run(&["migrate-v2", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no KMS v1 to migrate"),
        "{}",
        text(&out)
    );
    assert_eq!(off.fingerprint(), before);
}

const CUSTOM: &str = "# A user's playbook: disable, with its own name.
name: Turn KMS off (team runbook)
description: KMS off, proven, every Secret rewritten
intent: disable
params:
  marginDays: 3
steps:
  - step: preflight
  - step: plant-canary
  - step: update-kms
    enabled: false
  - step: verify-kms
  - step: prove-key-switch
  - step: reencrypt
";

#[tokio::test]
async fn users_playbooks_run_and_typos_point_at_line_and_column() {
    let w = world(small(50)).await;
    let file = w.dir.path().join("runbook.yaml");
    let typo = CUSTOM.replace("    enabled: false", "    enabeld: false");
    std::fs::write(&file, &typo).unwrap();
    let path = file.to_str().unwrap();
    w.refused(
        &["run", path, "--yes"],
        &format!("{path}:11:5: unknown field `enabeld`"),
    )
    .await;
    let plan = w.run(&["plan", path]).await;
    assert_eq!(plan.status.code(), Some(2), "{}", text(&plan));

    std::fs::write(&file, CUSTOM).unwrap();
    w.refused(
        &["run", path, "--set", "marginDay=3", "--yes"],
        "unknown parameter `marginDay`",
    )
    .await;
    let out = w.run(&["run", path, "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(w.kms()["enabled"], false);
    w.assert_all_current();
    let journal = w.journal_lines();
    assert!(journal.contains("\"name\":\"Turn KMS off (team runbook)\""));
    assert!(
        journal.contains("\"marginDays\":3"),
        "the playbook's default applies"
    );
}

#[tokio::test]
async fn run_reencrypt_rewrites_what_a_rotation_left_behind() {
    let w = world(small(300)).await;
    // Every write in one namespace refused: the rotation proves its switch, then its
    // re-encryption cannot finish and leaves that namespace under the old key.
    let fault = serde_json::json!({
        "method": "PUT", "path": "/api/v1/namespaces/team-001/secrets/*", "status": 403
    });
    w.twin
        .shared
        .world()
        .faults
        .push(serde_json::from_value(fault).expect("a fault rule"));
    let rotated = w.run(&["rotate", "--yes"]).await;
    assert!(!rotated.status.success(), "{}", text(&rotated));
    let (current, total) = w.storage();
    assert!(
        current < total,
        "the rotation left Secrets behind: {current}/{total}"
    );
    w.twin.shared.world().faults.clear();

    let out = w.run(&["run", "reencrypt", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    w.assert_all_current();
    assert!(
        text(&out).contains(&format!("{} rewritten", total - current)),
        "{}",
        text(&out)
    );
}

/// A user's playbook, refused when it is read: exit 2 with `file:line:column: message`, nothing
/// changed.
async fn refused_file(w: &World, name: &str, yaml: &str, at: &str, message: &str) {
    let file = w.dir.path().join(name);
    std::fs::write(&file, yaml).unwrap();
    let path = file.to_str().unwrap();
    let expect = format!("{path}:{at}: {message}");
    w.refused(&["run", path, "--yes"], &expect).await;
    w.refused(&["plan", path, "--offline"], &expect).await;
}

const HEAD: &str = "name: t\ndescription: d\n";

#[tokio::test]
async fn playbooks_are_refused_for_what_they_leave_behind() {
    let w = world(small(20)).await;
    // Sequence 6 of the proofs script: KMS off, proven, nothing rewritten.
    let no_rewrite = format!(
        "{HEAD}intent: disable\nsteps:\n  - step: preflight\n  - step: plant-canary\n  - step: update-kms\n    enabled: false\n  - step: verify-kms\n  - step: prove-key-switch\n"
    );
    refused_file(
        &w,
        "no-rewrite.yaml",
        &no_rewrite,
        "7:5",
        "step 3 (update-kms enabled=false) is not followed by a whole-cluster reencrypt before the end of the playbook",
    )
    .await;
    // Two rotations, each proven, one re-encryption (Azure/kubernetes-kms#291).
    let rotation = "  - step: plant-canary\n  - step: rotate-key\n  - step: update-kms\n    enabled: true\n  - step: verify-kms\n  - step: prove-key-switch\n";
    let twice = format!(
        "{HEAD}intent: rotate\nsteps:\n  - step: preflight\n{rotation}{rotation}  - step: reencrypt\n"
    );
    refused_file(
        &w,
        "twice.yaml",
        &twice,
        "13:5",
        "step 8 (rotate-key) is a second key change with no whole-cluster reencrypt since step 3 (rotate-key)",
    )
    .await;
    let no_verify = CUSTOM.replace("  - step: verify-kms\n", "");
    refused_file(
        &w,
        "no-verify.yaml",
        &no_verify,
        "10:5",
        "step 3 (update-kms enabled=false) is not followed by verify-kms before step 4 (prove-key-switch)",
    )
    .await;
    // `when:` on a step that takes no field would be ignored, and the step run regardless.
    let rotate = include_str!("../playbooks/rotate.yaml");
    let when = rotate.replace(
        "  - step: rotate-key\n",
        "  - step: rotate-key\n    when: retireOld\n",
    );
    let line = when
        .lines()
        .position(|l| l.contains("when: retireOld"))
        .unwrap()
        + 1;
    refused_file(
        &w,
        "when.yaml",
        &when,
        &format!("{line}:5"),
        "unknown field `when` on step rotate-key: it takes none",
    )
    .await;
    let typo = CUSTOM.replace(
        "  - step: reencrypt\n",
        "  - step: reencrypt\n    namespaces: [a]\n",
    );
    refused_file(
        &w,
        "typo.yaml",
        &typo,
        "15:5",
        "unknown field `namespaces` on step reencrypt: it takes none",
    )
    .await;

    // A parameter the playbook does not read is refused, naming those it does.
    let key = w.kms()["keyId"].as_str().unwrap().to_string();
    let set = format!("keyId={key}");
    for args in [
        vec!["run", "rotate", "--set", &set, "--yes"],
        vec!["plan", "rotate", "--set", &set, "--offline"],
    ] {
        w.refused(
            &args,
            "--set keyId: the rotate playbook (intent rotate) does not use `keyId`; it uses: marginDays, switchTimeoutSeconds, kmsStatusPeriodSeconds",
        )
        .await;
    }
    w.refused(
        &["run", "disable", "--set", "networkAccess=Private", "--yes"],
        "does not use `networkAccess`",
    )
    .await;
    // Where the intent takes it, it is honoured.
    let plan = w.run(&["plan", "enable", "--set", &set, "--offline"]).await;
    assert!(plan.status.success(), "{}", text(&plan));
    assert!(
        text(&plan).contains(&format!("keyId={key}")),
        "{}",
        text(&plan)
    );
    // A plan lists only the parameters its playbook reads.
    let plan = text(&w.run(&["plan", "rotate", "--offline"]).await);
    assert!(plan.contains("  marginDays=7\n"), "{plan}");
    assert!(
        !plan.contains("retireOld=") && !plan.contains("keyId="),
        "{plan}"
    );
}

#[tokio::test]
async fn plan_lists_each_built_in_and_its_preflight() {
    let w = world(public_kms(10)).await;
    for name in kmsctl::playbook::built_in_names() {
        let out = w.run(&["plan", name, "--offline"]).await;
        assert!(out.status.success(), "{name}: {}", text(&out));
        let p = kmsctl::playbook::built_in(name).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        for (i, s) in p.steps.iter().enumerate() {
            assert!(
                stdout.contains(&format!("{:>2}. {}", i + 1, s.describe())),
                "{name}: step {i} missing in\n{stdout}"
            );
        }
    }
    let before = w.fingerprint();
    let out = w
        .run(&[
            "plan",
            "vault-mode",
            "--set",
            "networkAccess=private",
            "-o",
            "json",
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    assert_eq!(plan["dryRun"], true);
    let checks: Vec<&str> = plan["preflight"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["check"].as_str())
        .collect();
    for c in [
        "vnet-integration",
        "identity-private-link",
        "vault-resource-id",
    ] {
        assert!(checks.contains(&c), "{c} missing: {checks:?}");
    }
    assert_eq!(w.fingerprint(), before, "plan changes nothing");
}

#[test]
fn completions_and_man_pages_for_every_command() {
    let bin = env!("CARGO_BIN_EXE_kmsctl");
    // The hook each shell sources; at a TAB it asks kmsctl (COMPLETE=<shell>).
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = std::process::Command::new(bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains("COMPLETE") && script.contains("kmsctl"),
            "{shell}: {script}"
        );
        if shell == "bash" {
            let mut check = std::process::Command::new("bash")
                .arg("-n")
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            check
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            assert!(
                check.wait().unwrap().success(),
                "bash -n rejects the script"
            );
        }
    }
    // What bash's hook gets back at a TAB: every command, and each command's flags.
    let tab = |words: &[&str]| {
        let out = std::process::Command::new(bin)
            .arg("--")
            .args(words)
            .env("COMPLETE", "bash")
            .env("_CLAP_IFS", "\n")
            .env("_CLAP_COMPLETE_INDEX", (words.len() - 1).to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{words:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let commands = tab(&["kmsctl", ""]);
    for c in ["vault-mode", "migrate-v2", "rotate", "check-expiry", "sim"] {
        assert!(
            commands.lines().any(|l| l == c),
            "completion lacks {c}: {commands}"
        );
    }
    assert!(
        tab(&["kmsctl", "rotate", "--tw"])
            .lines()
            .any(|l| l == "--twice")
    );
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .args(["man", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    for page in [
        "kmsctl",
        "kmsctl-vault-mode",
        "kmsctl-migrate-v2",
        "kmsctl-run",
        "kmsctl-plan",
        "kmsctl-sim-serve",
    ] {
        let roff = std::fs::read_to_string(dir.path().join(format!("{page}.1"))).unwrap();
        assert!(
            roff.contains(&format!(".TH {page} 1")),
            "{page}: {}",
            &roff[..200.min(roff.len())]
        );
    }
    let vault = std::fs::read_to_string(dir.path().join("kmsctl-vault-mode.1")).unwrap();
    assert!(
        vault.contains("\\-\\-to") && vault.contains("private"),
        "options documented"
    );
}
