//! Finding included files: next to the including file first, then on the include path
//! (`-I DIR`), then in the library embedded in the binary (`configs/prelude`, `configs/compat`).
//! This is the only I/O the language crate does.

use std::path::{Path, PathBuf};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/library.rs"));
}

/// Name under which embedded files are shown in errors.
pub const EMBEDDED_PREFIX: &str = "<library>/";

/// Largest description file accepted.
pub const MAX_FILE_BYTES: usize = 16 << 20;

/// A file found by a [`Loader`].
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file's identity, used to detect include cycles (a canonical path).
    pub key: String,
    /// The name shown in errors.
    pub display: String,
    /// The text.
    pub text: String,
}

/// Why a file could not be loaded.
#[derive(Debug, Clone)]
pub enum LoadError {
    /// Not found anywhere; the places searched.
    NotFound(Vec<String>),
    /// Found but unreadable (or too large).
    Unreadable(String),
}

/// Finds the text of included files.
pub trait Loader {
    /// Loads `name` as included from the file whose key is `from`.
    fn load(&self, name: &str, from: &str) -> Result<Loaded, LoadError>;
}

/// The embedded library's text for an include name, if it has one.
pub fn embedded(name: &str) -> Option<&'static str> {
    embedded::FILES
        .iter()
        .find(|(file, _)| *file == name)
        .map(|(_, text)| *text)
}

/// The names of every embedded library file.
pub fn embedded_names() -> impl Iterator<Item = &'static str> {
    embedded::FILES.iter().map(|(name, _)| *name)
}

/// Loads from the file system, then from the embedded library.
#[derive(Debug, Clone, Default)]
pub struct FsLoader {
    /// `-I` directories, searched in order after the including file's directory.
    pub include_dirs: Vec<PathBuf>,
}

impl FsLoader {
    /// A loader with these include directories.
    pub fn new(include_dirs: Vec<PathBuf>) -> Self {
        FsLoader { include_dirs }
    }

    /// Reads a top-level description file.
    pub fn read_root(&self, path: &Path) -> Result<Loaded, LoadError> {
        read(path).map_err(|e| match e {
            Some(reason) => LoadError::Unreadable(reason),
            None => LoadError::NotFound(vec![path.display().to_string()]),
        })
    }
}

/// `Ok` with the file, `Err(None)` when it does not exist, `Err(Some(reason))` otherwise.
fn read(path: &Path) -> Result<Loaded, Option<String>> {
    let metadata = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Err(Some("not a regular file".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(None),
        Err(e) => return Err(Some(e.to_string())),
    };
    if metadata.len() > MAX_FILE_BYTES as u64 {
        return Err(Some(format!("larger than {} MiB", MAX_FILE_BYTES >> 20)));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Some(e.to_string()))?;
    let key = path
        .canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string();
    Ok(Loaded {
        key,
        display: path.display().to_string(),
        text,
    })
}

impl Loader for FsLoader {
    fn load(&self, name: &str, from: &str) -> Result<Loaded, LoadError> {
        let mut searched = Vec::new();
        let requested = Path::new(name);
        let mut candidates = Vec::new();
        if requested.is_absolute() {
            candidates.push(requested.to_path_buf());
        } else {
            if let Some(loaded) = embedded_sibling(name, from) {
                return Ok(loaded);
            }
            if from.starts_with(EMBEDDED_PREFIX) {
                // Library files include only the library.
            } else if let Some(dir) = Path::new(from).parent() {
                candidates.push(dir.join(requested));
            }
            candidates.extend(self.include_dirs.iter().map(|dir| dir.join(requested)));
        }
        for candidate in candidates {
            match read(&candidate) {
                Ok(loaded) => return Ok(loaded),
                Err(None) => searched.push(candidate.display().to_string()),
                Err(Some(reason)) => return Err(LoadError::Unreadable(reason)),
            }
        }
        // SmartFrog writes "/org/smartfrog/components.sf" for the class path's root.
        let library_name = name.trim_start_matches('/');
        if let Some(text) = embedded(library_name) {
            return Ok(embedded_file(library_name, text));
        }
        searched.push("the embedded library".into());
        Err(LoadError::NotFound(searched))
    }
}

/// An embedded file includes its siblings (relative to its own folder) from the library.
fn embedded_sibling(name: &str, from: &str) -> Option<Loaded> {
    let dir = from.strip_prefix(EMBEDDED_PREFIX)?;
    let sibling = Path::new(dir).parent().unwrap_or(Path::new("")).join(name);
    let sibling = sibling.to_string_lossy().replace('\\', "/");
    embedded(&sibling).map(|text| embedded_file(&sibling, text))
}

fn embedded_file(name: &str, text: &str) -> Loaded {
    let key = format!("{EMBEDDED_PREFIX}{name}");
    Loaded {
        key: key.clone(),
        display: key,
        text: text.to_string(),
    }
}

/// Files held in memory (for tests, fuzzing and the API), then the embedded library.
#[derive(Debug, Clone, Default)]
pub struct MemoryLoader {
    /// (name, text) pairs.
    pub files: Vec<(String, String)>,
}

impl Loader for MemoryLoader {
    fn load(&self, name: &str, from: &str) -> Result<Loaded, LoadError> {
        if let Some(loaded) = embedded_sibling(name, from) {
            return Ok(loaded);
        }
        if let Some((file, text)) = self.files.iter().find(|(file, _)| file == name) {
            return Ok(Loaded {
                key: file.clone(),
                display: file.clone(),
                text: text.clone(),
            });
        }
        let library_name = name.trim_start_matches('/');
        match embedded(library_name) {
            Some(text) => Ok(embedded_file(library_name, text)),
            None => Err(LoadError::NotFound(vec![
                "memory".into(),
                "the embedded library".into(),
            ])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_is_embedded_and_found_from_anywhere() {
        assert!(embedded_names().any(|name| name == "prelude.sf"));
        assert!(embedded_names().any(|name| name == "org/smartfrog/functions.sf"));
        let loader = FsLoader::default();
        for name in [
            "prelude.sf",
            "org/smartfrog/functions.sf",
            "/org/smartfrog/functions.sf",
        ] {
            let loaded = loader.load(name, "/nowhere/main.sf").expect(name);
            assert!(
                loaded.display.starts_with(EMBEDDED_PREFIX),
                "{}",
                loaded.display
            );
        }
    }

    #[test]
    fn library_files_include_their_siblings() {
        let loaded = FsLoader::default()
            .load("sd/core.sf", "<library>/prelude.sf")
            .expect("sibling");
        assert_eq!(loaded.key, "<library>/sd/core.sf");
    }

    #[test]
    fn missing_files_list_where_they_were_looked_for() {
        let loader = FsLoader::new(vec![PathBuf::from("/also/here")]);
        let Err(LoadError::NotFound(searched)) = loader.load("nope.sf", "/dir/main.sf") else {
            panic!("nope.sf does not exist");
        };
        assert_eq!(
            searched,
            ["/dir/nope.sf", "/also/here/nope.sf", "the embedded library"]
        );
    }
}
