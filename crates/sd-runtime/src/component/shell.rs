//! Shells: run commands on their node for other components (`Exec`). Each command runs as
//! `interpreter + [text]` in a process group of its own, concurrently with others, with its
//! output captured (the last 64 KiB) and returned; a command that exits non-zero is an error
//! carrying its output. A command is killed after [`COMMAND_TIMEOUT`].

use std::path::PathBuf;
use std::time::Duration;

use ractor::RpcReplyPort;
use sd_lang::Component;

use super::attributes::{environment, strings};

/// The longest a shell command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// The most output kept from one command.
const OUTPUT_TAIL: usize = 64 << 10;

/// A shell's own state.
pub(crate) struct Shell {
    interpreter: Vec<String>,
    env: Vec<(String, String)>,
}

impl Shell {
    pub fn new(description: &Component) -> Shell {
        Shell {
            interpreter: strings(description, "interpreter"),
            env: environment(description, "env"),
        }
    }

    /// Checks that the interpreter exists, so that a broken shell fails at deploy.
    pub fn check(&self) -> Result<(), String> {
        let Some(program) = self.interpreter.first() else {
            return Err(
                "`interpreter` is empty: it must name a program, e.g. [| \"/bin/sh\", \"-c\" |]"
                    .into(),
            );
        };
        let path = std::path::Path::new(program);
        if path.is_absolute() && !path.is_file() {
            return Err(format!("the interpreter `{program}` does not exist"));
        }
        Ok(())
    }

    /// Runs `script` in `cwd` and returns its output.
    pub async fn run_here(&self, script: String, cwd: PathBuf) -> Result<String, String> {
        let mut argv = self.interpreter.clone();
        argv.push(script);
        run(argv, self.env.clone(), cwd).await
    }

    /// Runs `script` in `cwd` in the background and answers on `reply`.
    pub fn exec(&self, script: String, cwd: PathBuf, reply: RpcReplyPort<Result<String, String>>) {
        let mut argv = self.interpreter.clone();
        argv.push(script);
        let env = self.env.clone();
        tokio::spawn(async move {
            let _ = reply.send(run(argv, env, cwd).await);
        });
    }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(OUTPUT_TAIL);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

async fn run(
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("empty interpreter")?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(env)
        .current_dir(&cwd)
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .map_err(|_| format!("killed after {} s", COMMAND_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    let mut text = tail(&output.stdout);
    text.push_str(&tail(&output.stderr));
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("{}: {}", output.status, text.trim_end()))
    }
}
