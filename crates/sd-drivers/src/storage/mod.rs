//! Storage backends: prepare what a domain runs from, and remove it afterwards.
//!
//! - [`dir`]: a working directory (process domains).
//! - [`qcow`]: a qcow2 copy-on-write overlay over a base image.
//! - [`loopback`]: a raw copy of a base image attached to a loop device.
//! - [`lvm`]: LVM volumes; only the host check exists (device-mapper is needed).
//! - [`image`]: what the disk backends share: base images (compressed ones decompressed once
//!   into a cache), `qemu-img info`, and saving a disk as an image.
//!
//! Each backend has a spec, a `prepare(spec)` and an idempotent `cleanup(spec)` that returns the
//! saved image, if any. All of it is synchronous: callers run it on a blocking thread. External
//! programs are run directly (never through a shell) with their stderr captured into the error.

pub mod dir;
mod files;
pub mod image;
pub mod loopback;
pub mod lvm;
pub mod qcow;

use std::ffi::OsStr;
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// The most of a command's stderr kept in an [`Error::Command`].
const STDERR_LIMIT: usize = 4096;

/// Runs `program` with `args` (no shell, stdin from /dev/null, `LC_ALL=C`) and returns its
/// standard output.
///
/// # Errors
///
/// [`Error::Spawn`] if it cannot be started; [`Error::Command`] with its (trimmed) stderr if it
/// ends with a failure.
pub(crate) fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Vec<u8>> {
    let output = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            program: program.to_string(),
            source,
        })?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut stderr = stderr.trim().to_string();
    if stderr.is_empty() {
        stderr = "(nothing on stderr)".to_string();
    } else if stderr.len() > STDERR_LIMIT {
        let mut end = STDERR_LIMIT;
        while !stderr.is_char_boundary(end) {
            end -= 1;
        }
        stderr.truncate(end);
        stderr.push_str(" [...]");
    }
    Err(Error::Command {
        program: program.to_string(),
        args: shown_args(args),
        status: output.status,
        stderr,
    })
}

/// `args` as text, for error messages.
pub(crate) fn shown_args<S: AsRef<OsStr>>(args: &[S]) -> Vec<String> {
    args.iter()
        .map(|arg| arg.as_ref().to_string_lossy().into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_command_names_itself_and_its_stderr() {
        let error = run("sh", &["-c", "echo oops >&2; exit 3"]).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("`sh -c echo oops >&2; exit 3` failed (exit status: 3): oops"),
            "{message}"
        );
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let error = run("/nonexistent/program", &[] as &[&str]).unwrap_err();
        assert!(matches!(error, Error::Spawn { .. }), "{error}");
        assert!(error.to_string().contains("/nonexistent/program"));
    }

    #[test]
    fn output_is_returned() {
        assert_eq!(run("echo", &["hi"]).unwrap(), b"hi\n");
        let error = run("false", &[] as &[&str]).unwrap_err();
        assert!(error.to_string().contains("(nothing on stderr)"), "{error}");
    }
}
