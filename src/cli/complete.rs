//! Shell completion: the shell asks kmsctl itself at each TAB (`COMPLETE=bash kmsctl ...`,
//! clap_complete's dynamic engine), so it can offer what only exists at run time: the built-in
//! playbook names (besides files) for `plan`, and the ids of the runs journaled in the state
//! dir for `resume --run` and `runs --abandon`.

use clap_complete::engine::{
    ArgValueCandidates, ArgValueCompleter, CompletionCandidate, PathCompleter, ValueCompleter,
};
use std::path::PathBuf;

/// The state dir a completion looks in: --state-dir is not parsed yet, its variable is.
fn state_dir() -> PathBuf {
    std::env::var_os("KMSCTL_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(crate::engine::journal::default_state_dir)
}

fn run_ids() -> Vec<CompletionCandidate> {
    crate::engine::journal::run_ids(&state_dir())
        .into_iter()
        .map(CompletionCandidate::new)
        .collect()
}

/// A built-in playbook name, or a file.
fn playbook(current: &std::ffi::OsStr) -> Vec<CompletionCandidate> {
    let typed = current.to_string_lossy();
    let mut out: Vec<CompletionCandidate> = crate::playbook::built_in_names()
        .filter(|n| n.starts_with(typed.as_ref()))
        .map(|n| CompletionCandidate::new(n).help(Some("built-in playbook".into())))
        .collect();
    out.extend(PathCompleter::file().complete(current));
    out
}

/// Attaches the completers to the arguments they complete.
pub fn values(cmd: clap::Command) -> clap::Command {
    cmd.mut_subcommand("plan", |c| {
        c.mut_arg("playbook", |a| a.add(ArgValueCompleter::new(playbook)))
    })
    .mut_subcommand("resume", |c| {
        c.mut_arg("run_id", |a| a.add(ArgValueCandidates::new(run_ids)))
    })
    .mut_subcommand("runs", |c| {
        c.mut_arg("abandon", |a| a.add(ArgValueCandidates::new(run_ids)))
    })
}

/// The candidates for `args` (as typed, the binary's name first) completed at `index`.
#[cfg(test)]
fn candidates(args: &[&str], index: usize) -> Vec<String> {
    let mut cmd = super::command();
    let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    clap_complete::engine::complete(&mut cmd, args, index, None)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.get_value().to_string_lossy().to_string())
        .collect()
}

/// What `kmsctl completions SHELL` prints: the shell's hook that asks kmsctl at each TAB.
pub fn registration(shell: &str) -> anyhow::Result<String> {
    let shells = clap_complete::env::Shells::builtins();
    let completer = shells
        .completer(shell)
        .ok_or_else(|| anyhow::anyhow!("no completion for shell {shell}"))?;
    let mut buf = Vec::new();
    completer.write_registration("COMPLETE", "kmsctl", "kmsctl", "kmsctl", &mut buf)?;
    Ok(String::from_utf8(buf)?)
}

#[cfg(test)]
mod tests {
    use super::candidates;

    #[test]
    fn plan_offers_the_built_in_playbooks() {
        let got = candidates(&["kmsctl", "plan", "rot"], 2);
        assert!(
            got.contains(&"rotate".to_string()) && got.contains(&"rotate-twice".to_string()),
            "{got:?}"
        );
        assert!(!got.contains(&"disable".to_string()), "{got:?}");
    }

    #[test]
    fn resume_and_runs_offer_the_journaled_run_ids() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        std::fs::create_dir_all(&runs).unwrap();
        for id in ["rotate-20261201-aaaa", "disable-20261130-bbbb"] {
            std::fs::write(runs.join(format!("{id}.jsonl")), "").unwrap();
        }
        std::fs::write(runs.join("notes.txt"), "").unwrap();
        // SAFETY: this is the only test in the crate that reads or writes KMSCTL_STATE_DIR.
        unsafe { std::env::set_var("KMSCTL_STATE_DIR", dir.path()) };
        let got = candidates(&["kmsctl", "resume", "--run", ""], 3);
        assert_eq!(
            got,
            ["disable-20261130-bbbb", "rotate-20261201-aaaa"],
            "{got:?}"
        );
        let got = candidates(&["kmsctl", "runs", "--abandon", "rot"], 3);
        assert!(got.contains(&"rotate-20261201-aaaa".to_string()), "{got:?}");
        unsafe { std::env::remove_var("KMSCTL_STATE_DIR") };
    }

    #[test]
    fn every_shell_has_a_hook() {
        for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
            let hook = super::registration(shell).unwrap();
            assert!(
                hook.contains("COMPLETE") && hook.contains("kmsctl"),
                "{shell}: {hook}"
            );
        }
    }
}
