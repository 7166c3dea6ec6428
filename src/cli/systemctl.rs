//! The client side of issue 14's systemctl habits: `cat`, `show`,
//! `list-dependencies`, `is-active`, `is-failed`, `kill`, `reset-failed`,
//! `enable`, `disable`, and the process part of `status NAME`.

use super::{encode, exit_code, report, Client, Command, Failure};

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
    let v = client.json::<serde_json::Value>("GET", &unit_path(name, "file"))?;
    println!("# {}", v.get("path").and_then(|p| p.as_str()).unwrap_or(""));
    print!("{}", v.get("text").and_then(|t| t.as_str()).unwrap_or(""));
    Ok(())
}

fn show(client: &Client, name: &str, wanted: &[String]) -> Result<(), Failure> {
    let v = client.json::<serde_json::Value>("GET", &unit_path(name, "properties"))?;
    for pair in v.get("properties").and_then(|p| p.as_array()).into_iter().flatten() {
        let key = pair.get(0).and_then(|k| k.as_str()).unwrap_or("");
        let value = pair.get(1).and_then(|k| k.as_str()).unwrap_or("");
        if wanted.is_empty() || wanted.iter().any(|w| w == key) {
            println!("{key}={value}");
        }
    }
    Ok(())
}

fn list_dependencies(client: &Client, name: &str) -> Result<(), Failure> {
    let tree = client.json::<serde_json::Value>("GET", &unit_path(name, "dependencies"))?;
    println!("{}", tree.get("name").and_then(|n| n.as_str()).unwrap_or(name));
    print_children(&tree, "");
    Ok(())
}

fn print_children(node: &serde_json::Value, indent: &str) {
    let children = node.get("children").and_then(|c| c.as_array()).map(Vec::as_slice).unwrap_or_default();
    for (i, child) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        let name = child.get("name").and_then(|n| n.as_str()).unwrap_or("");
        let via = child.get("via").and_then(|n| n.as_str()).unwrap_or("");
        let missing = if child.get("loaded").and_then(|l| l.as_bool()) == Some(false) { ", not loaded" } else { "" };
        println!("{indent}{}{name} ({via}{missing})", if last { "└─" } else { "├─" });
        print_children(child, &format!("{indent}{}", if last { "  " } else { "│ " }));
    }
}

/// `is-active` / `is-failed`: prints the state; exit 0 when it is that.
fn is_state(client: &Client, name: &str, active: bool) -> i32 {
    let status = match client.json::<serde_json::Value>("GET", &format!("/api/v1/units/{}", encode(name))) {
        Ok(v) => v.get("status").and_then(|s| s.as_str()).unwrap_or("").to_string(),
        Err(failure) => return report(failure),
    };
    let state = crate::units::active_state_of(&status);
    println!("{state}");
    match (active, state) {
        (true, "active") | (false, "failed") => exit_code::OK,
        (true, _) => NOT_ACTIVE,
        (false, _) => exit_code::FAILED,
    }
}

fn kill(client: &Client, name: &str, signal: &str) -> Result<(), Failure> {
    let v =
        client.json::<serde_json::Value>("POST", &format!("{}?signal={}", unit_path(name, "kill"), encode(signal)))?;
    let pids: Vec<String> =
        v.get("pids").and_then(|p| p.as_array()).into_iter().flatten().map(|p| p.to_string()).collect();
    if pids.is_empty() {
        println!("{name}: no process to signal");
    } else {
        println!("{name}: signal {} sent to {}", signal, pids.join(" "));
    }
    Ok(())
}

fn reset_failed(client: &Client, name: Option<&str>) -> Result<(), Failure> {
    let names: Vec<String> = match name {
        Some(n) => vec![n.to_string()],
        None => client
            .json::<serde_json::Value>("GET", "/api/v1/units")?
            .as_array()
            .into_iter()
            .flatten()
            .filter(|u| matches!(u.get("status").and_then(|s| s.as_str()), Some("failed" | "error")))
            .filter_map(|u| u.get("name").and_then(|n| n.as_str()).map(String::from))
            .collect(),
    };
    for n in names {
        let v = client.json::<serde_json::Value>("POST", &unit_path(&n, "reset-failed"))?;
        println!("{n}: {}", v.get("status").and_then(|s| s.as_str()).unwrap_or(""));
    }
    Ok(())
}

fn install(client: &Client, name: &str, verb: &str) -> Result<(), Failure> {
    let v = client.json::<serde_json::Value>("POST", &unit_path(name, verb))?;
    for line in v.get("changes").and_then(|c| c.as_array()).into_iter().flatten() {
        println!("{}", line.as_str().unwrap_or(""));
    }
    Ok(())
}

/// `status NAME`'s systemctl part: memory, CPU, tasks and the process tree.
pub(super) fn print_processes(client: &Client, name: &str) -> Result<(), Failure> {
    let v = client.json::<serde_json::Value>("GET", &unit_path(name, "processes"))?;
    let tasks = v.get("tasks").and_then(|t| t.as_u64()).unwrap_or(0);
    if tasks == 0 {
        // Nothing runs: no figures, as systemctl shows none for an inactive unit.
        return Ok(());
    }
    if let Some(bytes) = v.get("memory_bytes").and_then(|m| m.as_u64()) {
        println!("  memory:    {}", human_bytes(bytes));
    }
    if let Some(cpu) = v.get("cpu_seconds").and_then(|c| c.as_f64()) {
        println!("  cpu:       {cpu:.3}s");
    }
    println!("  tasks:     {tasks}");
    let procs: Vec<(i64, i64, String)> = v
        .get("processes")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .map(|p| {
            let num = |k: &str| p.get(k).and_then(|x| x.as_i64()).unwrap_or(0);
            (num("pid"), num("ppid"), p.get("command").and_then(|c| c.as_str()).unwrap_or("").to_string())
        })
        .collect();
    if !procs.is_empty() {
        println!("  processes:");
        for line in process_tree(&procs) {
            println!("    {line}");
        }
    }
    Ok(())
}

/// `(pid, ppid, command)` drawn as a tree: a process whose parent is not the
/// unit's is a root; children in pid order.
fn process_tree(procs: &[(i64, i64, String)]) -> Vec<String> {
    let pids: std::collections::BTreeSet<i64> = procs.iter().map(|p| p.0).collect();
    let mut roots: Vec<&(i64, i64, String)> = procs.iter().filter(|p| !pids.contains(&p.1)).collect();
    roots.sort();
    let mut out = Vec::new();
    for (i, root) in roots.iter().enumerate() {
        draw(procs, root, "", i + 1 == roots.len(), &mut out, 0);
    }
    out
}

fn draw(
    procs: &[(i64, i64, String)],
    node: &(i64, i64, String),
    indent: &str,
    last: bool,
    out: &mut Vec<String>,
    depth: usize,
) {
    out.push(format!("{indent}{}{} {}", if last { "└─" } else { "├─" }, node.0, node.2));
    // A pid table cannot loop, but a reused pid read mid-change could: 64 levels is deeper than any real tree.
    if depth > 64 {
        return;
    }
    let mut children: Vec<&(i64, i64, String)> = procs.iter().filter(|p| p.1 == node.0 && p.0 != node.0).collect();
    children.sort();
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
        let procs = vec![
            (10, 1, "sh -c run".to_string()),
            (12, 10, "sleep 100".to_string()),
            (11, 10, "worker".to_string()),
            (13, 11, "child".to_string()),
        ];
        assert_eq!(process_tree(&procs), ["└─10 sh -c run", "  ├─11 worker", "  │ └─13 child", "  └─12 sleep 100"]);
    }

    #[test]
    fn bytes_read_like_systemctls() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(3 * 1024 * 1024 + 512 * 1024), "3.5M");
    }
}
