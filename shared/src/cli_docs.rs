//! What both binaries say about themselves: version and commit, shell
//! completions and man pages, made from their clap definitions so they never
//! drift from the real flags.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Command;
pub use clap_complete::Shell;

/// The version of the workspace.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit the binaries were built from (`unknown` outside a checkout).
pub const COMMIT: &str = env!("SEAPORT_COMMIT");

/// `NAME VERSION (commit COMMIT)`, what `version` prints.
pub fn version_line(name: &str) -> String {
    format!("{name} {VERSION} (commit {COMMIT})")
}

/// The subcommands both binaries have for describing themselves; flattened
/// into each binary's own subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum About {
    /// Print the version and the commit it was built from.
    Version,
    /// Print a shell completion script (bash: `source <(PROGRAM completion bash)`).
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: Shell,
    },
    /// Write man pages (PROGRAM.1 and one per subcommand) into a directory.
    #[command(hide = true)]
    Man {
        /// The directory (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

impl About {
    /// Does what the subcommand asks for `cmd` (the binary's whole clap
    /// definition), printing to standard output.
    pub fn run(self, cmd: Command) -> Result<(), ManPageError> {
        match self {
            About::Version => println!("{}", version_line(cmd.get_name())),
            About::Completion { shell } => completions(cmd, shell, &mut std::io::stdout()),
            About::Man { out } => {
                for page in man_pages(cmd, &out)? {
                    println!("{}", page.display());
                }
            }
        }
        Ok(())
    }
}

/// Errors writing man pages.
#[derive(Debug, thiserror::Error)]
#[error("writing the man page {path}: {source}")]
pub struct ManPageError {
    /// The page.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

/// Writes `cmd`'s completion script for `shell` to `out`.
pub fn completions(mut cmd: Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Writes a man page (section 1) for `cmd` and one for each of its
/// subcommands, as `dir/NAME.1` and `dir/NAME-SUB.1`; returns the files.
pub fn man_pages(cmd: Command, dir: &Path) -> Result<Vec<PathBuf>, ManPageError> {
    let mut written = Vec::new();
    std::fs::create_dir_all(dir).map_err(|source| ManPageError {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut cmd = cmd;
    cmd.build();
    write_pages(&cmd, cmd.get_name(), dir, &mut written)?;
    Ok(written)
}

fn write_pages(
    cmd: &Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), ManPageError> {
    let path = dir.join(format!("{name}.1"));
    let mut bytes = Vec::new();
    let page = cmd.clone().display_name(name.to_string());
    clap_mangen::Man::new(page)
        .render(&mut bytes)
        .and_then(|()| std::fs::write(&path, &bytes))
        .map_err(|source| ManPageError {
            path: path.clone(),
            source,
        })?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
