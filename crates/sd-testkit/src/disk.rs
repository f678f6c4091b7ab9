//! Small disks: a node's data dir on a tmpfs of a few MiB, which a chaos run fills to the
//! last byte to see what an agent does when its disk is full. Unmounted when dropped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// The file that fills a small disk.
const FILLER: &str = "chaos-filler";

/// A tmpfs mounted on a node's data dir.
#[derive(Debug)]
pub(crate) struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `mib` MiB on `path` (created if missing).
    pub(crate) fn mount(path: &Path, mib: u64) -> Result<SmallDisk> {
        std::fs::create_dir_all(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "sd-chaos",
            ])
            .arg(path)
            .output()
            .map_err(|error| Error::Command {
                command: "mount -t tmpfs".into(),
                reason: error.to_string(),
            })?;
        if !output.status.success() {
            return Err(Error::Command {
                command: format!("mount -t tmpfs on {}", path.display()),
                reason: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(SmallDisk {
            path: path.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a file until the disk is full; returns the bytes written.
    pub(crate) fn fill(&self) -> Result<u64> {
        let path = self.path.join(FILLER);
        let failed = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(failed)?;
        let block = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        // Whole blocks, then single bytes for the tail: the disk ends up with nothing free.
        for chunk in [block.as_slice(), &block[..1]] {
            loop {
                match file.write(chunk) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(error) if error.raw_os_error() == Some(28) => break,
                    Err(error) => return Err(failed(error)),
                }
            }
        }
        Ok(written)
    }

    /// Removes the filler.
    pub(crate) fn free(&self) -> Result<()> {
        let path = self.path.join(FILLER);
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
                path,
                source: error,
            }),
            _ => Ok(()),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a process that still holds a file there does not keep the mount busy.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
