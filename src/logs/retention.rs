//! How much of a unit's log is kept on disk, and the rotated files that hold
//! it: `<unit>.log` (written to), `<unit>.log.1` (the previous file) up to
//! `<unit>.log.<files-1>`, each optionally gzip-compressed (`.gz`) once rotated.
//!
//! The knobs are journald's and s6-log's: the size of one file, how many files
//! are kept, whether rotated files are compressed. A global default
//! (`AIKORE_LOG_*`) and per-unit overrides (`LogMaxFileSize=` and friends).
//!
//! Rotation itself is a few renames under the unit's lock; what costs time
//! (freeing a discarded file's blocks, gzip) runs on a helper thread so a
//! flooding child is not slowed by it. The next rotation of the same unit
//! waits for that thread first, so at most one job per unit is in flight and
//! the file set is never renamed under a running compression.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

/// Retention of one unit's log files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Rotate the current file before it would grow past this size.
    pub max_file_bytes: u64,
    /// Files kept, the current one included: 1 keeps only the current file
    /// (a rotation discards it), 2 (the default) also keeps `.log.1`.
    pub max_files: u32,
    /// gzip rotated files (`.log.1.gz`, ...): a text log shrinks 5-10 times,
    /// at the price of a helper thread's CPU per rotation.
    pub compress: bool,
}

/// Upper bound on files kept per unit: each rotation renames every kept file,
/// so a huge count would make rotation slow; 100 is far past any real need.
pub const MAX_FILES_LIMIT: u32 = 100;

impl Default for Retention {
    fn default() -> Self {
        // Two files of 10 MiB: days of a typical web UI's output, and small
        // enough to open in any viewer.
        Retention { max_file_bytes: 10 * 1024 * 1024, max_files: 2, compress: false }
    }
}

/// A unit's own retention keys; unset ones take the global value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOverride {
    pub max_file_bytes: Option<u64>,
    pub max_files: Option<u32>,
    pub compress: Option<bool>,
}

impl Retention {
    pub fn with(&self, o: &RetentionOverride) -> Retention {
        Retention {
            max_file_bytes: o.max_file_bytes.unwrap_or(self.max_file_bytes).max(1),
            max_files: o.max_files.unwrap_or(self.max_files).clamp(1, MAX_FILES_LIMIT),
            compress: o.compress.unwrap_or(self.compress),
        }
    }

    /// The global setting from `AIKORE_LOG_MAX_FILE_SIZE` (bytes, K/M/G/T
    /// suffixes, `infinity`), `AIKORE_LOG_MAX_FILES` (1-100) and
    /// `AIKORE_LOG_COMPRESS` (yes/no); `get` looks a variable up (the
    /// environment, or a map in tests). Unset ones keep the default.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Retention, String> {
        let mut r = Retention::default();
        let value = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = value("AIKORE_LOG_MAX_FILE_SIZE") {
            r.max_file_bytes = parse_size(&v).map_err(|e| format!("AIKORE_LOG_MAX_FILE_SIZE: {e}"))?;
        }
        if let Some(v) = value("AIKORE_LOG_MAX_FILES") {
            r.max_files = parse_files(&v).map_err(|e| format!("AIKORE_LOG_MAX_FILES: {e}"))?;
        }
        if let Some(v) = value("AIKORE_LOG_COMPRESS") {
            r.compress = parse_bool(&v).map_err(|e| format!("AIKORE_LOG_COMPRESS: {e}"))?;
        }
        Ok(r)
    }
}

/// Bytes with an optional K, M, G or T suffix (powers of 1024), or
/// `infinity` (never rotate).
pub fn parse_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    if v == "infinity" {
        return Ok(u64::MAX);
    }
    let (digits, shift) = match v.char_indices().last() {
        Some((i, 'K' | 'k')) => (&v[..i], 10),
        Some((i, 'M' | 'm')) => (&v[..i], 20),
        Some((i, 'G' | 'g')) => (&v[..i], 30),
        Some((i, 'T' | 't')) => (&v[..i], 40),
        _ => (v, 0),
    };
    let err = || format!("'{v}' is not a size (bytes with an optional K, M, G or T suffix, or infinity)");
    let n: u64 = digits.trim().parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift).filter(|b| *b > 0).ok_or_else(err)
}

/// A file count from 1 to [`MAX_FILES_LIMIT`].
pub fn parse_files(v: &str) -> Result<u32, String> {
    match v.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_FILES_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!("'{}' is not a file count from 1 to {MAX_FILES_LIMIT}", v.trim())),
    }
}

/// systemd's booleans.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Ok(true),
        "0" | "no" | "false" | "off" => Ok(false),
        other => Err(format!("'{other}' is not a boolean (yes or no)")),
    }
}

/// `<unit>.log.<k>`, with `.gz` when compressed.
pub(crate) fn rotated(path: &Path, k: u32, gz: bool) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{k}{}", if gz { ".gz" } else { "" }));
    PathBuf::from(s)
}

/// The rotated files of the log at `path` that exist: (index, compressed),
/// in no particular order.
pub(crate) fn list_rotated(path: &Path) -> io::Result<Vec<(u32, bool)>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let (digits, gz) = match rest.strip_suffix(".gz") {
            Some(d) => (d, true),
            None => (rest, false),
        };
        // Only canonical numbers: "01" or "+1" are not ours.
        if let Ok(k) = digits.parse::<u32>() {
            if k > 0 && digits == k.to_string() {
                found.push((k, gz));
            }
        }
    }
    Ok(found)
}

/// The newest rotated file (`.1`, plain or compressed), if any.
pub(crate) fn newest_rotated(path: &Path) -> Option<(PathBuf, bool)> {
    let plain = rotated(path, 1, false);
    if plain.exists() {
        return Some((plain, false));
    }
    let gz = rotated(path, 1, true);
    gz.exists().then_some((gz, true))
}

/// Reads a compressed rotated file whole, at most `cap` bytes of it once
/// inflated (a rotated file is at most one file's worth; the cap guards
/// against anything else).
pub(crate) fn read_gz(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file).take(cap).read_to_end(&mut out)?;
    Ok(out)
}

/// Hidden names for files being deleted on the helper thread; never a
/// rotated name, so nothing reads or renames them meanwhile. The counter
/// keeps two discards of one unit apart.
fn discard_name(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.discard.{}.{n}", std::process::id()))
}

/// Removes what an earlier aikore left half-done: discards not yet deleted
/// and compressions not yet renamed into place. Called when a hub opens.
pub(crate) fn clean_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if (name.starts_with('.') && name.contains(".log.discard.")) || name.ends_with(".gz.tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Work left over from a rotation, done off the writer's path.
#[derive(Debug, Default)]
pub(crate) struct Rotation {
    /// Files renamed aside to be deleted.
    discard: Vec<PathBuf>,
    /// `.log.1` to compress into `.log.1.gz`.
    compress: Option<PathBuf>,
}

impl Rotation {
    /// Starts the job on a helper thread (or runs it here if no thread can
    /// be had); None when there's nothing to do.
    pub(crate) fn spawn(self) -> Option<JoinHandle<()>> {
        if self.discard.is_empty() && self.compress.is_none() {
            return None;
        }
        let job = std::sync::Arc::new(std::sync::Mutex::new(Some(self)));
        let for_thread = std::sync::Arc::clone(&job);
        let spawned = std::thread::Builder::new().name("log-rotate".into()).spawn(move || {
            if let Some(r) = for_thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
                r.run();
            }
        });
        match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "no thread for log rotation; doing it inline");
                if let Some(r) = job.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    r.run();
                }
                None
            }
        }
    }

    fn run(self) {
        for path in &self.discard {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "deleting a discarded log file");
            }
        }
        if let Some(plain) = self.compress {
            if let Err(e) = compress(&plain) {
                // The plain file stays: nothing is lost, it's just bigger.
                tracing::warn!(path = %plain.display(), error = %e, "compressing a rotated log file");
            }
        }
    }
}

/// `X` to `X.gz` (through `X.gz.tmp`, so a reader never sees half a file),
/// then deletes `X`.
fn compress(plain: &Path) -> io::Result<()> {
    let mut gz_name = plain.as_os_str().to_owned();
    gz_name.push(".gz");
    let gz = PathBuf::from(gz_name);
    let mut tmp_name = gz.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut input = std::fs::File::open(plain)?;
        let out = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?
        };
        // Level 1: within a few percent of the default's ratio on text logs,
        // several times faster, so a flooding unit's rotations keep up.
        let mut enc = flate2::write::GzEncoder::new(io::BufWriter::new(out), flate2::Compression::fast());
        io::copy(&mut input, &mut enc)?;
        enc.finish()?.flush()?;
        std::fs::rename(&tmp, &gz)?;
        std::fs::remove_file(plain)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Rotates the log at `path`: every kept rotated file moves one index up
/// (the ones past `max_files - 1` are discarded), the current file becomes
/// `.1` (or is discarded when only one file is kept). Returns the slow part
/// for [`Rotation::spawn`]. Missing files are fine; the first rename error
/// stops the rotation and is returned (the current file is then kept).
pub(crate) fn rotate(path: &Path, retention: &Retention) -> io::Result<Rotation> {
    let mut job = Rotation::default();
    let mut old = list_rotated(path)?;
    old.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (k, gz) in old {
        let from = rotated(path, k, gz);
        if k + 1 >= retention.max_files {
            let aside = discard_name(path);
            rename_if_exists(&from, &aside)?;
            job.discard.push(aside);
        } else {
            rename_if_exists(&from, &rotated(path, k + 1, gz))?;
        }
    }
    if retention.max_files >= 2 {
        let first = rotated(path, 1, false);
        if rename_if_exists(path, &first)? && retention.compress {
            job.compress = Some(first);
        }
    } else {
        let aside = discard_name(path);
        if rename_if_exists(path, &aside)? {
            job.discard.push(aside);
        }
    }
    Ok(job)
}

/// Whether `from` existed (and was renamed).
fn rename_if_exists(from: &Path, to: &Path) -> io::Result<bool> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every file of the log at `path`: the current one and the rotated ones.
pub(crate) fn all_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = vec![path.to_path_buf()];
    files.extend(list_rotated(path)?.into_iter().map(|(k, gz)| rotated(path, k, gz)));
    Ok(files)
}

/// Moves every file of the log at `from` to the same place under `to`.
pub(crate) fn move_all(from: &Path, to: &Path) -> io::Result<()> {
    for (k, gz) in list_rotated(from)? {
        rename_if_exists(&rotated(from, k, gz), &rotated(to, k, gz))?;
    }
    rename_if_exists(from, to).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_counts_and_booleans() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("infinity"), Ok(u64::MAX));
        for bad in ["", "0", "-1", "10X", "M", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_files("1"), Ok(1));
        assert_eq!(parse_files("100"), Ok(100));
        for bad in ["0", "101", "x", "-2"] {
            assert!(parse_files(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_bool("Yes"), Ok(true));
        assert_eq!(parse_bool("off"), Ok(false));
        assert!(parse_bool("maybe").unwrap_err().contains("maybe"));
    }

    #[test]
    fn global_setting_from_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(Retention::from_vars(vars(&[])), Ok(Retention::default()));
        let r = Retention::from_vars(vars(&[
            ("AIKORE_LOG_MAX_FILE_SIZE", "1M"),
            ("AIKORE_LOG_MAX_FILES", "5"),
            ("AIKORE_LOG_COMPRESS", "yes"),
        ]))
        .unwrap();
        assert_eq!(r, Retention { max_file_bytes: 1 << 20, max_files: 5, compress: true });
        let e = Retention::from_vars(vars(&[("AIKORE_LOG_MAX_FILES", "0")])).unwrap_err();
        assert!(e.starts_with("AIKORE_LOG_MAX_FILES:"), "{e}");
        // A unit's keys win where set; the rest stays global.
        let o = RetentionOverride { max_files: Some(3), ..Default::default() };
        assert_eq!(r.with(&o), Retention { max_files: 3, ..r });
    }

    #[test]
    fn rotate_shifts_discards_and_compresses() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("u.log");
        let r = Retention { max_file_bytes: 1, max_files: 3, compress: true };
        for round in 0..4 {
            std::fs::write(&p, format!("round {round}\n")).unwrap();
            if let Some(h) = rotate(&p, &r).unwrap().spawn() {
                h.join().unwrap();
            }
        }
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        // Three files kept in all: the current one (gone: rotated last) and two rotated.
        assert_eq!(names, ["u.log.1.gz", "u.log.2.gz"]);
        assert_eq!(read_gz(&rotated(&p, 1, true), 1 << 20).unwrap(), b"round 3\n");
        assert_eq!(read_gz(&rotated(&p, 2, true), 1 << 20).unwrap(), b"round 2\n");
        // One file kept: a rotation leaves nothing behind.
        let one = Retention { max_files: 1, ..r };
        std::fs::write(&p, "x\n").unwrap();
        if let Some(h) = rotate(&p, &one).unwrap().spawn() {
            h.join().unwrap();
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
