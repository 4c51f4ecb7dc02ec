//! kmsctl's entry point: parse, run, map the result onto the documented exit codes.

use kmsctl::{commands, exit_codes};

/// Keeps memory bounded while Secrets of 50–200 KiB stream through: glibc raises its mmap
/// threshold after such blocks are freed and then keeps them in per-thread heaps; a fixed
/// threshold and two arenas give that memory back at once.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() {
    tune_allocator();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // A shell's TAB (COMPLETE=bash kmsctl -- ...): print the candidates and exit.
    clap_complete::CompleteEnv::with_factory(kmsctl::cli::command).complete();
    let cli = kmsctl::cli::parse();
    // RUST_LOG wins; otherwise -v shows what kmsctl decided (which credential, ...), -vv more.
    let level = match cli.verbose {
        0 => "warn",
        1 => "kmsctl=info,warn",
        _ => "kmsctl=debug,info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        // Log lines go where the run's progress display wants them (above its live lines).
        .with_writer(kmsctl::output::events::LogWriter)
        // Colour codes only for a terminal: logs in files and CI stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
