//! The Unix socket listener's path: claimed without destroying anything, removed on shutdown.
//!
//! `--uds PATH` may name a socket a previous run left behind (it crashed, or was killed):
//! that one is removed. Anything else at PATH (a regular file, a directory, a socket another
//! process still listens on) is refused with an error that says what to do, so a mistyped
//! flag never deletes a user's file.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// A bound Unix listener and the file it created.
pub struct BoundSocket {
    pub listener: tokio::net::UnixListener,
    pub owner: SocketFile,
}

/// The socket file this process created; [`SocketFile::remove`] deletes it only if it is
/// still the same file (not one another process put there since).
pub struct SocketFile {
    path: PathBuf,
    inode: (u64, u64),
}

impl SocketFile {
    pub fn remove(self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.inode);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the unix socket");
        }
    }
}

/// Binds a Unix listener at `path`, replacing only a stale socket.
pub fn bind(path: &Path) -> anyhow::Result<BoundSocket> {
    claim(path)?;
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on unix socket {}", path.display()))?;
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("unix socket {} vanished after bind", path.display()))?;
    Ok(BoundSocket {
        listener,
        owner: SocketFile {
            path: path.to_owned(),
            inode: (meta.dev(), meta.ino()),
        },
    })
}

/// Makes `path` free for a new socket: nothing there, or a socket nobody listens on
/// (removed). Refuses everything else.
fn claim(path: &Path) -> anyhow::Result<()> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect --uds path {shown}")),
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_symlink() {
            "a symbolic link"
        } else if kind.is_file() {
            "a regular file"
        } else {
            "a special file"
        };
        anyhow::bail!(
            "--uds {shown}: {what} is already there; trust-sds replaces only a stale socket it \
             left behind. Move that file away or choose another --uds path"
        );
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "--uds {shown}: another process is listening on this socket (another trust-sds?); \
             stop it or choose another --uds path"
        );
    }
    std::fs::remove_file(path).with_context(|| format!("cannot remove stale socket {shown}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_regular_file_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sds.sock");
        std::fs::write(&path, "precious").unwrap();
        let err = bind(&path).err().expect("refused");
        assert!(
            format!("{err:#}").contains("a regular file is already there"),
            "{err:#}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }

    #[tokio::test]
    async fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = bind(dir.path()).err().expect("refused");
        assert!(format!("{err:#}").contains("a directory"), "{err:#}");
        assert!(dir.path().is_dir());
    }

    #[tokio::test]
    async fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sds.sock");
        let live = bind(&path).unwrap();
        let err = bind(&path).err().expect("a live socket is refused");
        assert!(
            format!("{err:#}").contains("another process is listening"),
            "{err:#}"
        );
        // A crash leaves the file behind with nobody listening.
        drop(live.listener);
        assert!(path.exists());
        let again = bind(&path).expect("a stale socket is replaced");
        again.owner.remove();
        assert!(!path.exists(), "the socket is removed on shutdown");
    }

    #[tokio::test]
    async fn removal_spares_a_file_that_replaced_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sds.sock");
        let bound = bind(&path).unwrap();
        drop(bound.listener);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        bound.owner.remove();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone else's");
    }
}
