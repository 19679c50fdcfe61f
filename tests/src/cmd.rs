//! Running machine-side programs (ip, tc, mount, debootstrap, nsenter) and
//! turning their failures into errors that name the command and its stderr.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// What a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code; `-1` when the process was killed by a signal.
    pub code: i32,
    /// Standard output, lossily decoded as UTF-8.
    pub stdout: String,
    /// Standard error, lossily decoded as UTF-8.
    pub stderr: String,
}

impl ExecOutput {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }

    fn from_output(output: Output) -> Self {
        ExecOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Errors of running a machine-side command.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot start `{command}`: {source} (is it installed and on PATH?)")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed with exit code {code}: {stderr}")]
    Failed {
        command: String,
        code: i32,
        stderr: String,
    },
}

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` to completion, feeding it `input` on stdin, and returns its
/// output whatever the exit code.
pub fn output(cmd: &mut Command, input: Option<&[u8]>) -> Result<ExecOutput, CmdError> {
    let command = describe(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|source| CmdError::Spawn {
        command: command.clone(),
        source,
    })?;
    let writer = match (input, child.stdin.take()) {
        (Some(bytes), Some(mut stdin)) => {
            let bytes = bytes.to_vec();
            // A separate thread so a child that writes a lot before reading
            // its input cannot deadlock against us.
            Some(std::thread::spawn(move || {
                // A child that exits without reading its input is not our
                // error to report: its exit code says what happened.
                let _ = stdin.write_all(&bytes);
            }))
        }
        _ => None,
    };
    let out = child
        .wait_with_output()
        .map_err(|source| CmdError::Spawn { command, source })?;
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    Ok(ExecOutput::from_output(out))
}

/// Runs `cmd` and fails unless it exits with status 0.
pub fn run(cmd: &mut Command) -> Result<ExecOutput, CmdError> {
    let out = output(cmd, None)?;
    if out.success() {
        Ok(out)
    } else {
        Err(CmdError::Failed {
            command: describe(cmd),
            code: out.code,
            stderr: out.stderr.trim().to_string(),
        })
    }
}

/// Builds a `Command` from a program and its arguments.
pub fn command<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// True when `program` is found on PATH.
pub fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|dir| Path::new(dir).join(program).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_command_reports_its_stderr() {
        let err = run(&mut command("sh", ["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exit code 3"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
    }

    #[test]
    fn input_reaches_the_child() {
        let out = output(&mut command("cat", [] as [&str; 0]), Some(b"hello")).unwrap();
        assert_eq!(out.stdout, "hello");
        assert!(out.success());
    }
}

/// A new passwordless ed25519 key for `ssh`/`scp` at `path` (the public
/// key beside it, `.pub`); returns the public key line.
pub fn ssh_client_key(path: &Path) -> Result<String, CmdError> {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path))?;
    let public = path.with_extension("pub");
    std::fs::read_to_string(&public).map_err(|source| CmdError::Spawn {
        command: format!("reading {}", public.display()),
        source,
    })
}
