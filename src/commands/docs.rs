//! `completions` and `man`: the command line described for shells and for man(1), generated
//! from the same clap definitions the parser uses, so they cannot drift.

use super::Refusal;
use crate::cli::{Cli, ManArgs};
use crate::exit_codes;
use clap::CommandFactory;

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<i32> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "kmsctl", &mut std::io::stdout());
    Ok(exit_codes::OK)
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
        let mut roff = Vec::new();
        clap_mangen::Man::new(page).render(&mut roff)?;
        out.push((format!("{name}.1"), roff));
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, &name, out)?;
        }
        Ok(())
    }
    let mut cmd = Cli::command();
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
