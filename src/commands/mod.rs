//! Command bodies: each maps parsed arguments onto the engines and renders the result.

pub mod cronjob;
pub mod demo;
pub mod docs;
pub mod doctor;
pub mod expiry;
pub mod expiry_all;
pub mod expiry_fix;
pub mod fleet;
pub mod kube_from_azure;
pub mod lifecycle;
pub mod playbooks;
pub mod rbac;
pub mod runs;
pub mod setup;
pub mod sim;
pub mod status;

use crate::cli::{Cli, Command};
use crate::output::Format;

/// An expected refusal (exit code 2): nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let format = cli.output;
    crate::output::events::set_mode(cli.progress);
    if matches!(format, Format::Prometheus | Format::Html)
        && !matches!(cli.command, Command::CheckExpiry(_) | Command::Fleet(_))
    {
        return Err(Refusal(format!(
            "-o {}: only check-expiry and fleet write that; use -o text or -o json",
            if format == Format::Html {
                "html"
            } else {
                "prometheus"
            }
        ))
        .into());
    }
    match cli.command {
        Command::Sim(c) => sim::run(c).await,
        Command::Status(t) => status::run(t, format).await,
        Command::Enable(a) => lifecycle::enable(a, format).await,
        Command::Disable(a) => lifecycle::disable(a, format).await,
        Command::Rotate(a) => lifecycle::rotate(a, format).await,
        Command::Reencrypt(a) => lifecycle::reencrypt(a, format).await,
        Command::VaultMode(a) => playbooks::vault_mode(a, format).await,
        Command::MigrateV2(a) => playbooks::migrate_v2(a, format).await,
        Command::Run(a) => playbooks::run(a, format).await,
        Command::Plan(a) => playbooks::plan(a, format).await,
        Command::CheckExpiry(a) => expiry::run(a, format).await,
        Command::Doctor(c) => doctor::run(c, format).await,
        Command::Rbac(a) => rbac::run(a, format),
        Command::Completions { shell } => docs::completions(shell),
        Command::Man(a) => docs::man(a),
        Command::Resume(a) => runs::resume(a, format).await,
        Command::Runs(a) => runs::runs(a, format).await,
        Command::Demo(a) => demo::run(a).await,
        Command::Fleet(c) => fleet::run(c, format).await,
    }
}
