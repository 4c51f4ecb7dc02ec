//! kmsctl runs the lifecycle of KMS etcd encryption on Azure Kubernetes Service.

pub mod cli;
pub mod commands;
pub mod sim;
