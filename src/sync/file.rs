//! The output file: inspected before it is touched, written atomically, removed on
//! withdrawal.
//!
//! Readers (OpenSSL's `SSL_CERT_FILE`, Python, Node, nginx) open the file at any moment, so a
//! write goes to a temporary file in the same directory, is flushed to disk and renamed over
//! the target: a reader sees the old bundle or the new one, never a partial or empty file.
//!
//! `--out` is a flag, and a mistyped flag must never destroy a user's file. What is already
//! at the path is replaced only if it is what this command writes: a PEM bundle of CA
//! certificates (by the rules the server applies to what it serves), or an empty file.
//! A directory, a symbolic link or a special file is always refused; any other regular file
//! (a config, a key, a leaf certificate) is refused unless `--force` is given.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::validation::{MAX_CA_BUNDLE_BYTES, Subject, validate_data};

/// Readable by every consumer (they often run as another user), writable by us.
const MODE: u32 = 0o644;
/// Largest file that can be one of our bundles: the gateway cap plus a final newline.
const MAX_OURS: u64 = MAX_CA_BUNDLE_BYTES as u64 + 1;

/// What the path holds now.
#[derive(Debug, PartialEq, Eq)]
pub enum OnDisk {
    Absent,
    /// A file we may replace, with its bytes (empty, or a CA bundle).
    Bundle(Vec<u8>),
    /// A file that is not a CA bundle, replaceable only because of `--force`.
    Forced,
}

/// Why the path may not be written.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "--out {path}: {what} is already there; trust-sds sync writes only regular files. \
         Choose a file path{hint}"
    )]
    NotAFile {
        path: String,
        what: &'static str,
        hint: String,
    },
    #[error(
        "--out {path}: the file there is not a PEM bundle of CA certificates ({why}), so it \
         is not one trust-sds sync wrote. Move it away, choose another --out, or pass --force \
         to replace it"
    )]
    NotABundle { path: String, why: String },
    #[error("--out {path}: cannot inspect it: {source}")]
    Io { path: String, source: io::Error },
}

/// The file trust-sds sync owns.
#[derive(Clone, Debug)]
pub struct OutFile {
    path: PathBuf,
    force: bool,
}

impl OutFile {
    pub fn new(path: PathBuf, force: bool) -> Self {
        Self { path, force }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory the file lives in (where the temporary file goes, so rename is atomic).
    pub fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    /// What is at the path, or why it must not be touched.
    pub fn inspect(&self) -> Result<OnDisk, Refusal> {
        let shown = || self.path.display().to_string();
        let meta = match fs::symlink_metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(OnDisk::Absent),
            Err(source) => {
                return Err(Refusal::Io {
                    path: shown(),
                    source,
                });
            }
        };
        let kind = meta.file_type();
        if !kind.is_file() {
            let (what, hint) = if kind.is_dir() {
                let inside = self.path.join("ca.pem");
                (
                    "a directory",
                    format!(" inside it, e.g. --out {}", inside.display()),
                )
            } else if kind.is_symlink() {
                // Renaming over a link would replace the link, not the file it names.
                let hint = ", or point --out at the file the link names".to_owned();
                ("a symbolic link", hint)
            } else {
                ("a special file", String::new())
            };
            return Err(Refusal::NotAFile {
                path: shown(),
                what,
                hint,
            });
        }
        if meta.len() > MAX_OURS {
            return self.not_a_bundle(format!("larger than {MAX_CA_BUNDLE_BYTES} bytes"));
        }
        let bytes = read_capped(&self.path).map_err(|source| Refusal::Io {
            path: shown(),
            source,
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OnDisk::Bundle(bytes));
        }
        match validate_data(Subject::GatewayBundle, &bytes) {
            Ok(_) => Ok(OnDisk::Bundle(bytes)),
            Err(why) => self.not_a_bundle(why.to_string()),
        }
    }

    fn not_a_bundle(&self, why: String) -> Result<OnDisk, Refusal> {
        if self.force {
            return Ok(OnDisk::Forced);
        }
        Err(Refusal::NotABundle {
            path: self.path.display().to_string(),
            why,
        })
    }

    /// Replaces the file with `content` atomically (temporary file, fsync, rename, fsync of
    /// the directory), mode 0644. On failure the old file is untouched and no temporary
    /// file is left behind.
    pub fn write(&self, content: &[u8]) -> io::Result<()> {
        let (tmp, mut file) = self.create_temp()?;
        let written = (|| {
            file.write_all(content)?;
            // Explicitly, as the umask may have narrowed the mode given at creation.
            file.set_permissions(fs::Permissions::from_mode(MODE))?;
            file.sync_all()?;
            drop(file);
            fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // The rename is durable only once the directory entry is on disk.
        sync_dir(self.dir())
    }

    /// Removes the file (withdrawal); a missing file is fine.
    pub fn remove(&self) -> io::Result<()> {
        match fs::remove_file(&self.path) {
            Ok(()) => sync_dir(self.dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes temporary files an earlier run left behind (it was killed mid-write). Only
    /// names of our own pattern for this file are touched.
    pub fn remove_stale_temps(&self) {
        let prefix = self.temp_prefix();
        let Ok(entries) = fs::read_dir(self.dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let ours = entry.file_name().to_string_lossy().starts_with(&prefix)
                && entry.file_type().is_ok_and(|t| t.is_file());
            if ours && fs::remove_file(entry.path()).is_ok() {
                tracing::info!(file = %entry.path().display(), "removed a temporary file left by an earlier run");
            }
        }
    }

    /// `.NAME.tmp-`: hidden, so globs such as `*.pem` or `*.crt` never pick it up.
    fn temp_prefix(&self) -> String {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!(".{name}.tmp-")
    }

    fn create_temp(&self) -> io::Result<(PathBuf, File)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = self.temp_prefix();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = self
                .dir()
                .join(format!("{prefix}{}-{n}", std::process::id()));
            // create_new: never follow or reuse something already there.
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(MODE)
                .open(&tmp)
            {
                Ok(file) => return Ok((tmp, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.take(MAX_OURS).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        crate::cert::test_ca_pem("Test CA")
    }

    fn out(dir: &tempfile::TempDir, force: bool) -> OutFile {
        OutFile::new(dir.path().join("ca.pem"), force)
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_with_mode_0644_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = out(&dir, false);
        assert_eq!(out.inspect().unwrap(), OnDisk::Absent);
        let pem = ca_pem();
        out.write(pem.as_bytes()).unwrap();
        assert_eq!(fs::read_to_string(out.path()).unwrap(), pem);
        let mode = fs::metadata(out.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(entries(dir.path()), ["ca.pem"]);
        assert_eq!(out.inspect().unwrap(), OnDisk::Bundle(pem.into_bytes()));
    }

    #[test]
    fn an_empty_file_may_be_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let out = out(&dir, false);
        fs::write(out.path(), "").unwrap();
        assert_eq!(out.inspect().unwrap(), OnDisk::Bundle(vec![]));
    }

    #[test]
    fn a_file_that_is_not_a_ca_bundle_is_refused_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let leaf = {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap();
            params.is_ca = rcgen::IsCa::ExplicitNoCa;
            params.self_signed(&key).unwrap().pem()
        };
        let cases = [
            (
                "root:x:0:0:root:/root:/bin/bash\n".to_owned(),
                "no valid PEM certificate blocks found",
            ),
            (
                format!("{}{key}", ca_pem()),
                "unexpected PEM block type \"PRIVATE KEY\"",
            ),
            (leaf, "is not a CA certificate"),
        ];
        for (content, why) in cases {
            let out = out(&dir, false);
            fs::write(out.path(), &content).unwrap();
            let err = out.inspect().unwrap_err().to_string();
            assert!(err.contains(why) && err.contains("pass --force"), "{err}");
            assert!(!err.contains("BEGIN"), "no file content in messages: {err}");
            assert_eq!(
                OutFile::new(out.path().to_owned(), true).inspect().unwrap(),
                OnDisk::Forced
            );
            assert_eq!(
                fs::read_to_string(out.path()).unwrap(),
                content,
                "untouched"
            );
        }
    }

    #[test]
    fn a_large_file_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = out(&dir, false);
        fs::write(out.path(), vec![b'x'; MAX_CA_BUNDLE_BYTES + 2]).unwrap();
        let err = out.inspect().unwrap_err().to_string();
        assert!(err.contains("larger than 262144 bytes"), "{err}");
    }

    #[test]
    fn directories_links_and_special_files_are_refused_even_forced() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("certs");
        fs::create_dir(&sub).unwrap();
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(dir.path().join("elsewhere.pem"), &link).unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        for (path, what) in [
            (&sub, "a directory is already there"),
            (&link, "a symbolic link is already there"),
            (&fifo, "a special file is already there"),
        ] {
            let err = OutFile::new(path.clone(), true).inspect().unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
        }
        assert!(sub.is_dir() && link.is_symlink());
    }

    #[test]
    fn a_failed_write_leaves_the_old_state_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails after the temporary file exists.
        let target = dir.path().join("ca.pem");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), "x").unwrap();
        let err = OutFile::new(target.clone(), false)
            .write(b"data")
            .unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::IsADirectory | io::ErrorKind::DirectoryNotEmpty
            ),
            "{err}"
        );
        assert_eq!(entries(dir.path()), ["ca.pem"]);
        assert_eq!(entries(&target), ["keep"]);
    }

    #[test]
    fn stale_temporary_files_of_this_name_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = out(&dir, false);
        fs::write(dir.path().join(".ca.pem.tmp-1-0"), "half").unwrap();
        fs::write(dir.path().join(".other.pem.tmp-1-0"), "not ours").unwrap();
        fs::write(dir.path().join("ca.pem.bak"), "not ours").unwrap();
        out.remove_stale_temps();
        assert_eq!(entries(dir.path()), [".other.pem.tmp-1-0", "ca.pem.bak"]);
    }

    #[test]
    fn removal_of_a_missing_file_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let out = out(&dir, false);
        out.remove().unwrap();
        out.write(b"x").unwrap();
        out.remove().unwrap();
        assert!(!out.path().exists());
    }
}
