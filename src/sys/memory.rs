//! Giving back what only the boot needed (issue 15: memory with 100 idle
//! services at or below runit's).
//!
//! Most of an idle aikore's memory is its own code: the pages of the binary
//! that parsing flags, opening SQLite, migrating, loading unit files,
//! rendering the NGINX config and starting units touched once (the kernel
//! also maps their neighbours on each fault). Once the boot has settled,
//! `MADV_PAGEOUT` on the binary's read-only mappings lets the kernel reclaim
//! them: clean file pages, so nothing is written, and what the daemon still
//! runs comes back on first use (from the page cache when it is still
//! there). `malloc_trim` hands the heap's free pages back the same way.

/// Pages the binary's read-only mappings out and trims the heap. Best
/// effort: a kernel without `MADV_PAGEOUT` (before 5.4) refuses it, and
/// nothing changes. Returns the bytes of mappings advised.
pub fn release_boot_pages() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the kernel; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return 0 };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return 0 };
    let mut advised = 0;
    for (start, end) in readonly_mappings_of(&maps, &exe.to_string_lossy()) {
        let len = end - start;
        // SAFETY: the range is one of our own file mappings, read-only
        // (never written, so never dirty); MADV_PAGEOUT only drops its pages
        // from this process's page tables, and a later access faults them
        // back in from the file. No Rust object lives in it.
        if unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT) } == 0 {
            advised += len;
        }
    }
    advised
}

/// (start, end) of each read-only mapping of `path` in a `/proc/<pid>/maps` text.
fn readonly_mappings_of(maps: &str, path: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let file = fields.nth(3)?;
            if file != path || perms.as_bytes().get(1) != Some(&b'-') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_binarys_read_only_mappings_are_chosen() {
        let maps = "\
55d0a0000000-55d0a0100000 r--p 00000000 08:01 42 /usr/bin/aikore
55d0a0100000-55d0a0900000 r-xp 00100000 08:01 42 /usr/bin/aikore
55d0a0900000-55d0a0a00000 rw-p 00900000 08:01 42 /usr/bin/aikore
55d0a0b00000-55d0a0c00000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000100000 r-xp 00000000 08:01 7 /usr/lib/libc.so.6
7f0000200000-7f0000300000 r--p 00000000 08:01 43 /usr/bin/aikore-other
";
        assert_eq!(
            readonly_mappings_of(maps, "/usr/bin/aikore"),
            vec![(0x55d0a0000000, 0x55d0a0100000), (0x55d0a0100000, 0x55d0a0900000)]
        );
    }

    #[test]
    fn paging_out_our_own_code_leaves_the_process_working() {
        // The test binary's own code is paged out while it runs; it must go on running.
        let advised = release_boot_pages();
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
        // A kernel without MADV_PAGEOUT advises nothing; one with it covers the text.
        assert!(advised == 0 || advised >= 4096, "{advised}");
    }
}
