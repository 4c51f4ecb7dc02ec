//! `kmsctl check-expiry`: the key versions a cluster depends on, judged for monitoring (exit
//! 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN), as text, JSON or Prometheus metrics (also into a
//! node_exporter textfile). Reads only.

use super::{Refusal, setup};
use crate::azure::keys::{KeyId, KeyVersionInfo};
use crate::checks::expiry::{self, Status, VersionReport, Windows};
use crate::cli::ExpiryArgs;
use crate::engine::context::Azure;
use crate::k8s::ledger::Ledger;
use crate::output::{Format, out, print_json};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// One cluster's verdict.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    pub cluster: String,
    pub id: String,
    /// `versioned-key` (kmsctl's lifecycle), `platform-managed-rotation`, or `off`.
    pub experience: &'static str,
    pub status: Status,
    pub versions: Vec<VersionReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<String>,
    pub notes: Vec<String>,
    /// What `--fix extend` changed before this check ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extended: Vec<Extension>,
}

/// One expiry `--fix extend` set.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Extension {
    pub key_id: String,
    pub roles: Vec<&'static str>,
    /// The expiry before (None: it had none, which kmsctl never changes on its own).
    pub from: Option<DateTime<Utc>>,
    pub to: DateTime<Utc>,
}

impl ClusterReport {
    fn new(id: &str, experience: &'static str, status: Status) -> Self {
        ClusterReport {
            cluster: id.rsplit('/').next().unwrap_or(id).to_string(),
            id: id.to_string(),
            experience,
            status,
            versions: Vec::new(),
            rotation: None,
            notes: Vec::new(),
            extended: Vec::new(),
        }
    }

    pub fn unknown(id: &str, why: String) -> Self {
        let mut r = ClusterReport::new(id, "unknown", Status::Unknown);
        r.notes.push(why);
        r
    }
}

/// `https://host/keys/name[/version]` -> the key (version may be empty: a versionless id).
fn key_of(kid: &str) -> Option<KeyId> {
    KeyId::parse(kid).ok().or_else(|| {
        let rest = kid.strip_prefix("https://")?.trim_end_matches('/');
        let mut parts = rest.split('/');
        let host = parts.next()?;
        (parts.next()? == "keys").then_some(())?;
        let name = parts.next()?;
        parts.next().is_none().then(|| KeyId {
            vault_url: format!("https://{host}"),
            name: name.to_string(),
            version: String::new(),
        })
    })
}

struct Judged<'a> {
    now: DateTime<Utc>,
    windows: Windows,
    reports: &'a mut Vec<VersionReport>,
}

impl Judged<'_> {
    fn add(
        &mut self,
        id: &str,
        role: &'static str,
        needed: bool,
        v: Result<&KeyVersionInfo, String>,
    ) {
        if let Some(r) = self
            .reports
            .iter_mut()
            // One line per version, however the ledger and the cluster spell its id.
            .find(|r| crate::k8s::ledger::same_key_id(&r.key_id, id))
        {
            r.roles.push(role);
            r.needed |= needed;
            return;
        }
        let (status, note) = match v {
            Ok(v) => expiry::judge(v, self.now, self.windows),
            Err(ref e) => (Status::Unknown, format!("could not be read: {e}")),
        };
        let v = v.ok();
        self.reports.push(VersionReport {
            key_id: id.to_string(),
            roles: vec![role],
            needed,
            enabled: v.map(|v| v.enabled),
            not_before: v.and_then(|v| v.not_before),
            expires_on: v.and_then(|v| v.expires_on),
            status,
            note,
        });
    }
}

/// Checks one cluster resource (as ARM or Resource Graph returns it). `ledger`: the versions the
/// key ledger says must stay alive, or why it could not be read (None: not asked for).
pub async fn check_cluster(
    az: &Azure,
    resource: &Value,
    ledger: Option<Result<Ledger, String>>,
    windows: Windows,
) -> ClusterReport {
    let now = Utc::now();
    let id = resource["id"].as_str().unwrap_or_default().to_string();
    let p = &resource["properties"];
    let kms = &p["securityProfile"]["azureKeyVaultKms"];
    let platform = p["securityProfile"]["kubernetesResourceObjectEncryptionProfile"]
        ["infrastructureEncryption"]
        .as_str()
        .is_some_and(|e| e.eq_ignore_ascii_case("Enabled"));
    if !platform && kms["enabled"].as_bool() != Some(true) {
        return check_off(az, &id, ledger, windows, now).await;
    }
    let experience = if platform {
        "platform-managed-rotation"
    } else {
        "versioned-key"
    };
    // UNKNOWN until the versions the cluster needs were read and judged.
    let mut report = ClusterReport::new(&id, experience, Status::Unknown);
    let Some(key) = kms["keyId"].as_str().and_then(key_of) else {
        report.notes.push(format!(
            "the cluster's keyId '{}' is not a Key Vault key id",
            kms["keyId"].as_str().unwrap_or_default()
        ));
        return report;
    };
    // Through Resource Manager: it reads a private vault's keys from any network.
    let kv = match az
        .key_reader(&key, kms["keyVaultResourceId"].as_str())
        .await
    {
        Ok(kv) => kv,
        Err(e) => {
            report.notes.push(format!("{e:#}"));
            return report;
        }
    };
    let mut versions = Vec::new();
    let mut judged = Judged {
        now,
        windows,
        reports: &mut versions,
    };
    // The version in use: the keyId's; on the platform-managed experience (versionless id) the
    // newest, which AKS picks up within 6 hours.
    let all = kv.versions(&key.name).await.map_err(|e| e.to_string());
    let newest = all.as_ref().ok().and_then(|v| v.last().cloned());
    // The version list is what finds the newest version (and, with --all, the older ones
    // Secrets may still need): a list that cannot be read leaves them unchecked, not fine.
    let mut unread = false;
    if let Err(e) = &all {
        unread = true;
        report.notes.push(format!(
            "the key's version list could not be read ({e}): the newest version and any older one were not checked"
        ));
    }
    if key.version.is_empty() {
        let v = newest.as_ref().ok_or_else(|| match &all {
            Err(e) => e.clone(),
            Ok(_) => "the key has no versions".to_string(),
        });
        let kid = newest
            .as_ref()
            .map_or(key.to_string(), |n| n.id.to_string());
        judged.add(&kid, "in-use", true, v);
    } else {
        let v = kv.version(&key).await.map_err(|e| e.to_string());
        judged.add(
            &key.to_string(),
            "in-use",
            true,
            v.as_ref().map_err(Clone::clone),
        );
    }
    // A ledger that cannot be read hides the versions Secrets may still need: UNKNOWN, unless
    // something known is CRITICAL already.
    let without_ledger = ledger.is_none();
    match ledger {
        Some(Ok(l)) => {
            let ids: Vec<String> = l
                .must_stay_alive()
                .iter()
                .map(|e| e.key_id.clone())
                .collect();
            judge_ledger(az, &ids, &mut judged).await
        }
        Some(Err(e)) => {
            unread = true;
            report.notes.push(format!(
                "the key ledger could not be read ({e}): a previous version KMS may still need was not checked"
            ));
        }
        None => {}
    }
    if without_ledger && let Ok(all) = &all {
        judge_older(
            all,
            &judged.reports[0].key_id.clone(),
            &single_check_args(&id),
            &mut judged,
            &mut report.notes,
        );
    }
    if let Some(n) = &newest {
        judged.add(&n.id.to_string(), "newest", false, Ok(n));
    }
    report.status = needed_status(&versions, unread);
    report.versions = versions;
    report.rotation = Some(match kv.rotation_trigger(&key.name).await {
        Ok(Some((after_create, before_expiry))) => {
            let at = expiry::next_rotation(
                after_create.as_deref(),
                before_expiry.as_deref(),
                newest.as_ref().and_then(|n| n.created_on),
                newest.as_ref().and_then(|n| n.expires_on),
            );
            let when = at.map_or("at a time kmsctl cannot compute".into(), |t| format!("on {t}"));
            if platform {
                format!("the key's rotation policy rotates it {when}; AKS picks the new version up within 6 hours")
            } else {
                format!("the key's rotation policy rotates it {when}, but this cluster keeps its versioned keyId: run `kmsctl rotate --twice` to move it (the in-use version still expires)")
            }
        }
        Ok(None) if platform => "no rotation policy: AKS's platform-managed rotation follows the key's newest version, so give the key a rotation policy (az keyvault key rotation-policy update) or rotate it in Key Vault (az keyvault key rotate) before the newest version expires; `kmsctl rotate` is for versioned key ids".into(),
        Ok(None) => "no rotation policy: rotate with `kmsctl rotate --twice` before the version in use expires".into(),
        Err(e) => {
            // What rotates the key (for the platform-managed experience, the only thing that
            // keeps the newest version fresh) is unknown: the check cannot say OK.
            report.status = report.status.worst(Status::Unknown);
            format!("the rotation policy could not be read: {e}")
        }
    });
    report
}

/// The status the versions the cluster needs give (UNKNOWN when one of them was not read).
fn needed_status(versions: &[VersionReport], unread: bool) -> Status {
    let start = if unread { Status::Unknown } else { Status::Ok };
    versions
        .iter()
        .filter(|v| v.needed)
        .fold(start, |s, v| s.worst(v.status))
}

/// Without the key ledger (`--all` reads Azure only), every enabled version older than the one
/// in use may still encrypt Secrets: each is judged as the ledger's must-stay-alive ones are,
/// since only the ledger, inside the cluster, could clear it.
fn judge_older(
    all: &[KeyVersionInfo],
    in_use: &str,
    target: &str,
    judged: &mut Judged<'_>,
    notes: &mut Vec<String>,
) {
    let at = all
        .iter()
        .position(|v| crate::k8s::ledger::same_key_id(&v.id.to_string(), in_use));
    // An in-use version missing from the list: every other one may be older.
    let older: Vec<&KeyVersionInfo> = match at {
        Some(i) => all[..i].iter().collect(),
        None => all
            .iter()
            .filter(|v| !crate::k8s::ledger::same_key_id(&v.id.to_string(), in_use))
            .collect(),
    };
    let older: Vec<_> = older.into_iter().filter(|v| v.enabled).collect();
    if older.is_empty() {
        return;
    }
    for v in &older {
        judged.add(&v.id.to_string(), "possibly-needed", true, Ok(v));
    }
    notes.push(format!(
        "{} enabled version(s) older than the one in use were judged as possibly still needed: the key ledger was not read here, and only it can say Secrets no longer need them. The cluster's key ledger decides: `kmsctl check-expiry {target}`; or move every Secret off them and retire them with `kmsctl rotate --twice --retire-old`",
        older.len()
    ));
}

/// `--subscription S -g RG -n NAME` of a cluster resource id: the single-cluster check's flags.
fn single_check_args(id: &str) -> String {
    let parts: Vec<&str> = id.split('/').collect();
    let after = |k: &str| {
        parts
            .iter()
            .position(|p| p.eq_ignore_ascii_case(k))
            .and_then(|i| parts.get(i + 1))
            .copied()
            .unwrap_or("?")
    };
    format!(
        "--subscription {} -g {} -n {}",
        after("subscriptions"),
        after("resourceGroups"),
        after("managedClusters")
    )
}

/// Judges every version the key ledger says must stay alive.
async fn judge_ledger(az: &Azure, ids: &[String], judged: &mut Judged<'_>) {
    for key_id in ids {
        let v = match KeyId::parse(key_id) {
            Ok(id) => match az.key_reader(&id, None).await {
                Ok(kv) => kv.version(&id).await.map_err(|e| e.to_string()),
                Err(e) => Err(format!("{e:#}")),
            },
            Err(e) => Err(format!(
                "the ledger's key id is not a versioned key id: {e}"
            )),
        };
        judged.add(
            key_id,
            "must-stay-alive",
            true,
            v.as_ref().map_err(Clone::clone),
        );
    }
}

/// KMS off: Secrets written before the switch stay encrypted until a `disable` rewrote them
/// all, so the versions the ledger still lists are judged as on a cluster with KMS on. Only
/// with nothing in the ledger is there no key to watch.
async fn check_off(
    az: &Azure,
    id: &str,
    ledger: Option<Result<Ledger, String>>,
    windows: Windows,
    now: DateTime<Utc>,
) -> ClusterReport {
    let mut r = ClusterReport::new(id, "off", Status::Ok);
    let l = match ledger {
        None => {
            r.notes.push("KMS is off: no key to watch (the key ledger was not read here: `kmsctl check-expiry -n NAME` checks the versions Secrets may still need)".into());
            return r;
        }
        Some(Err(e)) => {
            r.status = Status::Unknown;
            r.notes.push(format!(
                "KMS is off, but the key ledger could not be read ({e}): whether Secrets still need a key version is unknown"
            ));
            return r;
        }
        Some(Ok(l)) => l,
    };
    // With KMS off there is no plugin keeping the previous key for reads: a version that a
    // proven switch to KMS off and a whole re-encryption moved every Secret away from (the
    // ledger marks it so only then) is needed by nothing.
    let proven_off = l.switch.is_none() || l.switch_proven_to(None);
    let still: Vec<_> = l
        .must_stay_alive()
        .into_iter()
        .filter(|e| e.reencrypted_away_at.is_none() || !proven_off)
        .map(|e| e.key_id.clone())
        .collect();
    if still.is_empty() {
        r.notes
            .push("KMS is off and the key ledger lists no version Secrets may still need: no key to watch".into());
        return r;
    }
    let mut versions = Vec::new();
    let mut judged = Judged {
        now,
        windows,
        reports: &mut versions,
    };
    judge_ledger(az, &still, &mut judged).await;
    r.status = needed_status(&versions, false);
    r.notes.push(format!(
        "KMS is off, but the key ledger lists {} version(s) Secrets may still be encrypted with (a `disable` that did not rewrite every Secret?): keep them enabled and unexpired, and finish it with `kmsctl resume` on the machine that ran it (`kmsctl runs` lists its runs)",
        versions.len()
    ));
    r.versions = versions;
    r
}

fn windows(a: &ExpiryArgs) -> anyhow::Result<Windows> {
    let d =
        |flag: &str, s: &str| expiry::parse_span(s).map_err(|e| Refusal(format!("{flag}: {e}")));
    let w = Windows {
        warn: d("--warn", &a.warn)?,
        critical: d("--critical", &a.critical)?,
    };
    if w.critical > w.warn {
        return Err(Refusal(format!(
            "--critical {} is longer than --warn {}: the critical window must lie inside the warning one",
            a.critical, a.warn
        ))
        .into());
    }
    Ok(w)
}

/// Anything that keeps a well-formed check from judging is UNKNOWN (exit 3), as monitoring
/// expects: a read that failed, and (without `--fix`) a refusal too, such as of the
/// credential's configuration. With `--fix`, a refusal before any change stays exit 2 and a
/// failure exit 1, as for every command that changes something, except that a fix that could
/// not read what it would act on is UNKNOWN.
fn unknown(e: anyhow::Error, fixing: bool) -> anyhow::Result<i32> {
    if fixing && e.downcast_ref::<super::expiry_fix::Unreadable>().is_none() {
        return Err(e);
    }
    let refused = if e.downcast_ref::<Refusal>().is_some() {
        "refused: "
    } else {
        ""
    };
    crate::say!("UNKNOWN: {refused}{e:#}");
    Ok(Status::Unknown.code())
}

pub async fn run(a: ExpiryArgs, format: Format) -> anyhow::Result<i32> {
    if a.cronjob {
        // Prints a manifest: no check runs, so its refusals are the usual exit 2.
        windows(&a)?;
        out(&super::cronjob::render(&a)?);
        return Ok(crate::exit_codes::OK);
    }
    // A flag's value that cannot be read is a mistake in the command line, refused (exit 2) as
    // clap refuses an unknown flag: the person or the CronJob that wrote it must fix it. What
    // keeps a well-formed check from judging is UNKNOWN.
    windows(&a)?;
    let fixing = a.fix.is_some();
    check(a, format).await.or_else(|e| unknown(e, fixing))
}

async fn check(a: ExpiryArgs, format: Format) -> anyhow::Result<i32> {
    let windows = windows(&a)?;
    if a.all {
        let az = setup::azure_any(a.target.auth, &a.target.aks_api_version)?;
        let mut reports = super::expiry_all::run(&az, windows).await;
        return super::expiry_all::print(&mut reports, format, windows, a.textfile.as_deref());
    }
    if format == Format::Html {
        return Err(Refusal("-o html is for --all (one page for the fleet)".into()).into());
    }
    let target = setup::target(&a.target);
    let az = setup::azure(&target, a.target.auth, &a.target.aks_api_version)?;
    let mut extended = super::expiry_fix::Extended::default();
    match &a.fix {
        Some(super::expiry_fix::Fix::Extend(by)) => {
            let before = check_one(&az, &target, windows).await;
            extended = super::expiry_fix::extend(&az, &before, *by, a.yes).await?;
        }
        Some(super::expiry_fix::Fix::Rotate) => {
            let before = check_one(&az, &target, windows).await;
            if let Some(code) =
                super::expiry_fix::rotate_if_needed(&a, &target, &before, format).await?
            {
                return Ok(code);
            }
        }
        None => {}
    }
    // After a fix, the check runs again: its exit code says what the fix achieved.
    let mut report = check_one(&az, &target, windows).await;
    report.extended = extended.done;
    if let Some(f) = extended.failed {
        report.notes.push(f);
    }
    Ok(emit(&mut [report], format, a.textfile.as_deref()))
}

/// The cluster the target names, with the versions its key ledger lists.
async fn check_one(
    az: &Azure,
    target: &crate::engine::journal::Target,
    windows: Windows,
) -> ClusterReport {
    match az.arm.get(&az.cluster_path, &az.arm.api.aks).await {
        Err(e) => ClusterReport::unknown(
            &az.cluster_path,
            format!("the cluster could not be read: {e}"),
        ),
        Ok(c) => {
            // The ledger lives in the cluster: without a usable kubeconfig the previous version
            // is reported as not checked, not as fine.
            let ledger = match super::kube_from_azure::cluster_for(target, az).await {
                Ok(k) if !is_this_cluster(&c.body, &k) => Err(format!(
                    "the kubeconfig context {} (server {}) is not this cluster's API server ({}; host and port are compared), so its key ledger is another cluster's: point --kubeconfig/--context at {}",
                    k.context.as_deref().unwrap_or("(current)"),
                    k.server,
                    endpoints(&c.body).join(" or "),
                    c.body["name"].as_str().unwrap_or("this cluster")
                )),
                Ok(k) => crate::k8s::ledger::load(&k.client)
                    .await
                    .map(|(l, _)| l)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("{e:#}")),
            };
            check_cluster(az, &c.body, Some(ledger), windows).await
        }
    }
}

/// Where the cluster's API server answers (its public and private FQDN, port 443), as the
/// wrong-cluster guard of `status` and preflight compares them.
fn endpoints(cluster: &Value) -> Vec<String> {
    crate::checks::facts::ClusterFacts {
        resource: cluster.clone(),
        etag: None,
        subscription_tenant: None,
    }
    .api_server_endpoints()
}

/// Whether the kubeconfig names this cluster's API server. Inside a pod (the CronJob, no
/// kubeconfig) the service account's API server is the pod's own cluster's, by address only.
fn is_this_cluster(cluster: &Value, k: &crate::k8s::client::Cluster) -> bool {
    if k.kubeconfig.is_none() && k.context.is_none() {
        return true;
    }
    let at = crate::k8s::client::server_endpoint(&k.server);
    endpoints(cluster)
        .iter()
        .any(|h| h.eq_ignore_ascii_case(&at))
}

/// Prints the reports and writes the Prometheus form into `textfile` (atomically: a
/// node_exporter scrape never sees half a file); returns the exit code.
pub fn emit(
    reports: &mut [ClusterReport],
    format: Format,
    textfile: Option<&std::path::Path>,
) -> i32 {
    let code = textfile_code(reports, textfile);
    match format {
        Format::Json => print_json(&serde_json::json!({ "clusters": reports })),
        Format::Prometheus => out(&prometheus(reports)),
        _ => out(&text(reports)),
    }
    code
}

/// The exit code of the reports, after writing the textfile: one that cannot be written
/// leaves the scraper with stale metrics, which is UNKNOWN whatever the clusters' status (each
/// report keeps its own status, with a note naming the file).
pub fn textfile_code(reports: &mut [ClusterReport], textfile: Option<&std::path::Path>) -> i32 {
    let worst = reports
        .iter()
        .fold(Status::Ok, |s, r| s.worst(r.status))
        .code();
    match write_textfile(reports, textfile) {
        Ok(()) => worst,
        Err(e) => {
            let why = format!("{e:#}");
            crate::say!("UNKNOWN: {why}");
            for r in reports.iter_mut() {
                r.notes.push(why.clone());
            }
            Status::Unknown.code()
        }
    }
}

/// The Prometheus form into `textfile`, written beside it and renamed into place.
pub fn write_textfile(
    reports: &[ClusterReport],
    textfile: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let Some(path) = textfile else {
        return Ok(());
    };
    // A symlink (a textfile collector's directory linked to elsewhere) is written through: the
    // rename happens beside its target, which a rename onto the link would replace with a
    // regular file.
    write_atomic(path, &prometheus(reports))
}

/// Writes `text` into `path` atomically (a temporary file beside it, renamed into place).
pub fn write_atomic(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let path = &resolve_link(path);
    let metrics = text;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, metrics).map_err(|e| {
        anyhow::anyhow!(
            "the --textfile {} could not be written (writing {}: {e})",
            path.display(),
            tmp.display()
        )
    })?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!(
            "the --textfile {} could not be moved into place from {}: {e}",
            path.display(),
            tmp.display()
        )
    })
}

/// The file a path names, through any symlinks (a dangling one: its target).
fn resolve_link(path: &std::path::Path) -> std::path::PathBuf {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        return path.to_path_buf();
    }
    std::fs::canonicalize(path).unwrap_or_else(|_| match std::fs::read_link(path) {
        Ok(t) => path.parent().map_or(t.clone(), |p| p.join(&t)),
        Err(_) => path.to_path_buf(),
    })
}

fn text(reports: &[ClusterReport]) -> String {
    let mut s = String::new();
    for r in reports {
        s.push_str(&format!(
            "{} {} ({})\n",
            r.status.label(),
            r.cluster,
            r.experience
        ));
        for v in &r.versions {
            // A version the cluster does not use decides nothing: what is wrong with it is a
            // note, not a CRITICAL line under an OK headline.
            let label = if v.needed || v.status == Status::Ok {
                v.status.label()
            } else {
                "note"
            };
            s.push_str(&format!(
                "  {:<8} {:<24} {}: {}{}\n",
                label,
                v.roles.join(","),
                v.key_id,
                v.note,
                if v.needed {
                    ""
                } else {
                    " (not used by the cluster)"
                }
            ));
        }
        if let Some(rot) = &r.rotation {
            s.push_str(&format!("  rotation: {rot}\n"));
        }
        for x in &r.extended {
            s.push_str(&format!(
                "  extended {} ({}): {} -> {}\n",
                x.key_id,
                x.roles.join(","),
                x.from.map_or("no expiry".to_string(), |f| f.to_string()),
                x.to
            ));
        }
        for n in &r.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
    }
    s
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition of the reports.
pub fn prometheus(reports: &[ClusterReport]) -> String {
    let mut expiry = String::from(
        "# HELP kmsctl_key_expiry_timestamp_seconds When a key version the cluster depends on expires (Unix time); absent without an expiry date.\n# TYPE kmsctl_key_expiry_timestamp_seconds gauge\n",
    );
    let mut enabled = String::from(
        "# HELP kmsctl_key_enabled Whether the key version is enabled (1) or disabled (0).\n# TYPE kmsctl_key_enabled gauge\n",
    );
    let mut status = String::from(
        "# HELP kmsctl_check_status The check's verdict: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.\n# TYPE kmsctl_check_status gauge\n",
    );
    for r in reports {
        status.push_str(&format!(
            "kmsctl_check_status{{cluster=\"{}\",id=\"{}\"}} {}\n",
            escape(&r.cluster),
            escape(&r.id),
            r.status.code()
        ));
        // One series per role: a version both in use and newest is two series, so a query
        // on `role="in-use"` finds it whatever else it is.
        for (v, role) in r
            .versions
            .iter()
            .flat_map(|v| v.roles.iter().map(move |role| (v, role)))
        {
            let Some(k) = key_of(&v.key_id) else { continue };
            let labels = format!(
                "cluster=\"{}\",vault=\"{}\",key=\"{}\",version=\"{}\",role=\"{}\"",
                escape(&r.cluster),
                escape(k.vault_host()),
                escape(&k.name),
                escape(&k.version),
                escape(role)
            );
            if let Some(e) = v.expires_on {
                expiry.push_str(&format!(
                    "kmsctl_key_expiry_timestamp_seconds{{{labels}}} {}\n",
                    e.timestamp()
                ));
            }
            if let Some(on) = v.enabled {
                enabled.push_str(&format!(
                    "kmsctl_key_enabled{{{labels}}} {}\n",
                    u8::from(on)
                ));
            }
        }
    }
    format!("{expiry}{enabled}{status}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_textfile_behind_a_symlink_is_written_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.prom");
        let link = dir.path().join("kmsctl.prom");
        std::fs::write(&target, "old").unwrap();
        std::os::unix::fs::symlink("real.prom", &link).unwrap();
        let r = super::ClusterReport::unknown("/x/aks", "why".into());
        super::write_textfile(&[r], Some(&link)).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "the link stays a link"
        );
        let written = std::fs::read_to_string(&target).unwrap();
        assert!(written.contains("kmsctl_check_status"), "{written}");
    }
}
