//! The client side of issue 14's systemctl habits: `cat`, `show`,
//! `list-dependencies`, `is-active`, `is-failed`, `kill`, `reset-failed`,
//! `enable`, `disable`, and the process part of `status NAME`.

use super::{encode, exit_code, report, Client, Command, Failure};
use crate::api::{
    DependencyTree, InstallChanges, KillReply, ProcessInfo, ResetFailedReply, Status, UnitFile, UnitProcesses,
    UnitProperties, UnitView,
};

/// systemctl's exit code of `is-active` for a unit that is not active.
const NOT_ACTIVE: i32 = 3;

/// Runs `command` when it is one of this module's and returns its exit
/// code; None for any other command.
pub(super) fn run(client: &Client, command: &Command) -> Option<i32> {
    let result = match command {
        Command::Cat { name } => cat(client, name),
        Command::Show { name, property } => show(client, name, property),
        Command::ListDependencies { name } => list_dependencies(client, name),
        Command::IsActive { name } => return Some(is_state(client, name, true)),
        Command::IsFailed { name } => return Some(is_state(client, name, false)),
        Command::Kill { name, signal } => kill(client, name, signal),
        Command::ResetFailed { name } => reset_failed(client, name.as_deref()),
        Command::Enable { name } => install(client, name, "enable"),
        Command::Disable { name } => install(client, name, "disable"),
        _ => return None,
    };
    Some(match result {
        Ok(()) => exit_code::OK,
        Err(failure) => report(failure),
    })
}

fn unit_path(name: &str, rest: &str) -> String {
    format!("/api/v1/units/{}/{rest}", encode(name))
}

fn cat(client: &Client, name: &str) -> Result<(), Failure> {
    let file: UnitFile = client.json("GET", &unit_path(name, "file"))?;
    println!("# {}", file.path);
    print!("{}", file.text);
    Ok(())
}

fn show(client: &Client, name: &str, wanted: &[String]) -> Result<(), Failure> {
    let props: UnitProperties = client.json("GET", &unit_path(name, "properties"))?;
    for (key, value) in &props.properties {
        if wanted.is_empty() || wanted.iter().any(|w| w == key) {
            println!("{key}={value}");
        }
    }
    Ok(())
}

fn list_dependencies(client: &Client, name: &str) -> Result<(), Failure> {
    let tree: DependencyTree = client.json("GET", &unit_path(name, "dependencies"))?;
    println!("{}", tree.name);
    print_children(&tree, "");
    Ok(())
}

fn print_children(node: &DependencyTree, indent: &str) {
    for (i, child) in node.children.iter().enumerate() {
        let last = i + 1 == node.children.len();
        let missing = if child.loaded { "" } else { ", not loaded" };
        println!("{indent}{}{} ({}{missing})", if last { "└─" } else { "├─" }, child.name, child.via);
        print_children(child, &format!("{indent}{}", if last { "  " } else { "│ " }));
    }
}

/// `is-active` / `is-failed`: prints the state; exit 0 when it is that.
fn is_state(client: &Client, name: &str, active: bool) -> i32 {
    let unit: UnitView = match client.json("GET", &format!("/api/v1/units/{}", encode(name))) {
        Ok(unit) => unit,
        Err(failure) => return report(failure),
    };
    let state = crate::units::active_state_of(unit.status.as_str());
    println!("{state}");
    match (active, state) {
        (true, "active") | (false, "failed") => exit_code::OK,
        (true, _) => NOT_ACTIVE,
        (false, _) => exit_code::FAILED,
    }
}

fn kill(client: &Client, name: &str, signal: &str) -> Result<(), Failure> {
    let reply: KillReply = client.json("POST", &format!("{}?signal={}", unit_path(name, "kill"), encode(signal)))?;
    if reply.pids.is_empty() {
        println!("{name}: no process to signal");
    } else {
        let pids: Vec<String> = reply.pids.iter().map(i32::to_string).collect();
        println!("{name}: signal {} sent to {}", signal, pids.join(" "));
    }
    Ok(())
}

fn reset_failed(client: &Client, name: Option<&str>) -> Result<(), Failure> {
    let names: Vec<String> = match name {
        Some(n) => vec![n.to_string()],
        None => client
            .json::<Vec<UnitView>>("GET", "/api/v1/units")?
            .into_iter()
            .filter(|u| matches!(u.status, Status::Failed | Status::Error))
            .map(|u| u.name)
            .collect(),
    };
    for n in names {
        let reply: ResetFailedReply = client.json("POST", &unit_path(&n, "reset-failed"))?;
        println!("{n}: {}", reply.status);
    }
    Ok(())
}

fn install(client: &Client, name: &str, verb: &str) -> Result<(), Failure> {
    let reply: InstallChanges = client.json("POST", &unit_path(name, verb))?;
    for line in &reply.changes {
        println!("{line}");
    }
    Ok(())
}

/// `status NAME`'s systemctl part: memory, CPU, tasks and the process tree.
pub(super) fn print_processes(client: &Client, name: &str) -> Result<(), Failure> {
    let v: UnitProcesses = client.json("GET", &unit_path(name, "processes"))?;
    if v.tasks == 0 {
        // Nothing runs: no figures, as systemctl shows none for an inactive unit.
        return Ok(());
    }
    if let Some(bytes) = v.memory_bytes {
        println!("  memory:    {}", human_bytes(bytes));
    }
    if let Some(cpu) = v.cpu_seconds {
        println!("  cpu:       {cpu:.3}s");
    }
    println!("  tasks:     {}", v.tasks);
    if let Some(ip) = v.ip {
        // systemctl's "IP: 1.2K in, 3.4K out", with the packets.
        println!(
            "  ip:        {} in ({} packets), {} out ({} packets)",
            human_bytes(ip.ingress_bytes),
            ip.ingress_packets,
            human_bytes(ip.egress_bytes),
            ip.egress_packets
        );
    }
    if !v.processes.is_empty() {
        println!("  processes:");
        for line in process_tree(&v.processes) {
            println!("    {line}");
        }
    }
    Ok(())
}

/// The processes drawn as a tree: a process whose parent is not the
/// unit's is a root; children in pid order.
fn process_tree(procs: &[ProcessInfo]) -> Vec<String> {
    let pids: std::collections::BTreeSet<i32> = procs.iter().map(|p| p.pid).collect();
    let mut roots: Vec<&ProcessInfo> = procs.iter().filter(|p| !pids.contains(&p.ppid)).collect();
    roots.sort_by_key(|p| p.pid);
    let mut out = Vec::new();
    for (i, root) in roots.iter().enumerate() {
        draw(procs, root, "", i + 1 == roots.len(), &mut out, 0);
    }
    out
}

fn draw(procs: &[ProcessInfo], node: &ProcessInfo, indent: &str, last: bool, out: &mut Vec<String>, depth: usize) {
    out.push(format!("{indent}{}{} {}", if last { "└─" } else { "├─" }, node.pid, node.command));
    // A pid table cannot loop, but a reused pid read mid-change could: 64 levels is deeper than any real tree.
    if depth > 64 {
        return;
    }
    let mut children: Vec<&ProcessInfo> = procs.iter().filter(|p| p.ppid == node.pid && p.pid != node.pid).collect();
    children.sort_by_key(|p| p.pid);
    let indent = format!("{indent}{}", if last { "  " } else { "│ " });
    for (i, child) in children.iter().enumerate() {
        draw(procs, child, &indent, i + 1 == children.len(), out, depth + 1);
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_tree_nests_children_under_parents() {
        let p = |pid, ppid, command: &str| ProcessInfo { pid, ppid, command: command.to_string() };
        let procs = vec![p(10, 1, "sh -c run"), p(12, 10, "sleep 100"), p(11, 10, "worker"), p(13, 11, "child")];
        assert_eq!(process_tree(&procs), ["└─10 sh -c run", "  ├─11 worker", "  │ └─13 child", "  └─12 sleep 100"]);
    }

    #[test]
    fn bytes_read_like_systemctls() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(3 * 1024 * 1024 + 512 * 1024), "3.5M");
    }
}
