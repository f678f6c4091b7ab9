//! The files of the data dir through which local clients find and authenticate to the
//! agent: `token` (the bearer token) and `api.url` (where the API listens now).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The token file's name in the data dir.
pub const TOKEN_FILE: &str = "token";

/// The name, in the data dir, of the file holding the API's URL while the agent runs.
pub const URL_FILE: &str = "api.url";

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// The API token of the agent on `data_dir`: read from `<data_dir>/token`, or created there
/// at the first start (32 random bytes, hex-encoded, mode 0600, written atomically).
pub fn load_or_create_token(data_dir: &Path) -> Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => check_token(&path, text.trim()).map(str::to_string),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token()?;
            write_atomically(&path, format!("{token}\n").as_bytes(), 0o600)?;
            Ok(token)
        }
        Err(source) => Err(Error::File {
            action: "read the API token",
            path,
            source,
        }),
    }
}

/// A token an operator wrote is accepted if it can travel in an HTTP header and is not
/// trivially short.
fn check_token<'t>(path: &Path, token: &'t str) -> Result<&'t str> {
    let reason = if token.len() < 16 {
        "shorter than 16 characters"
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        "not printable ASCII without spaces"
    } else {
        return Ok(token);
    };
    Err(Error::BadToken {
        path: path.to_path_buf(),
        reason,
    })
}

fn new_token() -> Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|source| Error::File {
            action: "read random bytes for a new API token from",
            path: PathBuf::from("/dev/urandom"),
            source,
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `<data_dir>/api.url` (atomically) with the URL at which local clients reach an API
/// bound to `address`; returns that URL. An unspecified address (`0.0.0.0`, `::`) is
/// reachable locally through loopback, so that is what the file names.
pub fn write_url_file(data_dir: &Path, address: SocketAddr) -> Result<String> {
    let local = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), address.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), address.port())
        }
        _ => address,
    };
    let url = format!("http://{local}");
    write_atomically(
        &data_dir.join(URL_FILE),
        format!("{url}\n").as_bytes(),
        0o644,
    )?;
    Ok(url)
}

/// Removes `<data_dir>/api.url` (the agent is stopping); one already gone is fine.
pub fn remove_url_file(data_dir: &Path) -> Result<()> {
    let path = data_dir.join(URL_FILE);
    match fs::remove_file(&path) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(Error::File {
            action: "remove",
            path,
            source,
        }),
        _ => Ok(()),
    }
}

/// Writes a file so that readers see the old content or the new one, never a part: a temp
/// file beside it (created with `mode`, so a secret is never readable by others even for a
/// moment), synced, renamed over it, and the directory synced.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let failed = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::File {
            action,
            path,
            source,
        }
    };
    // A temp file left by a crash of this very pid would make `create_new` fail.
    let _ = fs::remove_file(&temp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        })
        .map_err(failed("write", &temp))
        .and_then(|()| fs::rename(&temp, path).map_err(failed("rename a temp file to", path)));
    if let Err(error) = written {
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(failed("sync the directory", dir))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_token_is_created_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let token = load_or_create_token(dir.path()).unwrap();
        assert_eq!(token.len(), 2 * TOKEN_BYTES);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        let path = dir.path().join(TOKEN_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), token);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, [TOKEN_FILE], "no temp file is left behind");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create_token(other.path()).unwrap(), token);
    }

    #[test]
    fn an_operator_token_is_used_and_a_bad_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        fs::write(&path, "  my-own-token-of-some-length\n").unwrap();
        assert_eq!(
            load_or_create_token(dir.path()).unwrap(),
            "my-own-token-of-some-length"
        );
        fs::write(&path, "short\n").unwrap();
        let error = load_or_create_token(dir.path()).unwrap_err().to_string();
        assert!(error.contains("shorter than 16"), "{error}");
        fs::write(&path, "a token with spaces in it\n").unwrap();
        assert!(load_or_create_token(dir.path()).is_err());
    }

    #[test]
    fn the_url_file_names_a_locally_reachable_address() {
        let dir = tempfile::tempdir().unwrap();
        let url = write_url_file(dir.path(), "127.0.0.1:4680".parse().unwrap()).unwrap();
        assert_eq!(url, "http://127.0.0.1:4680");
        assert_eq!(
            fs::read_to_string(dir.path().join(URL_FILE)).unwrap(),
            "http://127.0.0.1:4680\n"
        );
        let url = write_url_file(dir.path(), "0.0.0.0:99".parse().unwrap()).unwrap();
        assert_eq!(url, "http://127.0.0.1:99");
        let url = write_url_file(dir.path(), "[::]:99".parse().unwrap()).unwrap();
        assert_eq!(url, "http://[::1]:99");
        remove_url_file(dir.path()).unwrap();
        assert!(!dir.path().join(URL_FILE).exists());
        remove_url_file(dir.path()).unwrap();
    }
}
