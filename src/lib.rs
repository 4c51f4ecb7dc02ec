//! kmsctl runs the lifecycle of KMS etcd encryption on Azure Kubernetes Service.

pub mod azure;
pub mod checks;
pub mod cli;
pub mod commands;
pub mod doctor;
pub mod engine;
pub mod exit_codes;
pub mod fleet;
pub mod k8s;
pub mod output;
pub mod playbook;
pub mod reencrypt;
pub mod retry;
pub mod sim;
