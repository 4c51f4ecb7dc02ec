//! The run journal: one JSON Lines file per run under the state directory (files 0600,
//! directory 0700), appended and fsync'd before and after every step, so a run killed at any
//! instant (SIGKILL included) can be replayed and continued. It holds run parameters, step
//! outputs (key ids, resourceVersions) and re-encryption checkpoints; never Secret data or tokens.
//!
//! Format history: v1 (this one).

use crate::playbook::Procedure;
use crate::reencrypt::{Checkpoint, Event};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// 2: the cluster's identity may come after the header, as an `identity` entry (a run is
/// journaled before it reads anything, so a kill at any moment leaves it resumable).
pub const FORMAT_VERSION: u32 = 2;

/// Which cluster a run is for, as given on the command line or by the environment.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub subscription: Option<String>,
    pub resource_group: Option<String>,
    pub cluster: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// How the run reaches the cluster's API server: a kubeconfig, or Resource Manager's
    /// listClusterUserCredential / listClusterAdminCredential (kept so `resume` reconnects the
    /// same way).
    #[serde(default)]
    pub kube_credentials: KubeCredentials,
}

/// Where the Kubernetes API server's address, CA and credential come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum KubeCredentials {
    /// The kubeconfig (--kubeconfig, KUBECONFIG or ~/.kube/config) and its context.
    #[default]
    Kubeconfig,
    /// listClusterUserCredential (server and CA), authenticated with kmsctl's own Azure
    /// credential as kubelogin does for Entra ID clusters (a token for the AKS server app).
    Azure,
    /// listClusterAdminCredential (the cluster's local admin account), where local accounts
    /// are enabled.
    AzureAdmin,
}

/// The re-encryption settings of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReencryptParams {
    pub namespaces: Vec<String>,
    pub batch_size: u32,
    pub concurrency: usize,
    pub max_qps: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunParams {
    pub key_id: Option<String>,
    pub network_access: Option<String>,
    pub vault_resource_id: Option<String>,
    /// The Kubernetes version a migration upgrades to (None: the first 1.27+ minor reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    pub retire_old: bool,
    pub margin_days: u32,
    pub barrier_timeout_seconds: u64,
    /// How often an API server replica asks its KMS plugin for the key id (the barrier's quiet
    /// time is one and a half of these plus 2 s).
    #[serde(default = "default_status_period")]
    pub kms_status_period_seconds: u64,
    #[serde(default = "default_poll_millis")]
    pub barrier_poll_millis: u64,
    pub reencrypt: ReencryptParams,
}

fn default_status_period() -> u64 {
    60
}

fn default_poll_millis() -> u64 {
    2000
}

impl Default for ReencryptParams {
    fn default() -> Self {
        ReencryptParams {
            namespaces: Vec::new(),
            batch_size: 50,
            concurrency: 64,
            max_qps: None,
        }
    }
}

/// The command line's defaults.
impl Default for RunParams {
    fn default() -> Self {
        RunParams {
            key_id: None,
            network_access: None,
            vault_resource_id: None,
            target_version: None,
            retire_old: false,
            margin_days: 7,
            barrier_timeout_seconds: 600,
            kms_status_period_seconds: default_status_period(),
            barrier_poll_millis: default_poll_millis(),
            reencrypt: ReencryptParams::default(),
        }
    }
}

impl RunParams {
    pub fn flag(&self, name: &str) -> bool {
        match name {
            "retireOld" => self.retire_old,
            _ => false,
        }
    }
}

/// Which cluster a run acted on, as seen when it started: `resume` continues it only where all
/// of these still hold, so a run is never continued against another cluster.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIdentity {
    /// The managed cluster's ARM resource id (compared case-insensitively, as ARM does).
    pub arm_id: Option<String>,
    /// The API server URL the kubeconfig context names (scheme, host and port).
    pub api_server: String,
    /// The uid of the kube-system namespace: unique per cluster, whatever its address.
    pub kube_system_uid: String,
    /// The kubeconfig file and context the run used, resolved.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunHeader {
    pub format: u32,
    pub run_id: String,
    pub procedure: Procedure,
    pub params: RunParams,
    pub target: Target,
    #[serde(default)]
    pub cluster: Option<ClusterIdentity>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Asked for already when journaled (`--yes`); else a `confirmed` entry follows the prompt.
    #[serde(default)]
    pub confirmed: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Entry {
    Run(Box<RunHeader>),
    /// The cluster the run acts on, once it has been read (before any change).
    Identity(Box<ClusterIdentity>),
    /// The user asked for the run (`--yes`, or yes at its prompt): only then may `resume` run a
    /// run that had not begun.
    Confirmed {
        at: chrono::DateTime<chrono::Utc>,
    },
    StepStarted {
        index: usize,
        at: chrono::DateTime<chrono::Utc>,
        data: Value,
    },
    StepFinished {
        index: usize,
        at: chrono::DateTime<chrono::Utc>,
        output: Value,
    },
    StepSkipped {
        index: usize,
        reason: String,
    },
    StepFailed {
        index: usize,
        at: chrono::DateTime<chrono::Utc>,
        message: String,
    },
    Reencrypt {
        index: usize,
        event: Event,
    },
    Finished {
        at: chrono::DateTime<chrono::Utc>,
        status: RunStatus,
        message: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    Succeeded,
    Failed,
    /// Stopped by SIGINT/SIGTERM; `resume` continues it.
    Interrupted,
    /// Retired with `kmsctl runs --abandon`: nobody will resume it.
    Abandoned,
}

#[derive(Clone, Debug, Default)]
pub struct StepRecord {
    pub started: Option<Value>,
    pub finished: Option<Value>,
    pub skipped: bool,
    pub failed: Option<String>,
    pub checkpoint: Checkpoint,
}

/// A run, replayed from its journal.
#[derive(Clone, Debug)]
pub struct Record {
    pub path: PathBuf,
    pub header: RunHeader,
    pub steps: Vec<StepRecord>,
    pub finished: Option<(RunStatus, Option<String>)>,
    /// A `confirmed` entry was journaled.
    pub confirmed: bool,
}

impl Record {
    /// Whether any step was started, finished or skipped.
    pub fn began(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.started.is_some() || s.finished.is_some() || s.skipped)
    }

    /// A run nobody asked for yet (stopped at or before its prompt, nothing begun): `resume`
    /// must not run it; its command is to be run again.
    pub fn unconfirmed(&self) -> bool {
        !self.confirmed && !self.began() && self.finished.is_none()
    }

    pub fn state(&self) -> &'static str {
        match &self.finished {
            Some((RunStatus::Succeeded, _)) => "succeeded",
            Some((RunStatus::Failed, _)) => "failed",
            Some((RunStatus::Abandoned, _)) => "abandoned",
            None if self.unconfirmed() => "unconfirmed",
            Some((RunStatus::Interrupted, _)) | None => "interrupted",
        }
    }
    /// What this run has changed so far, one phrase per finished change, as its journal shows
    /// it: a key version created or disabled, the cluster's KMS key, the vault's network access,
    /// the Kubernetes version. Empty: nothing was changed (a refusal then is exit 2).
    pub fn changes(&self) -> Vec<String> {
        use crate::playbook::Step;
        let mut state = super::state::RunState::default();
        let mut out = Vec::new();
        for (step, rec) in self.header.procedure.steps.iter().zip(&self.steps) {
            let Some(o) = &rec.finished else { continue };
            state.apply(step, o);
            let text = |k: &str| o[k].as_str().unwrap_or("?").to_string();
            match step {
                Step::RotateKey => out.push(format!("new key version {}", text("keyId"))),
                Step::UpdateKms { .. }
                    if state.key_switch_expected() || o["report"]["changed"] == true =>
                {
                    let d = &o["desired"];
                    out.push(match d["keyId"].as_str() {
                        Some(k) if d["enabled"] == true => format!("KMS key now {k}"),
                        _ => "KMS now off".into(),
                    });
                }
                Step::SetVaultNetwork if o["changed"] == true => out.push(format!(
                    "vault public network access now {}",
                    text("publicNetworkAccess")
                )),
                Step::UpgradeKubernetes if o["hops"].as_array().is_some_and(|h| !h.is_empty()) => {
                    out.push(format!("Kubernetes {} -> {}", text("from"), text("to")))
                }
                Step::RetireOldest { .. } if o["disabled"].is_string() => {
                    out.push(format!("key version {} disabled", text("disabled")))
                }
                _ => {}
            }
        }
        out
    }

    /// The last update-kms this run started (its index) when no prove-key-switch finished after
    /// it: the run may have left the key ledger with a switch nobody has proven yet.
    pub fn switch_maybe_unproven(&self) -> Option<usize> {
        use crate::playbook::Step;
        let mut open = None;
        for (i, (step, rec)) in self
            .header
            .procedure
            .steps
            .iter()
            .zip(&self.steps)
            .enumerate()
        {
            match step {
                Step::UpdateKms { .. } if rec.started.is_some() || rec.finished.is_some() => {
                    open = Some(i)
                }
                Step::ProveKeySwitch if rec.finished.is_some() => open = None,
                _ => {}
            }
        }
        open
    }

    /// The first step not yet done.
    pub fn next_step(&self) -> Option<usize> {
        self.steps
            .iter()
            .position(|s| s.finished.is_none() && !s.skipped)
    }
}

pub struct Journal {
    file: std::fs::File,
    pub path: PathBuf,
    last_sync: std::time::Instant,
}

pub fn runs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runs")
}

/// An exclusive lock on the journal file while a process runs it (released when the file is
/// closed, also when the process is killed): a second process cannot run the same run.
fn lock(file: &std::fs::File, path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this function borrows; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    anyhow::ensure!(
        rc == 0,
        "the run in {} is being executed by another kmsctl process right now; wait for it to end (`kmsctl runs` shows it as running)",
        path.display()
    );
    Ok(())
}

/// Whether another process holds the run's journal (it is running now).
pub fn is_running(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: as in `lock`; a shared probe released at once when `file` is dropped.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    rc != 0
}

impl Journal {
    pub fn create(state_dir: &Path, header: RunHeader) -> anyhow::Result<Journal> {
        let dir = runs_dir(state_dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{}.jsonl", header.run_id));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating the journal {}", path.display()))?;
        lock(&file, &path)?;
        let mut j = Journal {
            file,
            path,
            last_sync: std::time::Instant::now(),
        };
        j.append(&Entry::Run(Box::new(header)))?;
        Ok(j)
    }

    pub fn open(path: &Path) -> anyhow::Result<(Journal, Record)> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        lock(&file, path)?;
        end_torn_line(&mut file, path)?;
        let record = replay(path)?;
        Ok((
            Journal {
                file,
                path: path.to_path_buf(),
                last_sync: std::time::Instant::now(),
            },
            record,
        ))
    }

    /// Appends one entry and makes it durable before returning.
    pub fn append(&mut self, entry: &Entry) -> anyhow::Result<()> {
        self.write(entry)?;
        self.sync()
    }

    /// Appends a re-encryption checkpoint. The write alone survives a killed process (the data is
    /// in the kernel); the fsync, for a machine crash, happens at most once a second, since a
    /// lost checkpoint only means redoing pages whose rewrites are idempotent.
    pub fn append_checkpoint(&mut self, entry: &Entry) -> anyhow::Result<()> {
        self.write(entry)?;
        if self.last_sync.elapsed() >= std::time::Duration::from_secs(1) {
            self.sync()?;
        }
        Ok(())
    }

    fn write(&mut self, entry: &Entry) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    fn sync(&mut self) -> anyhow::Result<()> {
        self.last_sync = std::time::Instant::now();
        self.file
            .sync_data()
            .with_context(|| format!("syncing {}", self.path.display()))
    }
}

/// A kill during a write can leave a last line without its newline: the next entry would be
/// glued onto it and both read as torn. Ends it first (called with the journal's lock held).
pub fn end_torn_line(file: &mut std::fs::File, path: &Path) -> anyhow::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut r = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    if r.seek(SeekFrom::End(0))? == 0 {
        return Ok(());
    }
    r.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    r.read_exact(&mut last)?;
    if last[0] != b'\n' {
        file.write_all(b"\n")
            .and_then(|_| file.sync_data())
            .with_context(|| format!("ending the torn last line of {}", path.display()))?;
    }
    Ok(())
}

pub fn replay(path: &Path) -> anyhow::Result<Record> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut record: Option<Record> = None;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        // A kill during a write can leave a torn last line: everything before it is intact.
        let Ok(entry) = serde_json::from_str::<Entry>(&line) else {
            tracing::warn!(path = %path.display(), line = n + 1, "ignoring a torn journal line");
            continue;
        };
        match entry {
            Entry::Run(h) => {
                anyhow::ensure!(
                    h.format <= FORMAT_VERSION,
                    "{} was written by a newer kmsctl (format {})",
                    path.display(),
                    h.format
                );
                let steps = vec![StepRecord::default(); h.procedure.steps.len()];
                let confirmed = h.confirmed;
                record = Some(Record {
                    path: path.to_path_buf(),
                    header: *h,
                    steps,
                    finished: None,
                    confirmed,
                });
            }
            other => {
                let r = record.as_mut().with_context(|| {
                    format!("{} does not start with a run header", path.display())
                })?;
                apply(r, other);
            }
        }
    }
    record.with_context(|| format!("{} is empty", path.display()))
}

fn step(r: &mut Record, i: usize) -> Option<&mut StepRecord> {
    r.steps.get_mut(i)
}

fn apply(r: &mut Record, e: Entry) {
    match e {
        Entry::Run(_) => {}
        Entry::Identity(c) => r.header.cluster = Some(*c),
        Entry::Confirmed { .. } => r.confirmed = true,
        Entry::StepStarted { index, data, .. } => {
            if let Some(s) = step(r, index) {
                s.started = Some(data);
                s.failed = None;
            }
            r.finished = None;
        }
        Entry::StepFinished { index, output, .. } => {
            if let Some(s) = step(r, index) {
                s.finished = Some(output);
            }
        }
        Entry::StepSkipped { index, .. } => {
            if let Some(s) = step(r, index) {
                s.skipped = true;
            }
        }
        Entry::StepFailed { index, message, .. } => {
            if let Some(s) = step(r, index) {
                s.failed = Some(message);
            }
        }
        Entry::Reencrypt { index, event } => {
            if let Some(s) = step(r, index) {
                s.checkpoint.apply(&event);
            }
        }
        Entry::Finished {
            status, message, ..
        } => r.finished = Some((status, message)),
    }
}

/// Every run, newest first, and the journals that could not be read (with why): a damaged
/// journal is named, never silently dropped.
pub fn list_all(state_dir: &Path) -> (Vec<Record>, Vec<(PathBuf, String)>) {
    let dir = runs_dir(state_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return (Vec::new(), Vec::new());
    };
    let mut damaged = Vec::new();
    let mut out: Vec<Record> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .filter_map(|p| match replay(&p) {
            Ok(r) => Some(r),
            Err(e) => {
                damaged.push((p, format!("{e:#}")));
                None
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.header
            .created_at
            .cmp(&a.header.created_at)
            .then(b.header.run_id.cmp(&a.header.run_id))
    });
    (out, damaged)
}

/// The ids of the runs journaled in `state_dir`, sorted (for shell completion: no journal is
/// read, only named).
pub fn run_ids(state_dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(runs_dir(state_dir))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "jsonl").then(|| Some(p.file_stem()?.to_str()?.to_string()))?
        })
        .collect();
    ids.sort();
    ids
}

/// `--state-dir`, else $XDG_STATE_HOME/kmsctl, else ~/.local/state/kmsctl.
pub fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("kmsctl");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/kmsctl")
}

/// A run id from the procedure's name: it names the journal file and the lease holder, so a
/// user playbook's name is kept to lowercase letters, digits and dashes.
pub fn new_run_id(procedure: &str) -> String {
    let procedure: String = procedure
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!(
        "{}-{procedure}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playbook::built_in;

    fn header() -> RunHeader {
        RunHeader {
            format: FORMAT_VERSION,
            run_id: new_run_id("rotate"),
            procedure: built_in("rotate").unwrap(),
            params: RunParams::default(),
            target: Target::default(),
            cluster: None,
            created_at: chrono::Utc::now(),
            confirmed: true,
        }
    }

    #[test]
    fn an_entry_after_a_torn_last_line_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), header()).unwrap();
        let path = j.path.clone();
        drop(j);
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"type\":\"step-fin").unwrap();
        drop(f);
        let (mut j, _) = Journal::open(&path).unwrap();
        j.append(&Entry::StepSkipped {
            index: 1,
            reason: "after a torn line".into(),
        })
        .unwrap();
        drop(j);
        assert!(replay(&path).unwrap().steps[1].skipped);
    }

    #[test]
    fn replays_steps_checkpoints_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), header()).unwrap();
        let now = chrono::Utc::now();
        j.append(&Entry::StepStarted {
            index: 0,
            at: now,
            data: Value::Null,
        })
        .unwrap();
        j.append(&Entry::StepFinished {
            index: 0,
            at: now,
            output: serde_json::json!({"x": 1}),
        })
        .unwrap();
        j.append(&Entry::StepStarted {
            index: 1,
            at: now,
            data: Value::Null,
        })
        .unwrap();
        let counts = crate::reencrypt::Counts {
            rewritten: 3,
            ..Default::default()
        };
        j.append(&Entry::Reencrypt {
            index: 1,
            event: Event::PageDone {
                namespace: "a".into(),
                next: Some("t".into()),
                counts,
            },
        })
        .unwrap();
        std::io::Write::write_all(&mut j.file, b"{\"type\":\"step-fin").unwrap();
        let r = replay(&j.path).unwrap();
        assert_eq!(r.next_step(), Some(1));
        assert_eq!(r.steps[1].checkpoint.namespaces["a"].counts.rewritten, 3);
        assert_eq!(r.state(), "interrupted");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&j.path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(list_all(dir.path()).0.len(), 1);
    }

    /// The built-in rotate (preflight, plant-canary, rotate-key, update-kms, verify-kms,
    /// prove-key-switch, reencrypt), replayed from step outputs.
    fn rotate_record(finished: &[Value], started: usize) -> Record {
        let h = header();
        let mut steps = vec![StepRecord::default(); h.procedure.steps.len()];
        for (s, o) in steps.iter_mut().zip(finished) {
            s.started = Some(Value::Null);
            s.finished = Some(o.clone());
        }
        for s in steps.iter_mut().take(started) {
            s.started.get_or_insert(Value::Null);
        }
        Record {
            path: PathBuf::new(),
            header: h,
            steps,
            finished: None,
            confirmed: true,
        }
    }

    #[test]
    fn a_run_says_what_it_changed() {
        use serde_json::json;
        let k1 = "https://v.vault.azure.net/keys/k/1";
        let k2 = "https://v.vault.azure.net/keys/k/2";
        let plant = json!({ "kmsAtPlant": { "enabled": true, "keyId": k1 } });
        let update =
            json!({ "desired": { "enabled": true, "keyId": k2 }, "report": { "changed": false } });
        let r = rotate_record(&[json!({}), plant.clone()], 2);
        assert!(
            r.changes().is_empty(),
            "preflight and canary change nothing"
        );
        let r = rotate_record(&[json!({}), plant.clone(), json!({ "keyId": k2 })], 3);
        assert_eq!(r.changes(), [format!("new key version {k2}")]);
        // A resumed update-kms finds the cluster already changed (changed: false): still a change.
        let r = rotate_record(&[json!({}), plant, json!({ "keyId": k2 }), update], 4);
        assert_eq!(
            r.changes(),
            [format!("new key version {k2}"), format!("KMS key now {k2}")]
        );
    }

    #[test]
    fn a_started_update_without_a_proof_after_it_may_have_left_a_switch() {
        use serde_json::json;
        let plant = json!({ "kmsAtPlant": { "enabled": true } });
        let r = rotate_record(&[json!({}), plant.clone(), json!({})], 3);
        assert_eq!(r.switch_maybe_unproven(), None);
        let r = rotate_record(&[json!({}), plant.clone(), json!({})], 4);
        assert_eq!(r.switch_maybe_unproven(), Some(3), "update-kms started");
        let done: Vec<Value> = (0..6).map(|_| json!({})).collect();
        let r = rotate_record(&done, 6);
        assert_eq!(r.switch_maybe_unproven(), None, "proven after it");
    }
}
