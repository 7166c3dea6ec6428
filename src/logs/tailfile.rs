//! Reading the last lines of log files from their end, for tails older than
//! the in-memory ring (e.g. right after aikore restarted).
//!
//! Seeks backwards in fixed blocks, so a 100-line tail of a 10 MiB file reads
//! a few KiB, not the whole file.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// Block read per backwards step: large enough that a typical tail (lines of
/// ~100 bytes) takes one or two reads, small enough to be cheap when only a
/// handful of lines is wanted.
const BLOCK_BYTES: u64 = 64 * 1024;

/// The last `n` lines of the concatenation of `paths` (oldest file first),
/// oldest line first, without their newlines. Missing files count as empty.
pub(crate) fn last_lines(paths: &[&Path], n: usize) -> io::Result<Vec<Vec<u8>>> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    // Newest file first: stop as soon as enough lines are found.
    for path in paths.iter().rev() {
        if lines.len() >= n {
            break;
        }
        let mut older = last_lines_of_file(path, n - lines.len())?;
        older.append(&mut lines);
        lines = older;
    }
    Ok(lines)
}

/// The last `n` lines of `data` (a whole file's bytes, e.g. inflated), like
/// [`last_lines`] for one file.
pub(crate) fn last_lines_of_bytes(data: &[u8], n: usize) -> Vec<Vec<u8>> {
    if n == 0 || data.is_empty() {
        return Vec::new();
    }
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    let mut pieces: Vec<&[u8]> = data.rsplit(|&b| b == b'\n').take(n).collect();
    pieces.reverse();
    pieces.into_iter().map(<[u8]>::to_vec).collect()
}

/// The last `n` lines of one file. A final line without a newline counts as a
/// line (a crash mid-write, or a file someone else appended to).
fn last_lines_of_file(path: &Path, n: usize) -> io::Result<Vec<Vec<u8>>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut start = len;
    // Blocks read so far, newest first; joined once at the end so prepending
    // never copies the tail repeatedly.
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut newlines = 0usize;
    let mut ends_with_newline = None;
    // n lines are bounded by n+1 newlines, or n if the file doesn't end in one
    // (the last line is then terminated by EOF); or by the start of the file.
    while start > 0 {
        let size = BLOCK_BYTES.min(start);
        start -= size;
        file.seek(SeekFrom::Start(start))?;
        // `size` <= BLOCK_BYTES, which fits in usize on every target.
        let mut block = vec![0u8; size as usize];
        file.read_exact(&mut block)?;
        if ends_with_newline.is_none() {
            ends_with_newline = Some(block.last() == Some(&b'\n'));
        }
        newlines += block.iter().filter(|&&b| b == b'\n').count();
        blocks.push(block);
        let needed = if ends_with_newline == Some(true) { n.saturating_add(1) } else { n };
        if newlines >= needed {
            break;
        }
    }
    let mut data = Vec::with_capacity(blocks.iter().map(Vec::len).sum());
    for block in blocks.iter().rev() {
        data.extend_from_slice(block);
    }
    if data.last() == Some(&b'\n') {
        data.pop();
    }
    if data.is_empty() && len == 0 {
        return Ok(Vec::new());
    }
    let mut pieces: Vec<&[u8]> = data.rsplit(|&b| b == b'\n').take(n.saturating_add(1)).collect();
    // The oldest piece is partial (cut mid-line by the block boundary) unless
    // the read reached the start of the file.
    if start > 0 && pieces.len() > n {
        pieces.pop();
    }
    pieces.truncate(n);
    Ok(pieces.into_iter().rev().map(<[u8]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, content: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        File::create(&p).unwrap().write_all(content).unwrap();
        p
    }

    fn s(lines: &[Vec<u8>]) -> Vec<String> {
        lines.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect()
    }

    #[test]
    fn small_file_and_no_trailing_newline() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a", b"1\n2\n3\n");
        assert_eq!(s(&last_lines(&[&p], 2).unwrap()), ["2", "3"]);
        assert_eq!(s(&last_lines(&[&p], 10).unwrap()), ["1", "2", "3"]);
        let q = write(d.path(), "b", b"1\n2\n3");
        assert_eq!(s(&last_lines(&[&q], 2).unwrap()), ["2", "3"]);
        let e = write(d.path(), "e", b"");
        assert!(last_lines(&[&e], 5).unwrap().is_empty());
        let one = write(d.path(), "one", b"\n");
        assert_eq!(s(&last_lines(&[&one], 5).unwrap()), [""]);
    }

    #[test]
    fn spans_blocks_and_files() {
        let d = tempfile::tempdir().unwrap();
        let mut big = Vec::new();
        for i in 0..50_000 {
            writeln!(big, "line {i}").unwrap();
        }
        let newer = write(d.path(), "new", &big);
        let older = write(d.path(), "old", b"o1\no2\n");
        let missing = d.path().join("missing");
        let got = s(&last_lines(&[&older, &newer], 20_000).unwrap());
        assert_eq!(got.len(), 20_000);
        assert_eq!(got[0], "line 30000");
        assert_eq!(got[19_999], "line 49999");
        let all = s(&last_lines(&[&missing, &older, &newer], 50_001).unwrap());
        assert_eq!(all[0], "o2");
        assert_eq!(all[1], "line 0");
        assert_eq!(all.len(), 50_001);
    }
}
