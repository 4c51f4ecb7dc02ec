//! kmsctl's entry point: parse, run, map the result onto the documented exit codes.

use clap::Parser;
use kmsctl::{commands, exit_codes};

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = kmsctl::cli::Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let code = match rt.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<commands::Refusal>().is_some() => {
            eprintln!("refused: {e}");
            exit_codes::REFUSED
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_codes::FAILED
        }
    };
    std::process::exit(code);
}
