//! What a person meets at the command line: every mistake refused before any change (exit 2)
//! with how to fix it, help with examples and only the flags a command can use, and the
//! wrong-cluster guard between two twins (host and port).

mod common;

use common::{small, text, world};

#[tokio::test]
async fn a_half_set_credential_environment_is_named_not_worked_around() {
    let w = world(small(5)).await;
    let mut c = w.command(&["status"]);
    c.env_remove("AZURE_CLIENT_SECRET");
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("AZURE_CLIENT_SECRET") && said.contains("az login"),
        "{said}"
    );
    assert!(
        !said.contains("ManagedIdentity"),
        "no silent switch: {said}"
    );
    // -v says which credential auto picked, and why.
    let out = w.run(&["-v", "status"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Azure credential: env"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_wrong_resource_group_or_cluster_is_refused_naming_the_flags_and_what_exists() {
    let w = world(small(5)).await;
    w.refused(
        &["status", "-g", "rg-does-not-exist"],
        "'rg-does-not-exist' (-g/--resource-group) does not exist",
    )
    .await;
    w.refused(
        &["rotate", "--yes", "-n", "aks-nope"],
        "no AKS cluster 'aks-nope' (-n/--name)",
    )
    .await;
    // What the subscription holds is named, as flags to copy.
    w.refused(
        &["disable", "--yes", "-g", "rg-nope"],
        "-g rg-kmsctl-twin -n aks-twin",
    )
    .await;
}

#[tokio::test]
async fn kubeconfig_mistakes_say_how_to_get_the_right_one() {
    let w = world(small(5)).await;
    let missing = w.dir.path().join("no-such-kubeconfig");
    w.refused(
        &["status", "--kubeconfig", missing.to_str().unwrap()],
        "az aks get-credentials -g rg-kmsctl-twin -n aks-twin",
    )
    .await;
    // An unknown context lists the contexts there are.
    w.refused(
        &["rotate", "--yes", "--context", "prod"],
        "its contexts: aks-twin",
    )
    .await;
}

#[tokio::test]
async fn counts_durations_and_values_are_checked_naming_the_flag() {
    let w = world(small(5)).await;
    for (args, flag) in [
        (
            &["rotate", "--yes", "--concurrency", "0"][..],
            "--concurrency",
        ),
        (
            &["rotate", "--yes", "--batch-size", "-5"][..],
            "--batch-size",
        ),
        (&["rotate", "--yes", "--max-qps", "0"][..], "--max-qps"),
        (
            &["rotate", "--yes", "--margin-days", "-1"][..],
            "--margin-days",
        ),
        (
            &["disable", "--yes", "--switch-timeout-seconds", "0"][..],
            "--switch-timeout-seconds",
        ),
        (
            &["resume", "--yes", "--switch-timeout-seconds", "-3"][..],
            "--switch-timeout-seconds",
        ),
        (&["reencrypt", "--concurrency", "-1"][..], "--concurrency"),
        (&["demo", "--secrets", "0"][..], "--secrets"),
    ] {
        w.refused(args, flag).await;
    }
    // Values as status prints them (capitalised) are accepted.
    let kid = w.kms()["keyId"].as_str().unwrap().to_string();
    let out = w
        .run(&[
            "enable",
            "--key-id",
            &kid,
            "--network-access",
            "Public",
            "--dry-run",
        ])
        .await;
    assert!(!text(&out).contains("invalid value"), "{}", text(&out));
    let out = w.run(&["status", "-o", "JSON"]).await;
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn help_has_examples_and_only_the_flags_a_command_can_use() {
    let w = world(small(1)).await;
    let help = |args: &'static [&'static str]| {
        let w = &w;
        async move {
            let out = w.run(args).await;
            assert!(out.status.success(), "{args:?}: {}", text(&out));
            String::from_utf8(out.stdout).unwrap()
        }
    };
    for cmd in [
        "status",
        "enable",
        "rotate",
        "disable",
        "reencrypt",
        "plan",
        "check-expiry",
        "rbac",
        "resume",
        "runs",
    ] {
        let out = w.run(&[cmd, "--help"]).await;
        let h = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(h.lines().any(|l| l == "Examples:"), "{cmd} --help: {h}");
        assert!(
            h.contains(&format!("kmsctl {cmd}")),
            "{cmd}'s examples use it: {h}"
        );
        if cmd != "check-expiry" {
            assert!(
                !h.contains("prometheus") && !h.contains("html"),
                "{cmd} offers -o prometheus|html: {h}"
            );
        }
    }
    for cmd in [
        "rotate",
        "enable",
        "disable",
        "vault-mode",
        "migrate-v2",
        "run",
        "plan",
    ] {
        let out = w.run(&[cmd, "--help"]).await;
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("--namespace"),
            "{cmd} offers --namespace"
        );
    }
    assert!(help(&["reencrypt", "--help"]).await.contains("--namespace"));
    let plan = help(&["plan", "--help"]).await;
    assert!(
        !plan.contains("--yes") && !plan.contains("--dry-run"),
        "{plan}"
    );
    assert!(
        help(&["check-expiry", "--help"])
            .await
            .contains("prometheus")
    );
    w.refused(&["plan", "rotate", "--yes"], "plan changes nothing")
        .await;
    // -o prometheus where it is not written is refused, as before.
    w.refused(&["status", "-o", "prometheus"], "only check-expiry")
        .await;
}

#[tokio::test]
async fn a_built_in_playbook_prints_its_source() {
    let w = world(small(1)).await;
    let out = w.run(&["plan", "rotate-twice", "--yaml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        yaml,
        std::fs::read_to_string("playbooks/rotate-twice.yaml").unwrap()
    );
    // What it printed is a playbook `plan` reads back.
    let f = w.dir.path().join("mine.yaml");
    std::fs::write(&f, &yaml).unwrap();
    let out = w.run(&["plan", f.to_str().unwrap(), "--offline"]).await;
    assert!(out.status.success(), "{}", text(&out));
    w.refused(&["plan", "rotate-thrice", "--yaml"], "rotate-twice")
        .await;
}

#[tokio::test]
async fn man_pages_have_exit_status_environment_and_examples() {
    let w = world(small(1)).await;
    for page in [&["man"][..], &["man", "rotate"][..]] {
        let out = w.run(page).await;
        assert!(out.status.success(), "{}", text(&out));
        let roff = String::from_utf8_lossy(&out.stdout).to_string();
        for section in [".SH EXAMPLES", ".SH \"EXIT STATUS\"", ".SH ENVIRONMENT"] {
            assert!(roff.contains(section), "{page:?}: no {section}");
        }
        assert!(
            roff.contains("AZURE_CLIENT_SECRET") && roff.contains("resume"),
            "{page:?}"
        );
    }
}

#[tokio::test]
async fn another_twins_kubeconfig_is_another_cluster() {
    let a = world(small(5)).await;
    let b = world(small(5)).await;
    let other = b.dir.path().join("kubeconfig");
    let other = other.to_str().unwrap();
    let before = (a.fingerprint(), b.fingerprint());
    // status warns and exits 1; a change is refused before anything moves, on either twin.
    let out = a.run(&["status", "--kubeconfig", other]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is not this cluster's API server"),
        "{}",
        text(&out)
    );
    a.refused(
        &["rotate", "--yes", "--kubeconfig", other],
        "kubeconfig-cluster",
    )
    .await;
    assert_eq!((a.fingerprint(), b.fingerprint()), before);
    // Its own kubeconfig is its cluster, and real kubectl reaches it by the same file.
    let out = a.run(&["status"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let k = a.dir.path().join("kubeconfig");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kubectl")
            .args(["get", "secrets", "-A", "-o", "name"])
            .env("KUBECONFIG", k)
            .output()
            .expect("kubectl runs")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);
}

#[tokio::test]
async fn the_rbac_kubernetes_half_applies_with_kubectl() {
    let w = world(small(1)).await;
    let out = w
        .run(&["rbac", "--kubernetes", "--group", "0b5c3e2a"])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let applied = w
        .kubectl_apply_dry_run(String::from_utf8(out.stdout).unwrap())
        .await;
    assert!(applied.status.success(), "{}", text(&applied));
}

#[tokio::test]
async fn no_at_the_prompt_says_nothing_changed() {
    let w = world(small(5)).await;
    let before = w.fingerprint();
    // A terminal to answer on: script(1) gives kmsctl a pty and feeds it "n".
    let mut c = std::process::Command::new("script");
    let cmd = format!("{} rotate", env!("CARGO_BIN_EXE_kmsctl"));
    let inner = w.command(&[]);
    c.args(["-qec", &cmd, "/dev/null"]).env_clear();
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let out = tokio::task::spawn_blocking(move || {
        let mut child = c.spawn().expect("script(1) runs");
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        // Answer once the prompt is up (preflight reads the cluster first).
        std::thread::sleep(std::time::Duration::from_secs(3));
        stdin.write_all(b"n\n").unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("[y/N]") && said.contains("nothing was changed"),
        "{said}"
    );
    assert_eq!(w.fingerprint(), before);
}

#[tokio::test]
async fn completion_offers_playbook_names_and_run_ids() {
    let w = world(small(5)).await;
    let out = w.run(&["rotate", "--yes"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let tab = |words: &'static [&'static str]| {
        // What bash's hook (kmsctl completions bash) runs at a TAB on the last word.
        let mut c = w.command(&["--"]);
        c.args(words)
            .env("COMPLETE", "bash")
            .env("_CLAP_IFS", "\n")
            .env("_CLAP_COMPLETE_INDEX", (words.len() - 1).to_string());
        async move {
            let out = tokio::task::spawn_blocking(move || c.output().unwrap())
                .await
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let got = tab(&["kmsctl", "plan", "rotate"]).await;
    assert!(got.lines().any(|l| l == "rotate-twice"), "{got}");
    let got = tab(&["kmsctl", "resume", "--run", ""]).await;
    let ids: Vec<&str> = got.lines().collect();
    assert_eq!(ids.len(), 1, "{got}");
    assert!(ids[0].contains("rotate"), "{got}");
    let out = w.run(&["completions", "bash"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("COMPLETE=\"bash\""));
}
