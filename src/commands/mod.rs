//! Command bodies: each maps parsed arguments onto the engines and renders the result.

pub mod sim;

use crate::cli::Command;

pub async fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Sim(c) => sim::run(c).await,
    }
}
