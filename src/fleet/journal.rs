//! The fleet journal: one JSON Lines file per fleet run under the state directory
//! (`fleet/<fleet-run-id>.jsonl`, files 0600), appended and fsync'd, locked (flock) by the
//! process that runs it. It holds the selection, the waves with their members in order, each
//! cluster's run id once started and its outcome, each wave's end and the fleet's: enough for
//! `fleet resume` to continue after a kill and for `fleet status` to show the rollout. Each
//! cluster's run keeps its own journal (`runs/`), as any run.

use super::select::{Cluster, Filter};
use super::waves::{Order, Shard};
use crate::engine::journal::RunParams;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u32 = 1;

/// How the fleet run was asked for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetParams {
    /// `--waves` as given.
    pub waves: String,
    pub order: Order,
    pub max_parallel: usize,
    pub max_failures: usize,
    /// `--admin`: clusters are reached with listClusterAdminCredential.
    pub admin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    pub filter: Filter,
    /// What each cluster's run is started with.
    pub run: RunParams,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetHeader {
    pub format: u32,
    pub fleet_run_id: String,
    /// `rotate` or `rotate-twice`.
    pub procedure: String,
    pub params: FleetParams,
    /// Every cluster selected, those skipped (platform-managed) included, with why.
    pub selection: Vec<Cluster>,
    /// The waves' members (ARM ids), in rollout order.
    pub waves: Vec<Vec<String>>,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

/// How one cluster's part of the rollout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Succeeded,
    /// Its key ledger shows the rotation done already (a rerun): nothing was run.
    Done,
    /// The run failed (exit 1; resumable).
    Failed,
    /// Refused before any change (exit 2).
    Refused,
    /// Its API server could not be reached (a private cluster from outside its network).
    Unreachable,
    /// Stopped by a signal; resumable.
    Interrupted,
}

impl Outcome {
    pub fn ok(self) -> bool {
        matches!(self, Outcome::Succeeded | Outcome::Done)
    }
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::Unreachable => "unreachable",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// What a cluster's part ended with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterResult {
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub seconds: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FleetStatus {
    Succeeded,
    /// Stopped after a wave whose failures exceeded --max-failures; `fleet resume` goes on.
    Stopped,
    Interrupted,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Entry {
    Fleet(Box<FleetHeader>),
    #[serde(rename_all = "camelCase")]
    ClusterStarted {
        wave: usize,
        cluster: String,
        run_id: String,
        at: chrono::DateTime<chrono::Utc>,
    },
    #[serde(rename_all = "camelCase")]
    ClusterFinished {
        wave: usize,
        cluster: String,
        result: ClusterResult,
        at: chrono::DateTime<chrono::Utc>,
    },
    #[serde(rename_all = "camelCase")]
    WaveFinished {
        wave: usize,
        succeeded: usize,
        failed: usize,
        at: chrono::DateTime<chrono::Utc>,
    },
    #[serde(rename_all = "camelCase")]
    Resumed {
        at: chrono::DateTime<chrono::Utc>,
    },
    #[serde(rename_all = "camelCase")]
    Finished {
        status: FleetStatus,
        reason: String,
        at: chrono::DateTime<chrono::Utc>,
    },
}

/// One cluster as the journal knows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterState {
    /// The run id of its latest run (set when it was started).
    pub run_id: Option<String>,
    /// Its latest outcome (None: started and not finished, or not started).
    pub result: Option<ClusterResult>,
}

/// A fleet run, replayed.
#[derive(Clone, Debug)]
pub struct FleetRecord {
    pub path: PathBuf,
    pub header: FleetHeader,
    /// By lowercased ARM id.
    pub clusters: HashMap<String, ClusterState>,
    /// Waves finished, with (succeeded, failed), latest word on each.
    pub waves_finished: HashMap<usize, (usize, usize)>,
    pub finished: Option<(FleetStatus, String)>,
}

impl FleetRecord {
    pub fn cluster(&self, id: &str) -> ClusterState {
        self.clusters
            .get(&id.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    pub fn state(&self) -> &'static str {
        match &self.finished {
            Some((FleetStatus::Succeeded, _)) => "succeeded",
            Some((FleetStatus::Stopped, _)) => "stopped",
            Some((FleetStatus::Interrupted, _)) | None => "interrupted",
        }
    }

    pub fn unfinished(&self) -> bool {
        !matches!(self.finished, Some((FleetStatus::Succeeded, _)))
    }

    fn apply(&mut self, e: Entry) {
        match e {
            Entry::Fleet(_) => {}
            Entry::ClusterStarted {
                cluster, run_id, ..
            } => {
                let c = self
                    .clusters
                    .entry(cluster.to_ascii_lowercase())
                    .or_default();
                c.run_id = Some(run_id);
                c.result = None;
                self.finished = None;
            }
            Entry::ClusterFinished {
                cluster, result, ..
            } => {
                let c = self
                    .clusters
                    .entry(cluster.to_ascii_lowercase())
                    .or_default();
                if result.run_id.is_some() {
                    c.run_id = result.run_id.clone();
                }
                c.result = Some(result);
            }
            Entry::WaveFinished {
                wave,
                succeeded,
                failed,
                ..
            } => {
                self.waves_finished.insert(wave, (succeeded, failed));
            }
            Entry::Resumed { .. } => self.finished = None,
            Entry::Finished { status, reason, .. } => self.finished = Some((status, reason)),
        }
    }
}

pub fn fleet_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("fleet")
}

pub fn new_fleet_run_id(procedure: &str) -> String {
    format!(
        "{}-fleet-{procedure}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

/// An open fleet journal, locked by this process.
pub struct FleetJournal {
    file: std::fs::File,
    pub path: PathBuf,
}

fn lock(file: &std::fs::File, path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this function borrows; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    anyhow::ensure!(
        rc == 0,
        "the fleet run in {} is being run by another kmsctl process right now; wait for it to end (`kmsctl fleet status` shows it)",
        path.display()
    );
    Ok(())
}

/// Whether another process holds the fleet journal (it runs now).
pub fn is_running(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: as in `lock`; a shared probe released when `file` is dropped.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    rc != 0
}

impl FleetJournal {
    pub fn create(state_dir: &Path, header: FleetHeader) -> anyhow::Result<FleetJournal> {
        let dir = fleet_dir(state_dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{}.jsonl", header.fleet_run_id));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating the fleet journal {}", path.display()))?;
        lock(&file, &path)?;
        let mut j = FleetJournal { file, path };
        j.append(&Entry::Fleet(Box::new(header)))?;
        Ok(j)
    }

    pub fn open(path: &Path) -> anyhow::Result<(FleetJournal, FleetRecord)> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        lock(&file, path)?;
        crate::engine::journal::end_torn_line(&mut file, path)?;
        let record = replay(path)?;
        Ok((
            FleetJournal {
                file,
                path: path.to_path_buf(),
            },
            record,
        ))
    }

    /// Appends one entry and makes it durable before returning.
    pub fn append(&mut self, entry: &Entry) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

pub fn replay(path: &Path) -> anyhow::Result<FleetRecord> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut record: Option<FleetRecord> = None;
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        // A kill during a write can leave a torn last line: everything before it is intact.
        let Ok(entry) = serde_json::from_str::<Entry>(&line) else {
            continue;
        };
        match entry {
            Entry::Fleet(h) => {
                anyhow::ensure!(
                    h.format <= FORMAT_VERSION,
                    "{} was written by a newer kmsctl (format {})",
                    path.display(),
                    h.format
                );
                record = Some(FleetRecord {
                    path: path.to_path_buf(),
                    header: *h,
                    clusters: HashMap::new(),
                    waves_finished: HashMap::new(),
                    finished: None,
                });
            }
            other => record
                .as_mut()
                .with_context(|| format!("{} does not start with a fleet header", path.display()))?
                .apply(other),
        }
    }
    record.with_context(|| format!("{} is empty", path.display()))
}

/// Every fleet run, newest first (damaged journals are named with why).
pub fn list_all(state_dir: &Path) -> (Vec<FleetRecord>, Vec<(PathBuf, String)>) {
    let Ok(entries) = std::fs::read_dir(fleet_dir(state_dir)) else {
        return (Vec::new(), Vec::new());
    };
    let mut damaged = Vec::new();
    let mut out: Vec<FleetRecord> = entries
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
            .started_at
            .cmp(&a.header.started_at)
            .then(b.header.fleet_run_id.cmp(&a.header.fleet_run_id))
    });
    (out, damaged)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn header(ids: &[&str]) -> FleetHeader {
        FleetHeader {
            format: FORMAT_VERSION,
            fleet_run_id: new_fleet_run_id("rotate"),
            procedure: "rotate".into(),
            params: FleetParams {
                waves: "1,100%".into(),
                order: Order::Name,
                max_parallel: 2,
                max_failures: 0,
                admin: false,
                shard: None,
                filter: Filter::default(),
                run: RunParams::default(),
            },
            selection: ids
                .iter()
                .map(|i| Cluster {
                    id: i.to_string(),
                    ..Default::default()
                })
                .collect(),
            waves: vec![
                vec![ids[0].into()],
                ids[1..].iter().map(|s| s.to_string()).collect(),
            ],
            started_at: chrono::Utc::now(),
        }
    }

    fn result(outcome: Outcome, run: &str) -> ClusterResult {
        ClusterResult {
            outcome,
            run_id: Some(run.into()),
            key_before: None,
            key_after: None,
            message: None,
            seconds: 1.0,
        }
    }

    #[test]
    fn replays_clusters_waves_a_stop_a_resume_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = FleetJournal::create(dir.path(), header(&["/A", "/b", "/c"])).unwrap();
        let at = chrono::Utc::now();
        let started = |c: &str, r: &str| Entry::ClusterStarted {
            wave: 0,
            cluster: c.into(),
            run_id: r.into(),
            at,
        };
        j.append(&started("/A", "r1")).unwrap();
        j.append(&Entry::ClusterFinished {
            wave: 0,
            cluster: "/A".into(),
            result: result(Outcome::Succeeded, "r1"),
            at,
        })
        .unwrap();
        j.append(&Entry::WaveFinished {
            wave: 0,
            succeeded: 1,
            failed: 0,
            at,
        })
        .unwrap();
        j.append(&started("/b", "r2")).unwrap();
        j.append(&Entry::ClusterFinished {
            wave: 1,
            cluster: "/b".into(),
            result: result(Outcome::Failed, "r2"),
            at,
        })
        .unwrap();
        j.append(&Entry::Finished {
            status: FleetStatus::Stopped,
            reason: "1 failure".into(),
            at,
        })
        .unwrap();
        // A second process cannot run it meanwhile.
        assert!(FleetJournal::open(&j.path).is_err());
        assert!(is_running(&j.path));
        let r = replay(&j.path).unwrap();
        assert_eq!(r.state(), "stopped");
        assert_eq!(r.cluster("/a").result.unwrap().outcome, Outcome::Succeeded);
        assert_eq!(r.cluster("/B").run_id.as_deref(), Some("r2"));
        assert_eq!(r.cluster("/c"), ClusterState::default());
        j.append(&Entry::Resumed { at }).unwrap();
        j.append(&started("/b", "r2")).unwrap();
        std::io::Write::write_all(&mut j.file, b"{\"type\":\"cluster-fin").unwrap();
        let r = replay(&j.path).unwrap();
        assert!(r.unfinished() && r.finished.is_none());
        assert_eq!(r.cluster("/b").result, None, "started again, not finished");
        assert_eq!(r.waves_finished.get(&0), Some(&(1, 0)));
        drop(j);
        assert_eq!(list_all(dir.path()).0.len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let p = list_all(dir.path()).0[0].path.clone();
        assert_eq!(
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
