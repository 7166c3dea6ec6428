//! `/proc/<pid>/stat`, parsed once: the comm field may hold spaces and
//! parentheses, so fields are counted from the last `)` (proc(5)).

/// The fields of `/proc/<pid>/stat` aikore reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    /// `Z`: a zombie, nothing left to signal (the reaper owns it).
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Clock ticks since boot when it started: with the pid it names one
    /// process; a reused pid has another.
    pub start_ticks: u64,
    pub rss_pages: u64,
}

impl Stat {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Parses the text of `/proc/<pid>/stat`.
pub fn parse_stat(pid: i32, text: &str) -> Option<Stat> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // proc(5) numbers fields from 1 with comm as 2; `fields[0]` is field 3 (state).
    let field = |n: usize| -> Option<&str> { fields.get(n - 3).copied() };
    let number = |n: usize| -> Option<u64> { field(n)?.parse().ok() };
    Some(Stat {
        pid,
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        cpu_ticks: number(14)? + number(15)?,
        start_ticks: number(22)?,
        rss_pages: number(24)?,
    })
}

/// Reads `/proc/<pid>/stat`; None when the process is gone (or unreadable).
pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(pid, &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every pid listed in `/proc` (processes, not threads).
pub fn pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comm_with_spaces_and_parens_does_not_shift_the_fields() {
        // 52 fields as the kernel writes them; comm is "a) (b c".
        let mut text = String::from("42 (a) (b c) S 7 42 42 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 12345 1000 77");
        for _ in 25..=52 {
            text.push_str(" 0");
        }
        let s = parse_stat(42, &text).unwrap();
        assert_eq!((s.state, s.ppid, s.pgrp, s.session), ('S', 7, 42, 42));
        assert_eq!((s.cpu_ticks, s.start_ticks, s.rss_pages), (11, 12345, 77));
        assert!(!s.is_zombie());
        assert!(parse_stat(1, "1 (x) Z").is_none(), "a short line is not a stat");
    }

    #[test]
    fn our_own_stat_reads() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert_eq!(s.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(s.pgrp, nix::unistd::getpgrp().as_raw());
        assert!(pids().contains(&me));
    }
}
