//! A run's state, derived only from the journal's step outputs: what preflight found, which key
//! version this run put in service, the canary's planted resourceVersion. Nothing else is kept,
//! so a resumed run knows exactly what the killed one knew.

use super::kms::DesiredKms;
use crate::playbook::Step;
use serde_json::Value;

#[derive(Clone, Debug, Default)]
pub struct RunState {
    /// The key version in use when the run started (the one to retire after two rotations).
    pub original_key_id: Option<String>,
    pub network_access: Option<String>,
    pub vault_resource_id: Option<String>,
    /// The resource id of the vault that holds the key (found by preflight).
    pub key_vault_id: Option<String>,
    /// The key version the next update-kms puts in service.
    pub key_id: Option<String>,
    pub kms_at_plant: Option<DesiredKms>,
    /// API server replicas counted at plant time (None: unknown).
    pub replicas: Option<usize>,
    /// The key every replica wrote the canary with at plant time, where attributed on /metrics.
    pub canary_key: Option<crate::k8s::probe::WriteKey>,
    pub desired: Option<DesiredKms>,
    /// The canary as plant-canary left it (its rv and content).
    pub canary: Option<crate::k8s::canary::Planted>,
    pub concurrency_cap: Option<usize>,
}

fn string(v: &Value, k: &str) -> Option<String> {
    v[k].as_str().map(str::to_string)
}

impl RunState {
    pub fn apply(&mut self, step: &Step, output: &Value) {
        match step {
            Step::Preflight => {
                self.original_key_id = string(output, "originalKeyId");
                self.network_access = string(output, "networkAccess");
                self.vault_resource_id = string(output, "vaultResourceId");
                self.key_vault_id = string(output, "keyVaultId");
                self.key_id = string(output, "keyId");
                self.concurrency_cap = output["concurrencyCap"].as_u64().map(|c| c as usize);
            }
            Step::PlantCanary => {
                self.kms_at_plant = serde_json::from_value(output["kmsAtPlant"].clone()).ok();
                self.replicas = output["replicas"].as_u64().map(|n| n as usize);
                self.canary_key = serde_json::from_value(output["agreement"]["key"].clone()).ok();
                self.canary = serde_json::from_value(output["canary"].clone()).ok();
            }
            Step::RotateKey => self.key_id = string(output, "keyId"),
            Step::UpdateKms { .. } => {
                self.desired = serde_json::from_value(output["desired"].clone()).ok()
            }
            _ => {}
        }
    }

    pub fn desired(&self, enabled: bool) -> DesiredKms {
        if !enabled {
            return DesiredKms {
                enabled: false,
                key_id: None,
                network_access: None,
                vault_resource_id: None,
            };
        }
        let private = self.network_access.as_deref() == Some("Private");
        DesiredKms {
            enabled: true,
            key_id: self.key_id.clone(),
            network_access: Some(
                self.network_access
                    .clone()
                    .unwrap_or_else(|| "Public".into()),
            ),
            vault_resource_id: if private {
                self.vault_resource_id.clone()
            } else {
                None
            },
        }
    }

    /// Whether the last update-kms changed what the API server writes with, relative to the
    /// configuration when the canary was planted.
    pub fn key_switch_expected(&self) -> bool {
        match (&self.kms_at_plant, &self.desired) {
            (Some(p), Some(d)) => !p.same_write_key(d),
            _ => true,
        }
    }
}
