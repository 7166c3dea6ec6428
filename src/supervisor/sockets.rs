//! Who listens on a TCP port: for the `port-in-use` hint, so a user reads
//! "port 8188 is held by python3 (pid 4242)" instead of hunting with `ss`.
//! Read from `/proc/net/tcp{,6}` (the listening socket's inode) and the
//! `/proc/<pid>/fd` links; only asked after a run failed, never on a hot path.

use std::fs;

/// `st` of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

fn listening_inodes(port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && *state == TCP_LISTEN && *inode != "0" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    inodes
}

/// `comm (pid N)` of a process holding a socket listening on `port`, if one
/// is visible to us (another PID namespace's is not).
pub fn listener_of(port: u16) -> Option<String> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return None;
    }
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else { continue };
            if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                return Some(format!("{} (pid {pid})", comm.trim()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_listening_and_nobody_on_a_closed_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let holder = listener_of(port).expect("our own listener is visible");
        assert!(holder.ends_with(&format!("(pid {})", std::process::id())), "{holder}");
        drop(listener);
        assert_eq!(listener_of(port), None);
    }
}
