//! The command line surface: clap types only. Command bodies live in `commands/`.

pub mod sim;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "kmsctl", version, about = "Runs the lifecycle of KMS etcd encryption on AKS: enable, rotate, re-encrypt, verify")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The local twin of AKS, Key Vault, Entra ID and the Kubernetes API.
    #[command(subcommand)]
    Sim(sim::SimCommand),
}
