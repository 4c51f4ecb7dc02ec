//! Re-encryption benchmark (`cargo bench --bench reencrypt -- [--secrets N] [--latency-ms L]
//! [--write-qps Q] [--skip-kubectl] [--namespaces K]`).
//!
//! Starts the twin (`kmsctl sim serve`) with latency L and N Secrets of a realistic size mix, and
//! measures on that same twin, changing the key before each arm and checking with `inspect` after
//! each that the Secrets moved: (a) kubectl's `get -o json | replace -f -` pipeline, (b) `kmsctl
//! reencrypt` with its defaults, (c) one request in flight, (d) the ceiling: a minimal client
//! that only PUTs, with (b)'s cap on requests in flight. With --write-qps it also runs kmsctl
//! against a twin that answers 429 above that write rate.

use anyhow::{Context, bail};
use futures::StreamExt;
use kmsctl::azure::arm::{ApiVersions, ArmClient};
use kmsctl::azure::keys::{KeyId, KeyVault};
use kmsctl::azure::transport::Route;
use kmsctl::engine::cluster::update;
use kmsctl::engine::kms::DesiredKms;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KMSCTL: &str = env!("CARGO_BIN_EXE_kmsctl");
const DEFAULT_CONCURRENCY: usize = 64;
/// The one-at-a-time arms run on this many Secrets at most; their rate is what counts.
const SLOW_SAMPLE: usize = 2000;

struct Args {
    secrets: usize,
    latency_ms: u64,
    write_qps: Option<f64>,
    skip_kubectl: bool,
    namespaces: usize,
}

fn args() -> Args {
    let mut a = Args {
        secrets: 10_000,
        latency_ms: 20,
        write_qps: None,
        skip_kubectl: false,
        namespaces: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_default();
        match arg.as_str() {
            "--secrets" => a.secrets = val().parse().expect("--secrets N"),
            "--latency-ms" => a.latency_ms = val().parse().expect("--latency-ms L"),
            "--write-qps" => a.write_qps = Some(val().parse().expect("--write-qps Q")),
            "--namespaces" => a.namespaces = val().parse().expect("--namespaces K"),
            "--skip-kubectl" => a.skip_kubectl = true,
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// A twin process and clients for its APIs.
struct Twin {
    child: std::process::Child,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Drop for Twin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_twin(
    secrets: usize,
    namespaces: usize,
    latency_ms: u64,
    write_qps: Option<f64>,
) -> anyhow::Result<Twin> {
    let dir = std::env::temp_dir().join(format!("kmsctl-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let mut cmd = Command::new(KMSCTL);
    cmd.args(["sim", "serve", "--dir"]).arg(&dir);
    cmd.args([
        "--secrets",
        &secrets.to_string(),
        "--namespaces",
        &namespaces.to_string(),
        "--latency-ms",
        &latency_ms.to_string(),
        "--lro-seconds",
        "0",
    ]);
    if let Some(q) = write_qps {
        cmd.args(["--write-qps", &q.to_string()]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the twin")?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("piped")),
        &mut line,
    )?;
    anyhow::ensure!(line.trim() == "ready", "the twin did not say ready: {line}");
    let env = std::fs::read_to_string(dir.join("env"))?
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    Ok(Twin { child, dir, env })
}

impl Twin {
    fn var(&self, k: &str) -> String {
        self.env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
    async fn inspect(&self) -> anyhow::Result<Value> {
        kmsctl::sim::admin_request(&self.dir, reqwest::Method::GET, "/_sim/inspect", None).await
    }
    async fn azure(
        &self,
    ) -> anyhow::Result<(
        ArmClient,
        azure_core::http::ClientOptions,
        std::sync::Arc<dyn azure_core::credentials::TokenCredential>,
    )> {
        let route = Route {
            address: Some(self.var("KMSCTL_AZURE_ROUTE").parse()?),
            ca_pem: Some(std::fs::read(self.dir.join("ca.pem"))?),
        };
        let options = route.client_options()?;
        let cred: std::sync::Arc<dyn azure_core::credentials::TokenCredential> =
            azure_identity::ClientSecretCredential::new(
                &self.var("AZURE_TENANT_ID"),
                self.var("AZURE_CLIENT_ID"),
                self.var("AZURE_CLIENT_SECRET").into(),
                Some(azure_identity::ClientSecretCredentialOptions {
                    client_options: options.clone(),
                }),
            )?;
        Ok((
            ArmClient::new(cred.clone(), options.clone(), ApiVersions::default()),
            options,
            cred,
        ))
    }

    /// Rotates the key and moves the cluster to the new version; returns its storage label.
    async fn change_key(&self) -> anyhow::Result<String> {
        let (arm, options, cred) = self.azure().await?;
        let path = kmsctl::checks::facts::cluster_path(
            &self.var("AZURE_SUBSCRIPTION_ID"),
            &self.var("KMSCTL_RESOURCE_GROUP"),
            &self.var("KMSCTL_CLUSTER"),
        );
        let cluster = arm.get(&path, &arm.api.aks).await?;
        let current = cluster.body["properties"]["securityProfile"]["azureKeyVaultKms"]["keyId"]
            .as_str()
            .context("no keyId")?;
        let id = KeyId::parse(current).map_err(anyhow::Error::msg)?;
        let kv = KeyVault::new(&id.vault_url, cred, options, arm.retry.clone())?;
        let new = kv.rotate(&id.name).await?;
        let desired = DesiredKms {
            enabled: true,
            key_id: Some(new.id.to_string()),
            network_access: Some("Public".into()),
            vault_resource_id: None,
        };
        update(&arm, &path, &desired, &kmsctl::engine::events::Silent).await?;
        Ok(format!("kms:v2:{}", new.id))
    }

    async fn under(&self, label: &str) -> anyhow::Result<(u64, u64)> {
        let doc = self.inspect().await?;
        Ok((
            doc["storage"]["byKey"][label].as_u64().unwrap_or(0),
            doc["storage"]["total"].as_u64().unwrap_or(0),
        ))
    }
}

/// Peak RSS so far of a running process, in KiB (VmHWM is per address space, so unlike
/// wait4's ru_maxrss it does not inherit the spawning process's high-water mark across exec).
fn hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Waits for children, sampling their peak RSS; returns whether all succeeded and the largest peak.
fn wait_peak(children: &mut [&mut std::process::Child]) -> anyhow::Result<(bool, u64)> {
    let mut peak = 0;
    let mut ok = true;
    let mut done = vec![false; children.len()];
    while done.iter().any(|d| !d) {
        for (i, c) in children.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            if let Some(h) = hwm_kib(c.id()) {
                peak = peak.max(h);
            }
            if let Some(status) = c.try_wait()? {
                ok &= status.success();
                done[i] = true;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((ok, peak))
}

struct Arm {
    seconds: f64,
    secrets: u64,
    rss_kib: u64,
}

impl Arm {
    fn rate(&self) -> f64 {
        self.secrets as f64 / self.seconds
    }
    fn print(&self, name: &str) {
        let rss = if self.rss_kib > 0 {
            format!("{:.1} MiB", self.rss_kib as f64 / 1024.0)
        } else {
            "-".into()
        };
        println!(
            "{name:<28} {:>8.2} s {:>9.0} Secrets/s  peak RSS {rss}  ({} Secrets)",
            self.seconds,
            self.rate(),
            self.secrets
        );
    }
}

async fn namespace_counts(twin: &Twin) -> anyhow::Result<Vec<(String, usize)>> {
    let kc = kube::config::Kubeconfig::read_from(twin.kubeconfig())?;
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?,
    )?;
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::all(client);
    let mut counts = std::collections::BTreeMap::new();
    for s in api.list_metadata(&Default::default()).await?.items {
        *counts
            .entry(s.metadata.namespace.unwrap_or_default())
            .or_insert(0) += 1;
    }
    Ok(counts.into_iter().collect())
}

/// Namespaces holding about `want` Secrets (all when there are fewer): the slow arms' sample.
async fn sample(twin: &Twin, want: usize) -> anyhow::Result<(Vec<String>, usize, bool)> {
    let counts = namespace_counts(twin).await?;
    let mut chosen = Vec::new();
    let mut n = 0;
    for (ns, c) in &counts {
        if n >= want {
            break;
        }
        n += c;
        chosen.push(ns.clone());
    }
    Ok((chosen.clone(), n, chosen.len() == counts.len()))
}

/// (a) The documented pipeline, namespace by namespace on at most 2,000 Secrets.
async fn kubectl_arm(twin: &Twin) -> anyhow::Result<Arm> {
    let (chosen, n, all) = sample(twin, SLOW_SAMPLE).await?;
    let start = Instant::now();
    let mut peak = 0;
    let scopes: Vec<Vec<String>> = if all {
        vec![vec!["-A".into()]]
    } else {
        chosen
            .iter()
            .map(|ns| vec!["-n".into(), ns.clone()])
            .collect()
    };
    for scope in scopes {
        let mut get = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(twin.kubeconfig())
            .args(["get", "secrets", "-o", "json"])
            .args(&scope)
            .stdout(Stdio::piped())
            .spawn()?;
        let mut replace = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(twin.kubeconfig())
            .args(["replace", "-f", "-"])
            .stdin(Stdio::from(get.stdout.take().expect("piped")))
            .stdout(Stdio::null())
            .spawn()?;
        let (ok, rss) = wait_peak(&mut [&mut get, &mut replace])?;
        anyhow::ensure!(ok, "the kubectl pipeline failed");
        peak = peak.max(rss);
    }
    Ok(Arm {
        seconds: start.elapsed().as_secs_f64(),
        secrets: n as u64,
        rss_kib: peak,
    })
}

/// (b), (c): kmsctl reencrypt as a user runs it.
fn kmsctl_arm(twin: &Twin, extra: &[&str]) -> anyhow::Result<(Arm, Value)> {
    let state = twin
        .dir
        .join(format!("state-{}", uuid::Uuid::new_v4().simple()));
    let start = Instant::now();
    let mut child = Command::new(KMSCTL)
        .args(["reencrypt", "-o", "json", "--kubeconfig"])
        .arg(twin.kubeconfig())
        .args(extra)
        .env("XDG_STATE_HOME", &state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).map(|_| out)
    });
    let (ok, rss) = wait_peak(&mut [&mut child])?;
    let out = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    let seconds = start.elapsed().as_secs_f64();
    anyhow::ensure!(ok, "kmsctl reencrypt failed: {out}");
    let report: Value = serde_json::from_str(&out)?;
    let summary = report["reencrypt"][0].clone();
    let done = summary["totals"]["rewritten"].as_u64().unwrap_or(0)
        + summary["totals"]["unchanged"].as_u64().unwrap_or(0);
    Ok((
        Arm {
            seconds,
            secrets: done,
            rss_kib: rss,
        },
        summary,
    ))
}

/// (d) The ceiling: everything listed beforehand; only the PUTs are timed.
async fn ceiling_arm(twin: &Twin, in_flight: usize) -> anyhow::Result<Arm> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(twin.dir.join("ca.pem"))?)?;
    let kc = std::fs::read_to_string(twin.kubeconfig())?;
    // The API server's host name resolves nowhere: like kubectl, go through the kubeconfig's
    // proxy-url when it names one.
    let mut builder = reqwest::Client::builder().tls_certs_only([ca]);
    if let Some(proxy) = kc
        .lines()
        .find_map(|l| l.trim().strip_prefix("proxy-url: "))
    {
        builder = builder.proxy(reqwest::Proxy::all(proxy)?);
    }
    let client = builder.build()?;
    let server = kc
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .context("server")?
        .to_string();
    let token = kc
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .context("token")?
        .to_string();
    let list: Value = client
        .get(format!("{server}/api/v1/secrets"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let bodies: Vec<(String, Vec<u8>)> = list["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|s| {
            let url = format!(
                "{server}/api/v1/namespaces/{}/secrets/{}",
                s["metadata"]["namespace"].as_str().unwrap_or_default(),
                s["metadata"]["name"].as_str().unwrap_or_default()
            );
            (url, serde_json::to_vec(s).unwrap_or_default())
        })
        .collect();
    let n = bodies.len() as u64;
    let start = Instant::now();
    let results: Vec<bool> = futures::stream::iter(bodies)
        .map(|(url, body)| {
            let (client, token) = (client.clone(), token.clone());
            async move {
                client
                    .put(url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    anyhow::ensure!(results.iter().all(|ok| *ok), "some ceiling PUTs failed");
    Ok(Arm {
        seconds: start.elapsed().as_secs_f64(),
        secrets: n,
        rss_kib: 0,
    })
}

async fn moved(twin: &Twin, label: &str, want: u64, arm: &str) -> anyhow::Result<()> {
    let (n, total) = twin.under(label).await?;
    if n < want {
        bail!("{arm}: only {n} of {want} Secrets moved to the new key ({total} in all)");
    }
    Ok(())
}

async fn main_scenario(a: &Args) -> anyhow::Result<()> {
    let twin = start_twin(a.secrets, a.namespaces, a.latency_ms, None)?;
    let total = twin.under("").await?.1;
    println!(
        "twin: {total} Secrets in {} namespaces, {} ms latency per request",
        a.namespaces, a.latency_ms
    );
    let kubectl = if a.skip_kubectl {
        None
    } else {
        let label = twin.change_key().await?;
        let arm = kubectl_arm(&twin).await?;
        moved(&twin, &label, arm.secrets, "kubectl").await?;
        arm.print("(a) kubectl get | replace");
        Some(arm)
    };
    let label = twin.change_key().await?;
    let (kmsctl, summary) = kmsctl_arm(&twin, &[])?;
    moved(&twin, &label, total, "kmsctl").await?;
    kmsctl.print("(b) kmsctl reencrypt");
    // The run also shows, before and after the pass, that every replica writes with one key.
    let pass = summary["seconds"].as_f64().unwrap_or(0.0);
    println!(
        "    of which the pass {pass:.2} s ({:.0} Secrets/s), the rest the write-key checks before and after, the lease and the journal",
        kmsctl.secrets as f64 / pass.max(1e-9)
    );
    let label = twin.change_key().await?;
    let (chosen, n, _) = sample(&twin, SLOW_SAMPLE).await?;
    let mut flags = vec!["--concurrency".to_string(), "1".to_string()];
    for ns in &chosen {
        flags.extend(["--namespace".to_string(), ns.clone()]);
    }
    let (sequential, _) = kmsctl_arm(&twin, &flags.iter().map(String::as_str).collect::<Vec<_>>())?;
    moved(&twin, &label, n as u64, "sequential").await?;
    sequential.print("(c) one in flight");
    let label = twin.change_key().await?;
    let ceiling = ceiling_arm(&twin, DEFAULT_CONCURRENCY).await?;
    moved(&twin, &label, total, "ceiling").await?;
    ceiling.print("(d) ceiling");
    let mib = |kib: u64| kib as f64 / 1024.0;
    let (k_rate, k_rss) = kubectl
        .as_ref()
        .map(|k| (format!("{:.0}", k.rate()), format!("{:.0}", mib(k.rss_kib))))
        .unwrap_or(("-".into(), "-".into()));
    let speedup = kubectl
        .as_ref()
        .map(|k| format!("{:.1}", kmsctl.rate() / k.rate()))
        .unwrap_or_else(|| "-".into());
    println!(
        "speedup over one-in-flight: {:.1}x",
        kmsctl.rate() / sequential.rate()
    );
    if let Some(q) = a.write_qps {
        throttled_scenario(a, q).await?;
    }
    println!(
        "reencrypt: kmsctl {:.0}/s rss {:.0}MiB | kubectl {k_rate}/s rss {k_rss}MiB | sequential {:.0}/s | ceiling {:.0}/s | speedup {speedup}x | of-ceiling {:.0}%",
        kmsctl.rate(),
        mib(kmsctl.rss_kib),
        sequential.rate(),
        ceiling.rate(),
        100.0 * kmsctl.rate() / ceiling.rate()
    );
    Ok(())
}

/// API Priority and Fairness in the way: the twin answers 429 above `qps` writes per second.
async fn throttled_scenario(a: &Args, qps: f64) -> anyhow::Result<()> {
    let twin = start_twin(a.secrets, a.namespaces, a.latency_ms, Some(qps))?;
    let total = twin.under("").await?.1;
    let label = twin.change_key().await?;
    let (arm, summary) = kmsctl_arm(&twin, &[])?;
    moved(&twin, &label, total, "throttled").await?;
    arm.print("(e) kmsctl, 429 above limit");
    println!(
        "reencrypt-429: write limit {qps:.0}/s | kmsctl {:.0}/s ({:.0}% of the limit) | {:.1}% of {} requests answered 429",
        arm.rate(),
        100.0 * arm.rate() / qps,
        100.0 * summary["throttledShare"].as_f64().unwrap_or(0.0),
        summary["requests"]
    );
    Ok(())
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let a = args();
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    if let Err(e) = rt.block_on(main_scenario(&a)) {
        eprintln!("bench failed: {e:#}");
        std::process::exit(1);
    }
}
