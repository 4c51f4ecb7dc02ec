//! What `--help` and the man pages show beyond the flags: examples for every command (as `az`
//! and `kubectl` do), and the exit codes and environment variables kmsctl reads.

/// (command path, examples): every command and subcommand has an entry (a unit test walks them).
pub const EXAMPLES: &[(&str, &str)] = &[
    ("kmsctl", "  # What the cluster's KMS uses now, and which key versions must stay alive
  kmsctl status -g rg-prod -n aks-prod --subscription SUB
  # Rotate twice and retire the oldest version, after a dry run
  kmsctl rotate --twice --retire-old --dry-run
  kmsctl rotate --twice --retire-old --yes
  # Rehearse everything on a local twin first
  kmsctl demo"),
    ("status", "  kmsctl status -g rg-prod -n aks-prod --subscription SUB
  # Machine-readable (fields in README), for scripts
  kmsctl status -o json | jq .ledger.mustStayAlive"),
    ("enable", "  kmsctl enable --key-id https://kv-prod.vault.azure.net/keys/kms/0123abcd --dry-run
  kmsctl enable --key-id https://kv-prod.vault.azure.net/keys/kms/0123abcd --yes
  # A private vault: AKS creates the private endpoint
  kmsctl enable --key-id https://kv-prod.vault.azure.net/keys/kms/0123abcd \\
    --network-access private --vault-resource-id /subscriptions/SUB/resourceGroups/RG/providers/Microsoft.KeyVault/vaults/kv-prod"),
    ("disable", "  kmsctl disable --dry-run
  kmsctl disable --yes"),
    ("rotate", "  # One rotation: a new key version, every Secret re-encrypted with it
  kmsctl rotate --dry-run
  kmsctl rotate --yes
  # Twice, so the oldest version is no longer needed, then disable it (never deleted)
  kmsctl rotate --twice --retire-old --yes"),
    ("reencrypt", "  # Every Secret with the cluster's current key
  kmsctl reencrypt
  # Some namespaces only, gently
  kmsctl reencrypt --namespace team-a --namespace team-b --concurrency 8 --max-qps 50"),
    ("vault-mode", "  kmsctl vault-mode --to private --dry-run
  kmsctl vault-mode --to public --yes"),
    ("migrate-v2", "  kmsctl migrate-v2 --dry-run
  kmsctl migrate-v2 --target-version 1.27 --yes"),
    ("run", "  kmsctl plan ./my-rotation.yaml --offline
  kmsctl run ./my-rotation.yaml --set marginDays=14 --yes"),
    ("check-expiry", "  kmsctl check-expiry --warn 30d --critical 7d
  # For Prometheus (node_exporter's textfile collector)
  kmsctl check-expiry -o prometheus --textfile /var/lib/node_exporter/kmsctl.prom
  # Every cluster the credential sees, as an HTML timeline
  kmsctl check-expiry --all -o html > expiry.html
  # Run it daily in the cluster
  kmsctl check-expiry --cronjob --client-id CLIENT_ID | kubectl apply -f -"),
    ("doctor", "  kmsctl doctor kms
  kmsctl doctor secrets-provider --pod default/app
  kmsctl doctor identity --service-account default/app"),
    ("doctor kms", "  kmsctl doctor kms -g rg-prod -n aks-prod"),
    ("doctor secrets-provider", "  kmsctl doctor secrets-provider --pod default/app"),
    ("doctor identity", "  kmsctl doctor identity --service-account payments/api"),
    ("rbac", "  kmsctl rbac --kubernetes --user ops@example.com | kubectl apply -f -
  kmsctl rbac --azure --subscription SUB > kmsctl-role.json
  az role definition create --role-definition @kmsctl-role.json
  # Both files at once
  kmsctl rbac --group GROUP_OBJECT_ID --out-dir ./rbac"),
    ("plan", "  kmsctl plan rotate-twice
  kmsctl plan migrate-v2 --set targetVersion=1.28 --offline
  # The built-in playbook's source, to start your own from
  kmsctl plan rotate --yaml > my-rotation.yaml"),
    ("completions", "  kmsctl completions bash > /etc/bash_completion.d/kmsctl
  kmsctl completions zsh > \"${fpath[1]}/_kmsctl\""),
    ("man", "  kmsctl man rotate | man -l -
  kmsctl man --out-dir /usr/local/share/man/man1"),
    ("resume", "  kmsctl resume
  kmsctl resume --run RUN_ID --yes"),
    ("runs", "  kmsctl runs
  kmsctl runs --abandon RUN_ID"),
    ("demo", "  kmsctl demo
  kmsctl demo --secrets 20000 --namespaces 40"),
    ("fleet", "  # What would be rotated, in which waves (changes nothing)
  kmsctl fleet plan --waves 1,10%,50%,100%
  kmsctl fleet rotate --twice --waves 1,10%,50%,100% --max-parallel 8 --yes
  kmsctl fleet status
  kmsctl fleet resume --yes"),
    ("fleet plan", "  kmsctl fleet plan --subscription SUB --tag env=prod
  kmsctl fleet plan --where \"location =~ 'westeurope'\" -o json"),
    ("fleet rotate", "  # A canary, then 10%, then half, then the rest; stop at the first failure
  kmsctl fleet rotate --twice --waves 1,10%,50%,100% --yes
  # Tolerate two failures, in a random (journaled) order, one shard of four
  kmsctl fleet rotate --max-failures 2 --order random --shard 0/4 --yes -o json"),
    ("fleet resume", "  kmsctl fleet resume --yes
  kmsctl fleet resume --shard 0/4 --yes"),
    ("fleet status", "  kmsctl fleet status
  kmsctl fleet status -o html > fleet.html"),
    ("sim", "  kmsctl sim serve --dir /tmp/twin &
  . /tmp/twin/env && kmsctl status"),
    ("sim serve", "  kmsctl sim serve --dir /tmp/twin --secrets 5000 --apiserver-replicas 3 --kms-status-period 20
  . /tmp/twin/env && kmsctl rotate --twice --yes"),
    ("sim inspect", "  kmsctl sim inspect --dir /tmp/twin | jq .storage"),
    ("sim fault", "  kmsctl sim fault --dir /tmp/twin --host management.azure.com --status 503 --count 2
  kmsctl sim fault --dir /tmp/twin --clear"),
    ("sim restart-replica", "  kmsctl sim restart-replica --dir /tmp/twin --replica 1 --down-seconds 20"),
    ("sim scenarios", "  kmsctl sim scenarios"),
];

pub const EXIT_STATUS: &str = "0  done as asked
1  a step failed or an error occurred; a run that had started can be continued with `kmsctl resume`
2  refused before any change: a preflight check, bad arguments, no confirmation, another run holds the cluster
3  the cluster's reported state differs from what was asked: kmsctl stopped
4  some Secrets could not be re-encrypted; they are listed by namespace/name
130  stopped by SIGINT or SIGTERM: the run is journaled as interrupted; `kmsctl resume` continues it
check-expiry: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the monitoring plugin convention; without --fix, anything that keeps it from judging, a refusal included, is 3)";

pub const ENVIRONMENT: &str = "AZURE_SUBSCRIPTION_ID   the cluster's subscription (--subscription)
KMSCTL_RESOURCE_GROUP   the cluster's resource group (-g)
KMSCTL_CLUSTER          the cluster's name (-n)
KMSCTL_AUTH             how to authenticate (--auth: auto, env, workload, managed, cli)
AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET   a service principal (--auth env)
AZURE_FEDERATED_TOKEN_FILE   workload identity's token file (--auth workload)
IDENTITY_ENDPOINT, MSI_ENDPOINT   a managed identity's endpoint (--auth managed)
KUBECONFIG              the kubeconfig (--kubeconfig; default ~/.kube/config)
KMSCTL_STATE_DIR        where run journals live (default $XDG_STATE_HOME/kmsctl)
KMSCTL_AKS_API_VERSION  the managedClusters API version
KMSCTL_KMS_STATUS_PERIOD_SECONDS   how often the API server asks its KMS plugin for the key id
RUST_LOG                log filter (overrides -v)";

/// The examples of `path` ("kmsctl", "rotate", "sim serve"), as the `Examples:` section.
pub fn for_path(path: &str) -> Option<String> {
    EXAMPLES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, e)| format!("Examples:\n{e}"))
}
