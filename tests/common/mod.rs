//! Test harness: an in-process twin, and kmsctl run as a user runs it (the real binary, with
//! only the environment the twin wrote).
#![allow(dead_code)]

use kmsctl::sim::{SimOptions, Twin};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

pub struct World {
    pub twin: Twin,
    pub dir: tempfile::TempDir,
}

pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub async fn world(opts: SimOptions) -> World {
    init();
    let twin = Twin::start(opts).await.expect("twin starts");
    let dir = tempfile::tempdir().expect("tempdir");
    twin.write_files(dir.path()).expect("twin files");
    World { twin, dir }
}

pub fn small(secrets: usize) -> SimOptions {
    SimOptions {
        secrets,
        namespaces: 5,
        lro_seconds: 0,
        ..Default::default()
    }
}

impl World {
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kmsctl"));
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("XDG_STATE_HOME", self.state_dir())
            // The barrier's quiet time follows the twin's status period (a real one: 60 s).
            .env(
                "KMSCTL_KMS_STATUS_PERIOD_SECONDS",
                self.status_period().to_string(),
            )
            .env("KMSCTL_BARRIER_POLL_MILLIS", "200");
        for (k, v) in self.twin.env_vars(self.dir.path()) {
            c.env(k, v);
        }
        c
    }

    /// Runs kmsctl to completion (off the async runtime: the twin keeps serving meanwhile).
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut c = self.command(args);
        tokio::task::spawn_blocking(move || c.output().expect("kmsctl runs"))
            .await
            .expect("join")
    }

    /// The status period kmsctl is told: the twin's, at least 1 s.
    pub fn status_period(&self) -> u64 {
        self.twin
            .shared
            .world()
            .opts
            .kms_status_period_seconds
            .max(1)
    }

    pub fn inspect(&self) -> Value {
        self.twin.inspect()
    }

    pub fn kms(&self) -> Value {
        self.inspect()["cluster"]["properties"]["securityProfile"]["azureKeyVaultKms"].clone()
    }

    /// (Secrets under the key the cluster now uses, all Secrets).
    pub fn storage(&self) -> (u64, u64) {
        let d = self.inspect();
        let kms = &d["cluster"]["properties"]["securityProfile"]["azureKeyVaultKms"];
        let by = d["storage"]["byKey"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let want = if kms["enabled"] == true {
            format!("kms:v2:{}", kms["keyId"].as_str().unwrap_or_default())
        } else {
            "identity".into()
        };
        let n = by
            .iter()
            .filter(|(k, _)| {
                k.as_str() == want || (k.starts_with("kms:v1:") && want.ends_with(&k[7..]))
            })
            .map(|(_, v)| v.as_u64().unwrap_or(0))
            .sum();
        (n, d["storage"]["total"].as_u64().unwrap_or(0))
    }

    pub fn assert_all_current(&self) {
        let (n, total) = self.storage();
        assert!(
            total > 0 && n == total,
            "{n} of {total} Secrets under the current key: {}",
            self.inspect()["storage"]
        );
    }

    /// `kmsctl resume --yes` ends well, with every Secret under the cluster's key.
    /// No Secret is stored under a key version that is disabled or gone (the twin's
    /// `storage.unreadable` counts the vaults out of the plugin's reach too).
    pub fn assert_readable(&self) {
        let d = self.inspect();
        let live: Vec<String> = d["keys"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|vs| vs.as_array().unwrap().iter())
            .filter(|v| v["enabled"] == true)
            .map(|v| v["kid"].as_str().unwrap().to_ascii_lowercase())
            .collect();
        for (label, n) in d["storage"]["byKey"].as_object().unwrap() {
            if label == "identity" || n == 0 {
                continue;
            }
            let kid = label.splitn(3, ':').nth(2).unwrap().to_ascii_lowercase();
            assert!(
                live.contains(&kid),
                "{n} Secrets under {label}, which is disabled or gone"
            );
        }
        let unreadable = &d["storage"]["unreadable"];
        assert_eq!(
            unreadable["total"].as_u64().unwrap_or(0),
            0,
            "unreadable: {unreadable}"
        );
    }

    pub async fn resume_to_the_end(&self) {
        let out = self.run(&["resume", "--yes"]).await;
        assert!(out.status.success(), "resume: {}", text(&out));
        self.assert_all_current();
    }

    /// Changes the first version of the twin's key (to stage a refusal).
    pub fn first_key_version(&self, change: impl FnOnce(&mut kmsctl::sim::world::KeyVersion)) {
        let mut w = self.twin.shared.world();
        change(&mut w.keys.get_mut("kms-key").expect("the twin's key").versions[0]);
    }

    pub fn key_versions(&self) -> Vec<Value> {
        self.inspect()["keys"]["kms-key"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// What a preflight refusal must leave untouched.
    pub fn fingerprint(&self) -> Value {
        let d = self.inspect();
        serde_json::json!({ "cluster": d["cluster"], "vault": d["vault"], "keys": d["keys"], "storage": d["storage"] })
    }
}

impl World {
    /// Every run journal's lines, concatenated.
    pub fn journal_lines(&self) -> String {
        journals(&self.state_dir().join("kmsctl/runs"))
    }

    /// Starts kmsctl with `args`, SIGKILLs it once `ready(journal, twin)` holds (checked every
    /// 5 ms), and says whether it was killed (false: it ended first).
    pub async fn kill_when(
        &self,
        args: &[&str],
        ready: impl Fn(&str, &kmsctl::sim::world::Shared) -> bool + Send + 'static,
    ) -> bool {
        let mut child = self
            .command(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kmsctl starts");
        let dir = self.state_dir().join("kmsctl/runs");
        let shared = self.twin.shared.clone();
        tokio::task::spawn_blocking(move || {
            for _ in 0..60_000 {
                if ready(&journals(&dir), &shared) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return true;
                }
                if child.try_wait().expect("wait").is_some() {
                    return false;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            false
        })
        .await
        .expect("join")
    }
}

impl World {
    /// `kubectl apply --dry-run=client -f -` of `manifest` against the twin (off the async
    /// threads: the in-process twin keeps serving kubectl meanwhile).
    pub async fn kubectl_apply_dry_run(&self, manifest: String) -> Output {
        let kubeconfig = self.dir.path().join("kubeconfig");
        tokio::task::spawn_blocking(move || {
            let mut c = Command::new("kubectl")
                .args(["apply", "--dry-run=client", "-f", "-"])
                .env("KUBECONFIG", kubeconfig)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("kubectl runs (.ci/run installs it)");
            use std::io::Write;
            let mut stdin = c.stdin.take().expect("stdin");
            stdin.write_all(manifest.as_bytes()).expect("write");
            drop(stdin);
            c.wait_with_output().expect("kubectl ends")
        })
        .await
        .expect("join")
    }

    /// `args` exits 2 with `expect` in its output, and the twin's cluster, vault, keys and
    /// storage are exactly as before.
    pub async fn refused(&self, args: &[&str], expect: &str) {
        let before = serde_json::to_string(&self.fingerprint()).expect("json");
        let out = self.run(args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains(expect),
            "{args:?}: no '{expect}' in\n{}",
            text(&out)
        );
        let after = serde_json::to_string(&self.fingerprint()).expect("json");
        assert_eq!(before, after, "{args:?} changed something");
    }
}

fn journals(dir: &std::path::Path) -> String {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A fleet twin of `n` rotatable clusters (aks-fleet-01..), plus the members `opts.fleet_clusters`
/// adds (private vaults, no local accounts, platform-managed, private API). kmsctl run with
/// `w.run` gets only the Azure environment: no kubeconfig, no cluster named.
pub async fn fleet(mut opts: SimOptions, n: usize) -> World {
    opts.fleet_clusters.clusters = n;
    world(opts).await
}

/// One member's coordinates, as kmsctl's flags take them.
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub resource_group: String,
    pub subscription: String,
}

impl Member {
    /// `-g RG -n NAME --subscription SUB`.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "-g".into(),
            self.resource_group.clone(),
            "-n".into(),
            self.name.clone(),
            "--subscription".into(),
            self.subscription.clone(),
        ]
    }
}

/// Secrets under the key the inspected cluster `doc` uses, and all Secrets.
pub fn storage_in(d: &Value) -> (u64, u64) {
    let kms = &d["cluster"]["properties"]["securityProfile"]["azureKeyVaultKms"];
    let by = d["storage"]["byKey"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let want = if kms["enabled"] == true {
        format!("kms:v2:{}", kms["keyId"].as_str().unwrap_or_default())
    } else {
        "identity".into()
    };
    let n = by
        .iter()
        .filter(|(k, _)| {
            k.as_str() == want || (k.starts_with("kms:v1:") && want.ends_with(&k[7..]))
        })
        .map(|(_, v)| v.as_u64().unwrap_or(0))
        .sum();
    (n, d["storage"]["total"].as_u64().unwrap_or(0))
}

impl World {
    /// The fleet's members, in name order.
    pub fn members(&self) -> Vec<Member> {
        self.twin
            .members
            .list
            .iter()
            .map(|m| {
                let w = m.world();
                Member {
                    name: w.ids.cluster.clone(),
                    resource_group: w.ids.resource_group.clone(),
                    subscription: w.ids.subscription.clone(),
                }
            })
            .collect()
    }

    pub fn member(&self, name: &str) -> Member {
        self.members()
            .into_iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// The member's world (for kill points and direct changes).
    pub fn member_shared(&self, name: &str) -> kmsctl::sim::world::Shared {
        self.twin.member(name).expect("a member").clone()
    }

    /// What `sim inspect --cluster NAME` prints.
    pub fn inspect_member(&self, name: &str) -> Value {
        kmsctl::sim::inspect_shared(&self.member_shared(name))
    }

    /// What `sim inspect --all` prints.
    pub fn inspect_all(&self) -> Value {
        self.twin.inspect_all()
    }

    /// (Secrets under the member's current key, all its Secrets).
    pub fn member_storage(&self, name: &str) -> (u64, u64) {
        storage_in(&self.inspect_member(name))
    }

    /// The key id the member's cluster uses.
    pub fn member_key(&self, name: &str) -> String {
        self.inspect_member(name)["cluster"]["properties"]["securityProfile"]["azureKeyVaultKms"]
            ["keyId"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Adds fault rules for one member only.
    pub fn fault_member(&self, name: &str, rules: Vec<kmsctl::sim::faults::FaultRule>) {
        self.twin.add_faults_to(name, rules).expect("a member");
    }

    /// `kmsctl ARGS -g RG -n NAME --subscription SUB`.
    pub async fn run_on(&self, name: &str, args: &[&str]) -> Output {
        let flags = self.member(name).flags();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(flags.iter().map(String::as_str));
        self.run(&all).await
    }
}
