//! `completions` and `man`: the command line described for shells and for man(1), generated
//! from the same clap definitions the parser uses, so they cannot drift.

use super::Refusal;
use crate::cli::ManArgs;
use crate::exit_codes;

/// The shell's hook: at each TAB it asks kmsctl (the same definitions), which also offers
/// playbook names and run ids.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<i32> {
    crate::output::out(&crate::cli::registration(&shell.to_string())?);
    Ok(exit_codes::OK)
}

/// One page: clap_mangen's sections, then EXAMPLES (the command's `--help` examples), EXIT
/// STATUS and ENVIRONMENT, as man-pages(7) orders them.
fn page_roff(page: clap::Command) -> anyhow::Result<Vec<u8>> {
    use crate::cli::examples;
    let examples = page
        .get_after_help()
        .map(|h| h.to_string())
        .unwrap_or_default();
    let examples = examples.trim_start_matches("Examples:\n").to_string();
    let has_options = page.get_arguments().any(|a| !a.is_hide_set());
    let has_subcommands = page.get_subcommands().any(|s| !s.is_hide_set());
    let has_version = page.get_version().is_some() || page.get_long_version().is_some();
    let man = clap_mangen::Man::new(page);
    let mut roff = Vec::new();
    man.render_title(&mut roff)?;
    man.render_name_section(&mut roff)?;
    man.render_synopsis_section(&mut roff)?;
    man.render_description_section(&mut roff)?;
    if has_options {
        man.render_options_section(&mut roff)?;
    }
    if has_subcommands {
        man.render_subcommands_section(&mut roff)?;
    }
    for (title, body) in [
        ("EXAMPLES", examples.as_str()),
        ("\"EXIT STATUS\"", examples::EXIT_STATUS),
        ("ENVIRONMENT", examples::ENVIRONMENT),
    ] {
        roff.extend_from_slice(format!(".SH {title}\n.nf\n{}\n.fi\n", roff_text(body)).as_bytes());
    }
    if has_version {
        man.render_version_section(&mut roff)?;
    }
    Ok(roff)
}

/// Text as roff reads it literally: backslashes escaped, no line taken for a request.
fn roff_text(s: &str) -> String {
    s.lines()
        .map(|l| {
            let l = l.replace('\\', "\\e");
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every page: (file name, roff), for kmsctl and each command and subcommand.
pub fn pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    fn walk(
        cmd: &clap::Command,
        prefix: &str,
        out: &mut Vec<(String, Vec<u8>)>,
    ) -> anyhow::Result<()> {
        let name = if prefix.is_empty() {
            cmd.get_name().to_string()
        } else {
            format!("{prefix}-{}", cmd.get_name())
        };
        let page = cmd.clone().name(name.clone());
        out.push((format!("{name}.1"), page_roff(page)?));
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, &name, out)?;
        }
        Ok(())
    }
    let mut cmd = crate::cli::command();
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, "", &mut out)?;
    Ok(out)
}

pub fn man(a: ManArgs) -> anyhow::Result<i32> {
    let pages = pages()?;
    if let Some(dir) = a.out_dir {
        std::fs::create_dir_all(&dir)?;
        for (name, roff) in &pages {
            std::fs::write(dir.join(name), roff)?;
        }
        crate::say!("wrote {} man pages into {}", pages.len(), dir.display());
        return Ok(exit_codes::OK);
    }
    let want = match a.command {
        Some(c) => format!("kmsctl-{c}.1"),
        None => "kmsctl.1".to_string(),
    };
    let (_, roff) = pages.iter().find(|(n, _)| *n == want).ok_or_else(|| {
        Refusal(format!(
            "no man page {want}; commands: {}",
            pages
                .iter()
                .map(|(n, _)| n.trim_end_matches(".1"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    std::io::Write::write_all(&mut std::io::stdout(), roff)?;
    Ok(exit_codes::OK)
}
