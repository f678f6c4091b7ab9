//! A log file as a response body: what it holds now, or (following) that and then every
//! byte appended, until the deployment is gone.

use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::{Body, Bytes};
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

/// How often a followed file is looked at when nothing new was read.
const POLL: Duration = Duration::from_millis(200);

/// The most read (and sent) at once.
const CHUNK: usize = 64 * 1024;

/// Reads a log file from the start; see [`Tail::next`].
pub(crate) struct Tail<A> {
    path: PathBuf,
    file: Option<File>,
    /// The file's identity when opened: another inode at the same path is a rotation.
    inode: u64,
    offset: u64,
    /// Not following: where to stop (the size at the first open), so a fast writer cannot
    /// make the answer endless.
    end: Option<u64>,
    follow: bool,
    /// Whether what the log belongs to still exists (checked when following and idle).
    alive: A,
    closing: watch::Receiver<bool>,
}

impl<A: Fn() -> bool + Send + Sync + 'static> Tail<A> {
    pub(crate) fn new(
        path: PathBuf,
        follow: bool,
        alive: A,
        closing: watch::Receiver<bool>,
    ) -> Tail<A> {
        Tail {
            path,
            file: None,
            inode: 0,
            offset: 0,
            end: None,
            follow,
            alive,
            closing,
        }
    }

    /// The response body.
    pub(crate) fn into_body(self) -> Body {
        Body::from_stream(futures::stream::unfold(self, |mut tail| async move {
            let item = tail.next().await?;
            Some((item, tail))
        }))
    }

    /// The next bytes; `None` at the end: not following, at the size the file had when
    /// first opened (a missing file is empty); following, once `alive` says no or the
    /// server is closing. A file truncated or replaced (rotation) is read again from 0.
    pub(crate) async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        loop {
            match self.read_chunk().await {
                Ok(Some(bytes)) => return Some(Ok(bytes)),
                Ok(None) => {}
                Err(error) => return Some(Err(error)),
            }
            if !self.follow || *self.closing.borrow() || !(self.alive)() {
                return None;
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                _ = self.closing.changed() => return None,
            }
        }
    }

    /// Bytes after `offset`, or `None` when there are none now.
    async fn read_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        if self.file.is_none() && !self.open().await? {
            return Ok(None);
        }
        let remaining = match self.end {
            Some(end) => end.saturating_sub(self.offset),
            None => u64::MAX,
        };
        if remaining == 0 {
            return Ok(None);
        }
        let mut buffer = vec![0; usize::try_from(remaining).unwrap_or(CHUNK).min(CHUNK)];
        let Some(file) = self.file.as_mut() else {
            return Ok(None);
        };
        let read = file.read(&mut buffer).await?;
        if read > 0 {
            buffer.truncate(read);
            self.offset += read as u64;
            return Ok(Some(Bytes::from(buffer)));
        }
        if self.follow && self.rotated().await? {
            self.file = None;
            self.offset = 0;
        }
        Ok(None)
    }

    /// Opens the file at `offset`; false if there is no file (yet).
    async fn open(&mut self) -> std::io::Result<bool> {
        let mut file = match File::open(&self.path).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if self.end.is_none() && !self.follow {
                    self.end = Some(0);
                }
                return Ok(false);
            }
            Err(error) => return Err(error),
        };
        let metadata = file.metadata().await?;
        if self.end.is_none() && !self.follow {
            self.end = Some(metadata.len());
        }
        self.inode = metadata.ino();
        file.seek(SeekFrom::Start(self.offset)).await?;
        self.file = Some(file);
        Ok(true)
    }

    /// At the end of the open file: was it truncated (copy-and-truncate rotation), replaced
    /// or removed since it was opened?
    async fn rotated(&self) -> std::io::Result<bool> {
        match tokio::fs::metadata(&self.path).await {
            Ok(metadata) => Ok(metadata.ino() != self.inode || metadata.len() < self.offset),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    async fn next_text<A: Fn() -> bool + Send + Sync + 'static>(
        tail: &mut Tail<A>,
    ) -> Option<String> {
        let bytes = tail.next().await?.unwrap();
        Some(String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn append(path: &std::path::Path, text: &str) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    #[tokio::test]
    async fn without_follow_the_content_at_the_start_is_read_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let (_closing, closed) = watch::channel(false);
        let mut tail = Tail::new(path.clone(), false, || true, closed.clone());
        assert!(tail.next().await.is_none());

        append(&path, "one\n");
        let mut tail = Tail::new(path.clone(), false, || true, closed);
        assert_eq!(next_text(&mut tail).await.as_deref(), Some("one\n"));
        append(&path, "two\n");
        assert!(tail.next().await.is_none(), "stops at the size seen first");
    }

    #[tokio::test]
    async fn large_files_come_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        append(&path, &"x".repeat(CHUNK * 2 + 10));
        let (_closing, closed) = watch::channel(false);
        let mut tail = Tail::new(path, false, || true, closed);
        let mut sizes = Vec::new();
        while let Some(bytes) = tail.next().await {
            sizes.push(bytes.unwrap().len());
        }
        assert_eq!(sizes, [CHUNK, CHUNK, 10]);
    }

    #[tokio::test]
    async fn following_sees_appends_truncation_and_replacement_then_ends_with_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let alive = Arc::new(AtomicBool::new(true));
        let (_closing, closed) = watch::channel(false);
        let owner = Arc::clone(&alive);
        let mut tail = Tail::new(
            path.clone(),
            true,
            move || owner.load(Ordering::SeqCst),
            closed,
        );

        let writer = {
            let path = path.clone();
            let alive = Arc::clone(&alive);
            tokio::spawn(async move {
                let pause = || tokio::time::sleep(Duration::from_millis(300));
                pause().await;
                append(&path, "first\n");
                pause().await;
                append(&path, "second\n");
                pause().await;
                // Copy-and-truncate rotation, then a shorter line.
                std::fs::write(&path, "").unwrap();
                pause().await;
                append(&path, "3\n");
                pause().await;
                // Rename rotation: a new file at the path.
                std::fs::rename(&path, path.with_extension("old")).unwrap();
                append(&path, "fourth\n");
                pause().await;
                alive.store(false, Ordering::SeqCst);
            })
        };
        let mut seen = Vec::new();
        while let Some(text) = next_text(&mut tail).await {
            seen.push(text);
        }
        writer.await.unwrap();
        assert_eq!(seen.concat(), "first\nsecond\n3\nfourth\n");
    }

    #[tokio::test]
    async fn following_ends_when_the_server_closes() {
        let dir = tempfile::tempdir().unwrap();
        let (closing, closed) = watch::channel(false);
        let mut tail = Tail::new(dir.path().join("a.log"), true, || true, closed);
        let close = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            closing.send_replace(true);
            closing
        });
        let ended = tokio::time::timeout(Duration::from_secs(5), tail.next()).await;
        assert!(matches!(ended, Ok(None)));
        drop(close.await.unwrap());
    }
}
