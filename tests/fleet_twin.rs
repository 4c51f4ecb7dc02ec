//! A fleet twin (`sim serve --fleet-clusters N`): each member a whole cluster behind the one
//! port, reached through Resource Manager's credentials (`--kube-credentials azure`) with no
//! kubeconfig, one member's runs leaving the others untouched.

mod common;

use base64::Engine;
use common::{World, fleet, small, text};
use kmsctl::sim::SimOptions;
use kmsctl::sim::fleet_members::FleetSpec;
use serde_json::Value;

const AKS_APP: &str = "6dae42f8-4368-4678-94ff-3960e28e3630";

fn opts(secrets: usize, extra: FleetSpec) -> SimOptions {
    SimOptions {
        lro_seconds: 1,
        fleet_clusters: extra,
        ..small(secrets)
    }
}

/// A client that reaches every Azure host at the twin's port, trusting its CA.
fn http(w: &World) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(w.twin.ca_pem.as_bytes()).unwrap()]);
    for host in ["management.azure.com", "login.microsoftonline.com"] {
        b = b.resolve(host, w.twin.addr);
    }
    b.build().unwrap()
}

/// A token from the twin's Entra ID for `scope`, as the fleet's principal.
async fn token(w: &World, scope: &str) -> String {
    let ids = w.twin.ids();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", ids.client_id.as_str()),
        ("client_secret", ids.client_secret.as_str()),
        ("scope", scope),
    ];
    let r: Value = http(w)
        .post(format!(
            "https://login.microsoftonline.com/{}/oauth2/v2.0/token",
            ids.tenant
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["access_token"].as_str().unwrap().to_string()
}

async fn arm(w: &World, method: reqwest::Method, path: &str) -> (u16, Value) {
    let t = token(w, "https://management.azure.com/.default").await;
    let r = http(w)
        .request(
            method,
            format!("https://management.azure.com{path}?api-version=2025-10-01"),
        )
        .bearer_auth(t)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn cluster_path(m: &common::Member) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ContainerService/managedClusters/{}",
        m.subscription, m.resource_group, m.name
    )
}

async fn credential(w: &World, name: &str, which: &str) -> (u16, Value, String) {
    let m = w.member(name);
    let (status, body) = arm(
        w,
        reqwest::Method::POST,
        &format!("{}/{which}", cluster_path(&m)),
    )
    .await;
    let kubeconfig = body["kubeconfigs"][0]["value"]
        .as_str()
        .map(|v| {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).unwrap()).unwrap()
        })
        .unwrap_or_default();
    (status, body, kubeconfig)
}

/// A kube client from a credential kubeconfig, its exec user replaced by `bearer`.
async fn kube_with(kubeconfig: &str, bearer: &str) -> kube::Client {
    let mut kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    kmsctl::k8s::azure_credentials::without_exec(&mut kc);
    kc.auth_infos[0].auth_info.as_mut().unwrap().token = Some(bearer.to_string().into());
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_come_in_the_service_shape_and_the_api_server_takes_entra_tokens() {
    let w = fleet(
        opts(
            5,
            FleetSpec {
                no_local_accounts: 1,
                ..Default::default()
            },
        ),
        2,
    )
    .await;
    let (status, body, kc) = credential(&w, "aks-fleet-02", "listClusterUserCredential").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kubeconfigs"][0]["name"], "clusterUser");
    let fqdn = w.inspect_member("aks-fleet-02")["cluster"]["properties"]["fqdn"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(kc.contains(&format!("server: https://{fqdn}:443")), "{kc}");
    assert!(
        kc.contains(&format!("proxy-url: http://{}", w.twin.addr)),
        "{kc}"
    );
    assert!(kc.contains("certificate-authority-data: "), "{kc}");
    assert!(
        kc.contains("command: kubelogin") && kc.contains(&format!("- {AKS_APP}")),
        "an Entra ID cluster's user runs kubelogin for the AKS server app: {kc}"
    );
    let cluster = &w.inspect_member("aks-fleet-02")["cluster"]["properties"];
    assert_eq!(cluster["aadProfile"]["managed"], true);
    assert_eq!(cluster["aadProfile"]["enableAzureRBAC"], true);

    // The API server takes a token for the AKS server application, not one for another audience.
    let aks = token(&w, &format!("{AKS_APP}/.default")).await;
    let ns: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(kube_with(&kc, &aks).await);
    assert!(ns.list(&Default::default()).await.is_ok());
    let arm_token = token(&w, "https://management.azure.com/.default").await;
    let ns: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(kube_with(&kc, &arm_token).await);
    match ns.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 401),
        other => panic!("a management token reached the API server: {other:?}"),
    }
    // kubectl too, with the kubeconfig as Resource Manager gave it and the exec user's token
    // put in place (what kubelogin would hand it).
    let exec_start = kc.find("    exec:").unwrap();
    let with_token = format!("{}    token: {aks}\n", &kc[..exec_start]);
    let file = w.dir.path().join("user-kubeconfig");
    std::fs::write(&file, with_token).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kubectl")
            .args(["get", "secrets", "-A", "--no-headers", "--kubeconfig"])
            .arg(file)
            .output()
            .expect("kubectl runs (.ci/run installs it)")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "kubectl: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);
    // One token endpoint for the fleet: the same token opens another member's API server.
    let (_, _, kc1) = credential(&w, "aks-fleet-01", "listClusterUserCredential").await;
    let ns: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(kube_with(&kc1, &aks).await);
    assert!(ns.list(&Default::default()).await.is_ok());

    // The admin credential: a static token where local accounts are enabled, else 400.
    let (status, body, kc) = credential(&w, "aks-fleet-02", "listClusterAdminCredential").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kubeconfigs"][0]["name"], "clusterAdmin");
    assert!(kc.contains("token: ") && !kc.contains("exec:"), "{kc}");
    let (status, body, _) = credential(&w, "aks-fleet-01", "listClusterAdminCredential").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "BadRequest");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disable local accounts"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_aggregate_and_names_route_to_their_member() {
    let w = fleet(opts(3, FleetSpec::default()), 4).await;
    let ms = w.members();
    let names: Vec<&str> = ms.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "aks-fleet-01",
            "aks-fleet-02",
            "aks-fleet-03",
            "aks-fleet-04"
        ]
    );
    assert_eq!(ms[0].subscription, ms[2].subscription);
    assert_ne!(ms[0].subscription, ms[1].subscription);
    let (_, list) = arm(
        &w,
        reqwest::Method::GET,
        &format!(
            "/subscriptions/{}/providers/Microsoft.ContainerService/managedClusters",
            ms[1].subscription
        ),
    )
    .await;
    let listed: Vec<&str> = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["aks-fleet-02", "aks-fleet-04"]);
    let (status, c) = arm(&w, reqwest::Method::GET, &cluster_path(&ms[2])).await;
    assert_eq!((status, c["name"].as_str()), (200, Some("aks-fleet-03")));
    // A member's name in another member's group is the service's 404.
    let mut wrong = ms[2].clone();
    wrong.resource_group = ms[0].resource_group.clone();
    let (status, _) = arm(&w, reqwest::Method::GET, &cluster_path(&wrong)).await;
    assert_eq!(status, 404);
    // check-expiry --all sees every member through Resource Graph.
    let out = w.run(&["check-expiry", "--all", "-o", "json"]).await;
    for n in &names {
        assert!(text(&out).contains(n), "{n} missing: {}", text(&out));
    }
    // sim inspect --all: one element per member, each what inspect prints for one cluster.
    let dir = w.dir.path().display().to_string();
    let out = w.run(&["sim", "inspect", "--dir", &dir, "--all"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    let clusters = all["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 4);
    for (c, n) in clusters.iter().zip(&names) {
        assert_eq!(c["cluster"]["name"], *n);
        assert_eq!(c["storage"]["total"], 3);
        let kid = c["cluster"]["properties"]["securityProfile"]["azureKeyVaultKms"]["keyId"]
            .as_str()
            .unwrap();
        assert!(kid.contains(&format!("kv-fleet-{}", &n[10..])), "{kid}");
        assert!(c["storage"]["byKey"][format!("kms:v2:{kid}")] == 3);
    }
    let out = w
        .run(&["sim", "inspect", "--dir", &dir, "--cluster", "aks-fleet-03"])
        .await;
    let one: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(one["cluster"]["name"], "aks-fleet-03");
}

/// The ids and storage of every member but `except`, to compare before and after.
fn others(w: &World, except: &str) -> Vec<(String, String, Value)> {
    w.members()
        .iter()
        .filter(|m| m.name != except)
        .map(|m| {
            let d = w.inspect_member(&m.name);
            (
                m.name.clone(),
                w.member_key(&m.name),
                d["storage"]["byKey"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_member_rotated_twice_with_azure_credentials_and_resumed_after_a_kill() {
    let w = fleet(opts(120, FleetSpec::default()), 4).await;
    let before = others(&w, "aks-fleet-03");
    let old_key = w.member_key("aks-fleet-03");
    let m = w.member("aks-fleet-03");
    let mut args = vec!["rotate", "--twice", "--yes", "--kube-credentials", "azure"];
    let flags = m.flags();
    args.extend(flags.iter().map(String::as_str));
    // Killed as the first re-encryption starts.
    let killed = w
        .kill_when(&args, |j, _| {
            j.contains("\"type\":\"step-started\",\"index\":6")
        })
        .await;
    assert!(killed, "the run ended before the kill point");
    // resume names the cluster only: the journal says how it was reached.
    let out = w.run_on("aks-fleet-03", &["resume", "--yes"]).await;
    assert!(out.status.success(), "resume: {}", text(&out));
    let (n, total) = w.member_storage("aks-fleet-03");
    assert!(
        total >= 120 && n == total,
        "{n} of {total} under the new key"
    );
    assert_ne!(w.member_key("aks-fleet-03"), old_key);
    assert_eq!(others(&w, "aks-fleet-03"), before, "another member changed");
    assert!(
        w.journal_lines().contains("\"kubeCredentials\":\"azure\""),
        "the journal records how the cluster was reached"
    );
    // check-expiry reads the member's key ledger the same way.
    let out = w
        .run_on(
            "aks-fleet-03",
            &["check-expiry", "--kube-credentials", "azure"],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("could not be read"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn what_cannot_be_reached_or_had_is_refused_before_any_change() {
    let w = fleet(
        opts(
            5,
            FleetSpec {
                no_local_accounts: 1,
                private_api: 1,
                ..Default::default()
            },
        ),
        2,
    )
    .await;
    let all = serde_json::to_string(&w.inspect_all()["clusters"]).unwrap();
    let strip = |v: &str| -> Value {
        // Fields that tick on their own (replica state) are left out of the comparison.
        let mut d: Value = serde_json::from_str(v).unwrap();
        for c in d.as_array_mut().unwrap() {
            c.as_object_mut().unwrap().remove("apiServer");
        }
        d
    };
    let out = w
        .run_on(
            "aks-fleet-01",
            &["rotate", "--yes", "--kube-credentials", "azure-admin"],
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("local accounts") && text(&out).contains("--kube-credentials azure"),
        "{}",
        text(&out)
    );
    let private = w.inspect_member("aks-fleet-03")["cluster"]["properties"]["privateFQDN"]
        .as_str()
        .unwrap()
        .to_string();
    let out = w
        .run_on(
            "aks-fleet-03",
            &["rotate", "--yes", "--kube-credentials", "azure"],
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "private API server {private}: not reachable from this network"
        )),
        "{}",
        text(&out)
    );
    let after = serde_json::to_string(&w.inspect_all()["clusters"]).unwrap();
    assert_eq!(strip(&all), strip(&after), "a refusal changed something");
    assert!(
        !w.state_dir().join("kmsctl/runs").exists()
            || std::fs::read_dir(w.state_dir().join("kmsctl/runs"))
                .unwrap()
                .next()
                .is_none(),
        "a refused run left a journal"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fault_for_one_member_stays_with_it() {
    let w = fleet(opts(10, FleetSpec::default()), 2).await;
    let dir = w.dir.path().display().to_string();
    let out = w
        .run(&[
            "sim",
            "fault",
            "--dir",
            &dir,
            "--cluster",
            "aks-fleet-02",
            "--fail-operation",
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let key2 = w.member_key("aks-fleet-02");
    let out = w
        .run_on(
            "aks-fleet-02",
            &["rotate", "--yes", "--kube-credentials", "azure"],
        )
        .await;
    assert!(!out.status.success(), "a failed operation: {}", text(&out));
    assert_eq!(
        w.member_key("aks-fleet-02"),
        key2,
        "the failed update left KMS as it was"
    );
    let out = w
        .run_on(
            "aks-fleet-01",
            &["rotate", "--yes", "--kube-credentials", "azure"],
        )
        .await;
    assert!(out.status.success(), "the other member: {}", text(&out));
    let (n, total) = w.member_storage("aks-fleet-01");
    assert_eq!(n, total);
    // Cleared, the member's update goes through on resume.
    let out = w.run(&["sim", "fault", "--dir", &dir, "--clear"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = w.run_on("aks-fleet-02", &["resume", "--yes"]).await;
    assert!(out.status.success(), "resume: {}", text(&out));
    assert_ne!(w.member_key("aks-fleet-02"), key2);
    let unknown = w
        .run(&[
            "sim",
            "fault",
            "--dir",
            &dir,
            "--cluster",
            "aks-nope",
            "--status",
            "500",
        ])
        .await;
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("aks-fleet-01"),
        "{}",
        text(&unknown)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_opt_in_members_are_what_they_say() {
    let w = fleet(
        opts(
            4,
            FleetSpec {
                private_vaults: 1,
                platform_managed: 1,
                private_api: 1,
                ..Default::default()
            },
        ),
        2,
    )
    .await;
    let names: Vec<String> = w.members().into_iter().map(|m| m.name).collect();
    assert_eq!(names.len(), 4);
    // Member 2 of 2: its key in a private vault with an approved private endpoint.
    let d = w.inspect_member("aks-fleet-02");
    let v = &d["vault"]["properties"];
    assert_eq!(v["publicNetworkAccess"], "Disabled");
    assert!(
        v["privateEndpointConnections"][0]["properties"]["privateLinkServiceConnectionState"]["status"]
            == "Approved",
        "{v}"
    );
    let kms = &d["cluster"]["properties"]["securityProfile"]["azureKeyVaultKms"];
    assert_eq!(kms["keyVaultNetworkAccess"], "Private");
    assert_eq!(d["storage"]["unreadable"]["total"], 0);
    // Member 3: platform-managed rotation (a versionless key id), its Secrets readable.
    let d = w.inspect_member("aks-fleet-03");
    let sp = &d["cluster"]["properties"]["securityProfile"];
    let kid = sp["azureKeyVaultKms"]["keyId"].as_str().unwrap();
    assert!(kid.ends_with("/keys/kms-key"), "{kid}");
    assert!(sp["kubernetesResourceObjectEncryptionProfile"].is_object());
    assert_eq!(d["storage"]["byKey"][format!("kms:v2:{kid}")], 4);
    assert_eq!(d["storage"]["unreadable"]["total"], 0);
    // Member 4: a private cluster, its API server only by its private FQDN.
    let p = &w.inspect_member("aks-fleet-04")["cluster"]["properties"];
    assert_eq!(p["apiServerAccessProfile"]["enablePrivateCluster"], true);
    assert!(p["fqdn"].is_null());
    assert!(
        p["privateFQDN"]
            .as_str()
            .unwrap()
            .contains(".privatelink.westeurope.azmk8s.io"),
        "{p}"
    );
    // The rotatable one is rotatable with no kubeconfig, the private vault's refused from
    // outside its network (the vault's data plane cannot be reached).
    let out = w
        .run_on(
            "aks-fleet-01",
            &["rotate", "--yes", "--kube-credentials", "azure"],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let out = w
        .run_on(
            "aks-fleet-02",
            &["rotate", "--yes", "--kube-credentials", "azure"],
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_cluster_is_rotated_from_inside_its_network() {
    let mut o = opts(
        6,
        FleetSpec {
            private_api: 1,
            ..Default::default()
        },
    );
    o.operator_network = kmsctl::sim::operator_network::OperatorNetwork::Inside;
    let w = fleet(o, 1).await;
    let (_, _, kc) = credential(&w, "aks-fleet-02", "listClusterUserCredential").await;
    let private = w.inspect_member("aks-fleet-02")["cluster"]["properties"]["privateFQDN"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        kc.contains(&format!("server: https://{private}:443")),
        "{kc}"
    );
    let old = w.member_key("aks-fleet-02");
    // The wrong-cluster guard takes the private FQDN as this cluster's API server.
    let out = w
        .run_on(
            "aks-fleet-02",
            &["rotate", "--yes", "--kube-credentials", "azure"],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(w.member_key("aks-fleet-02"), old);
    let (n, total) = w.member_storage("aks-fleet-02");
    assert_eq!(n, total);
}
