//! The bad-input corpus (TESTING.md): each input exits 2 with a message that says what is wrong
//! and how to fix it, and leaves the twin exactly as it was (`sim inspect` compared whole).
//! Case variants of ARM ids are accepted, as ARM compares ids case-insensitively.

mod common;

use common::{World, small, text, world};
use kmsctl::sim::SimOptions;

fn kid(w: &World) -> String {
    w.key_versions()[0]["kid"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn malformed_key_ids_and_resource_ids_are_refused() {
    let w = world(SimOptions {
        kms: false,
        ..small(10)
    })
    .await;
    let k = kid(&w);
    let host = w.twin.ids().vault_host();
    let versionless = k.rsplit_once('/').unwrap().0.to_string();
    let with_port = k.replace(&host, &format!("{host}:443"));
    let other_host = k.replace(&host, "no-such-vault.vault.azure.net");
    for (key, expect) in [
        (versionless.as_str(), "versioned"),
        (&format!("{k}/"), "versioned"),
        (with_port.as_str(), "port"),
        (other_host.as_str(), "no-such-vault"),
        ("kv.vault.azure.net/keys/k/v", "https://"),
    ] {
        w.refused(&["enable", "--key-id", key, "--yes"], expect)
            .await;
    }
    let vault_id = w.twin.ids().vault_id();
    let storage = vault_id.replace(
        "Microsoft.KeyVault/vaults",
        "Microsoft.Storage/storageAccounts",
    );
    w.refused(
        &[
            "enable",
            "--key-id",
            &k,
            "--network-access",
            "private",
            "--vault-resource-id",
            &storage,
            "--yes",
        ],
        "not a vault resource id",
    )
    .await;
    let other_vault = format!("{}-other", vault_id);
    w.refused(
        &[
            "enable",
            "--key-id",
            &k,
            "--network-access",
            "private",
            "--vault-resource-id",
            &other_vault,
            "--yes",
        ],
        "vault",
    )
    .await;
    w.refused(
        &[
            "enable",
            "--key-id",
            &k,
            "--network-access",
            "internal",
            "--yes",
        ],
        "internal",
    )
    .await;
}

#[tokio::test]
async fn case_variants_of_arm_ids_are_accepted() {
    let w = world(SimOptions {
        kms: false,
        vnet_integration: true,
        konnectivity: false,
        lro_seconds: 0,
        ..small(10)
    })
    .await;
    let k = kid(&w);
    let shouted = w
        .twin
        .ids()
        .vault_id()
        .replace("resourceGroups", "RESOURCEGROUPS")
        .replace("Microsoft.KeyVault", "microsoft.keyvault");
    let out = w
        .run(&[
            "enable",
            "--key-id",
            &k,
            "--network-access",
            "private",
            "--vault-resource-id",
            &shouted,
            "--yes",
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(w.kms()["keyVaultNetworkAccess"], "Private");
    w.assert_all_current();
}

#[tokio::test]
async fn corrupt_and_foreign_journals_are_named_not_followed() {
    let w = world(small(10)).await;
    let runs = w.state_dir().join("kmsctl/runs");
    std::fs::create_dir_all(&runs).unwrap();
    std::fs::write(
        runs.join("20260101T000000Z-rotate-abcdef.jsonl"),
        "{ not json\n",
    )
    .unwrap();
    let out = w.run(&["runs"]).await;
    assert!(
        text(&out).contains("20260101T000000Z-rotate-abcdef"),
        "damaged journals are named: {}",
        text(&out)
    );
    w.refused(
        &["resume", "--yes", "--run", "20260101T000000Z-rotate-abcdef"],
        "20260101T000000Z-rotate-abcdef",
    )
    .await;
    w.refused(&["resume", "--yes", "--run", "no-such-run"], "no-such-run")
        .await;
}
