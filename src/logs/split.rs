//! Line splitting of a raw byte stream: turns arbitrary read chunks into whole,
//! bounded lines.
//!
//! A child's output arrives in whatever pieces the pipe hands us, so a line may
//! span reads, may end in CRLF, may never end (the final line before EOF), or
//! may be a runaway with no newline at all. Memory per stream stays bounded by
//! `max_line_bytes` plus one byte whatever the child writes.

/// Incremental splitter; feed it chunks, it yields complete lines (without
/// the terminator) to a callback.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    pending: Vec<u8>,
    max_line_bytes: usize,
}

impl LineSplitter {
    pub(crate) fn new(max_line_bytes: usize) -> Self {
        Self {
            pending: Vec::new(),
            // A zero limit would loop forever emitting empty pieces.
            max_line_bytes: max_line_bytes.max(1),
        }
    }

    /// Splits `chunk`, calling `emit` for every complete line. Bytes after the
    /// last newline are kept for the next call.
    pub(crate) fn feed(&mut self, chunk: &[u8], emit: &mut impl FnMut(&[u8])) {
        let mut rest = chunk;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(pos);
            rest = &tail[1..];
            if self.pending.is_empty() {
                self.emit_whole(line, emit);
            } else {
                self.pending.extend_from_slice(line);
                let line = std::mem::take(&mut self.pending);
                self.emit_whole(&line, emit);
                // Keep the allocation for the next partial line.
                self.pending = line;
                self.pending.clear();
            }
        }
        self.pending.extend_from_slice(rest);
        self.drain_overlong(emit);
    }

    /// The unfinished line held back, leaving the splitter empty; hand the
    /// vector back with [`give_back`](Self::give_back) to keep its allocation.
    pub(crate) fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// Returns a vector from [`take_pending`](Self::take_pending), emptied.
    pub(crate) fn give_back(&mut self, mut v: Vec<u8>) {
        v.clear();
        self.pending = v;
    }

    /// Emits whatever partial line is left (EOF: the child's last line may lack
    /// a newline).
    pub(crate) fn finish(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit_whole(&line, emit);
        }
    }

    /// A terminated line: strip one CR (CRLF endings), then cut into pieces of
    /// at most `max_line_bytes`.
    fn emit_whole(&self, line: &[u8], emit: &mut impl FnMut(&[u8])) {
        let mut line = line.strip_suffix(b"\r").unwrap_or(line);
        while line.len() > self.max_line_bytes {
            let cut = utf8_cut(line, self.max_line_bytes);
            emit(&line[..cut]);
            line = &line[cut..];
        }
        emit(line);
    }

    /// An unterminated line that has grown past the limit is emitted in pieces
    /// now rather than buffered: one runaway line can't eat memory.
    fn drain_overlong(&mut self, emit: &mut impl FnMut(&[u8])) {
        let max = self.max_line_bytes;
        // `max + 1` bytes ending in CR may be a max-length CRLF line whose LF
        // has not arrived yet; hold it so it isn't split into "line" + "".
        while self.pending.len() > max && !(self.pending.len() == max + 1 && self.pending.last() == Some(&b'\r')) {
            let cut = utf8_cut(&self.pending, max);
            emit(&self.pending[..cut]);
            self.pending.drain(..cut);
        }
    }
}

/// Where to cut `bytes` so the first piece has at most `max` bytes: backs off
/// to a UTF-8 character boundary so both halves still read as text, unless the
/// data isn't UTF-8 there.
fn utf8_cut(bytes: &[u8], max: usize) -> usize {
    // A UTF-8 character is at most 4 bytes, so a boundary is at most 3 back.
    const MAX_CONTINUATION_BYTES: usize = 3;
    let is_continuation = |b: u8| b & 0b1100_0000 == 0b1000_0000;
    let mut cut = max;
    while cut > 0 && max - cut < MAX_CONTINUATION_BYTES && bytes.get(cut).is_some_and(|&b| is_continuation(b)) {
        cut -= 1;
    }
    if cut == 0 || bytes.get(cut).is_some_and(|&b| is_continuation(b)) {
        max
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize) -> Vec<Vec<u8>> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut |l| out.push(l.to_vec()));
        }
        s.finish(&mut |l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn partial_lines_across_chunks() {
        let out = split(&[b"hel", b"lo\nwor", b"ld\n", b"last"], 100);
        assert_eq!(out, vec![b"hello".to_vec(), b"world".to_vec(), b"last".to_vec()]);
    }

    #[test]
    fn crlf_stripped_even_across_chunks() {
        let out = split(&[b"a\r\nb\r", b"\nc\r\n"], 100);
        assert_eq!(out, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn empty_lines_kept() {
        let out = split(&[b"\n\nx\n"], 100);
        assert_eq!(out, vec![b"".to_vec(), b"".to_vec(), b"x".to_vec()]);
    }

    #[test]
    fn long_line_split_terminated_and_unterminated() {
        let out = split(&[b"abcdefghij\n"], 4);
        assert_eq!(out, vec![b"abcd".to_vec(), b"efgh".to_vec(), b"ij".to_vec()]);
        // Arriving byte by byte must give the same pieces.
        let bytes = b"abcdefghij\n";
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(split(&chunks, 4), out);
    }

    #[test]
    fn max_length_crlf_line_not_split() {
        let out = split(&[b"abcd\r", b"\n"], 4);
        assert_eq!(out, vec![b"abcd".to_vec()]);
    }

    #[test]
    fn split_respects_utf8_boundaries() {
        // "aé" is 3 bytes; a cut at 2 would halve 'é'.
        let out = split(&["aéb\n".as_bytes()], 2);
        assert_eq!(out, vec![b"a".to_vec(), "é".as_bytes().to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn memory_bounded_without_newline() {
        let mut s = LineSplitter::new(16);
        let mut n = 0;
        for _ in 0..1000 {
            s.feed(&[b'x'; 100], &mut |l| {
                assert_eq!(l.len(), 16);
                n += 1;
            });
            assert!(s.pending.len() <= 17);
        }
        // Exactly 16 bytes are held back: they may yet be a whole line.
        assert_eq!(n, 100_000 / 16 - 1);
        s.finish(&mut |l| assert_eq!(l.len(), 16));
    }
}
