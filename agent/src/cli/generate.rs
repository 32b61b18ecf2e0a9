//! `mesh completions SHELL` and `mesh manpage`: both generated from the
//! command-line definition, so they never drift from it.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;

/// Flags of `mesh completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Prints the completion script for a shell.
pub(crate) fn completions(args: &CompletionsArgs) {
    clap_complete::generate(args.shell, &mut Cli::command(), "mesh", &mut std::io::stdout());
}

/// Prints the man page `mesh(1)` (roff), with a section per subcommand.
pub(crate) fn manpage() -> anyhow::Result<()> {
    let command = Cli::command();
    let mut out = Vec::new();
    let page = clap_mangen::Man::new(command.clone());
    page.render_title(&mut out)?;
    page.render_name_section(&mut out)?;
    page.render_synopsis_section(&mut out)?;
    page.render_description_section(&mut out)?;
    page.render_options_section(&mut out)?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        render_subcommand(&mut out, "mesh", sub)?;
    }
    page.render_version_section(&mut out)?;
    writeln!(
        out,
        ".SH FILES\n.TP\n/etc/mesh/mesh.toml\nThe agent's configuration (keys are the flags' names with _ for -).\n\
         .TP\n/var/lib/mesh\nThe data dir: this node's identity, credentials and records.\n\
         .TP\n/run/mesh/mesh.sock\nThe control socket (owner-only).\n\
         .SH ENVIRONMENT\n.TP\nMESH_SOCKET\nThe control socket client commands use."
    )?;
    // Each section clap_mangen renders repeats the page's preamble.
    let text = String::from_utf8(out)?;
    let mut seen = std::collections::HashSet::new();
    let lines =
        text.lines().filter(|line| !line.starts_with(".ie ") && !line.starts_with(".el ") || seen.insert(*line));
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        writeln!(stdout, "{line}")?;
    }
    Ok(())
}

/// A subcommand's synopsis, description and options, then its own subcommands.
fn render_subcommand(out: &mut impl Write, parent: &str, sub: &clap::Command) -> anyhow::Result<()> {
    let name = format!("{parent} {}", sub.get_name());
    writeln!(out, ".SS \"{name}\"")?;
    let mut usage = sub.clone().bin_name(&name);
    writeln!(out, "{}", roff_escape(&usage.render_usage().to_string().replace("Usage: ", "")))?;
    if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
        writeln!(out, ".PP\n{}", roff_escape(&about.to_string()))?;
    }
    for arg in sub.get_arguments().filter(|a| !a.is_hide_set() && a.get_id() != "help" && a.get_id() != "version") {
        let flag = match (arg.get_long(), arg.get_short()) {
            (Some(long), _) => roff_escape(&format!("--{long}")),
            (None, Some(short)) => roff_escape(&format!("-{short}")),
            (None, None) => arg
                .get_value_names()
                .and_then(|v| v.first())
                .map_or_else(|| arg.get_id().to_string().to_uppercase(), ToString::to_string),
        };
        let help = arg.get_long_help().or_else(|| arg.get_help()).map(ToString::to_string).unwrap_or_default();
        writeln!(out, ".TP\n{flag}\n{}", roff_escape(&help))?;
    }
    for nested in sub.get_subcommands().filter(|s| !s.is_hide_set()) {
        render_subcommand(out, &name, nested)?;
    }
    Ok(())
}

/// Text made safe for roff: backslashes, leading dots and quotes, dashes.
fn roff_escape(text: &str) -> String {
    text.lines()
        .map(|line| {
            let line = line.replace('\\', "\\\\").replace('-', "\\-");
            if line.starts_with('.') || line.starts_with('\'') {
                format!("\\&{line}")
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
