//! The dependency graph between units: start ordering (After=/Before=),
//! cycles, and references to units that do not exist.

use std::collections::{BTreeMap, BTreeSet};

use super::{Diagnostic, Severity, Unit};

/// Ordering edges `first -> then` between units of the set; names outside the
/// set are skipped (a missing unit imposes no order). BTree keeps every walk
/// in name order, which makes the results deterministic.
fn ordering_edges(units: &[Unit]) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = units.iter().map(|u| (u.name.as_str(), BTreeSet::new())).collect();
    let known: BTreeSet<&str> = edges.keys().copied().collect();
    for unit in units {
        for dep in unit.after.iter().filter(|d| known.contains(d.as_str())) {
            edges.entry(dep.as_str()).or_default().insert(unit.name.as_str());
        }
        for dep in unit.before.iter().filter(|d| known.contains(d.as_str())) {
            edges.entry(unit.name.as_str()).or_default().insert(dep.as_str());
        }
    }
    edges
}

/// An ordering cycle, if any: names in start order, where each must start
/// before the next and the last before the first. The cycle is rotated to
/// begin at its smallest name.
pub fn find_cycle(units: &[Unit]) -> Option<Vec<String>> {
    let edges = ordering_edges(units);
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    for &root in edges.keys() {
        if state.get(root).copied().unwrap_or(0) != 0 {
            continue;
        }
        // Iterative DFS so a long chain of units cannot overflow the stack.
        let mut path: Vec<&str> = vec![root];
        let mut iters: Vec<std::collections::btree_set::Iter<'_, &str>> =
            vec![edges.get(root).map(|s| s.iter()).unwrap_or_default()];
        state.insert(root, 1);
        while let Some(iter) = iters.last_mut() {
            match iter.next() {
                Some(&next) => match state.get(next).copied().unwrap_or(0) {
                    0 => {
                        state.insert(next, 1);
                        path.push(next);
                        iters.push(edges.get(next).map(|s| s.iter()).unwrap_or_default());
                    }
                    1 => {
                        let start = path.iter().position(|n| *n == next).unwrap_or(0);
                        let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                        let min = cycle.iter().enumerate().min_by_key(|(_, n)| n.as_str()).map_or(0, |(i, _)| i);
                        cycle.rotate_left(min);
                        return Some(cycle);
                    }
                    _ => {}
                },
                None => {
                    iters.pop();
                    if let Some(done) = path.pop() {
                        state.insert(done, 2);
                    }
                }
            }
        }
    }
    None
}

/// A deterministic start order (Kahn's algorithm, ties broken by name), or
/// the names of a cycle that prevents one.
pub fn start_order(units: &[Unit]) -> Result<Vec<String>, Vec<String>> {
    let edges = ordering_edges(units);
    let mut indegree: BTreeMap<&str, usize> = edges.keys().map(|k| (*k, 0)).collect();
    for targets in edges.values() {
        for t in targets {
            *indegree.entry(t).or_default() += 1;
        }
    }
    let mut ready: BTreeSet<&str> = indegree.iter().filter(|(_, d)| **d == 0).map(|(n, _)| *n).collect();
    let mut order = Vec::with_capacity(indegree.len());
    while let Some(next) = ready.pop_first() {
        order.push(next.to_string());
        for t in edges.get(next).into_iter().flatten() {
            if let Some(d) = indegree.get_mut(t) {
                *d -= 1;
                if *d == 0 {
                    ready.insert(t);
                }
            }
        }
    }
    if order.len() == indegree.len() {
        Ok(order)
    } else {
        Err(find_cycle(units).unwrap_or_default())
    }
}

/// Checks a set of units as a whole: a reference to a unit outside the set is
/// a warning (as in systemd: the unit may be added later), and an ordering
/// cycle an error.
pub fn check_graph(units: &[Unit]) -> Vec<Diagnostic> {
    check_graph_with(units, &BTreeSet::new())
}

/// [`check_graph`] where a reference to `x@y` is satisfied by the template
/// `x@` in `templates` (its instances are made on demand).
pub fn check_graph_with(units: &[Unit], templates: &BTreeSet<String>) -> Vec<Diagnostic> {
    let names: BTreeSet<&str> = units.iter().map(|u| u.name.as_str()).collect();
    let exists = |d: &str| names.contains(d) || super::name::template_of(d).is_some_and(|t| templates.contains(t));
    let mut diags = Vec::new();
    for unit in units {
        let mut missing = |list: &[String], key: &str| {
            for d in list.iter().filter(|d| !exists(d)) {
                diags.push(Diagnostic {
                    path: unit.path.clone(),
                    line: 0,
                    severity: Severity::Warning,
                    message: format!("{key}={d}: no unit named '{d}' is loaded"),
                });
            }
        };
        missing(&unit.requires, "Requires");
        missing(&unit.wants, "Wants");
        for (key, list) in unit.relations.all() {
            // A conflict with a unit that does not exist is a conflict that never happens.
            if key != "Conflicts" {
                missing(list, key);
            }
        }
    }
    if let Some(cycle) = find_cycle(units) {
        let first = cycle.first().and_then(|n| units.iter().find(|u| &u.name == n));
        let mut shown = cycle.clone();
        shown.extend(cycle.first().cloned());
        diags.push(Diagnostic {
            path: first.map(|u| u.path.clone()).unwrap_or_default(),
            line: 0,
            severity: Severity::Error,
            message: format!("ordering cycle: {} (each must start before the next)", shown.join(" -> ")),
        });
    }
    diags
}

/// One node of `aikore list-dependencies`: a unit and what it pulls in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DependencyNode {
    pub name: String,
    /// The key of the parent that names this unit (`Requires`, `Wants`, ...); empty at the root.
    pub via: &'static str,
    /// False when no unit of that name is loaded.
    pub loaded: bool,
    pub children: Vec<DependencyNode>,
}

/// The units `root` pulls in (Requires=, Requisite=, Wants=, BindsTo=,
/// Upholds=), recursively as `systemctl list-dependencies` shows them; a
/// unit already on the path is shown once more without its children.
pub fn dependency_tree(units: &[Unit], root: &str) -> Option<DependencyNode> {
    let by_name: BTreeMap<&str, &Unit> = units.iter().map(|u| (u.name.as_str(), u)).collect();
    by_name.get(root)?;
    let mut path = Vec::new();
    Some(node(&by_name, root, "", &mut path))
}

fn node<'a>(
    by_name: &BTreeMap<&str, &'a Unit>,
    name: &'a str,
    via: &'static str,
    path: &mut Vec<&'a str>,
) -> DependencyNode {
    let unit = by_name.get(name).copied();
    let mut children = Vec::new();
    if let Some(unit) = unit.filter(|_| !path.contains(&name)) {
        path.push(name);
        let r = &unit.relations;
        let edges: [(&'static str, &'a [String]); 5] = [
            ("Requires", &unit.requires),
            ("Requisite", &r.requisite),
            ("Wants", &unit.wants),
            ("BindsTo", &r.binds_to),
            ("Upholds", &r.upholds),
        ];
        for (key, list) in edges {
            for dep in list {
                children.push(node(by_name, dep.as_str(), key, path));
            }
        }
        path.pop();
    }
    DependencyNode { name: name.to_string(), via, loaded: unit.is_some(), children }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{ServiceConfig, UnitKind};
    use std::path::PathBuf;
    use std::time::Duration;

    fn unit(name: &str, after: &[&str], before: &[&str]) -> Unit {
        Unit {
            name: name.to_string(),
            kind: UnitKind::Service,
            path: PathBuf::from(format!("/u/{name}.service")),
            description: String::new(),
            documentation: Vec::new(),
            after: after.iter().map(|s| s.to_string()).collect(),
            before: before.iter().map(|s| s.to_string()).collect(),
            requires: Vec::new(),
            wants: Vec::new(),
            relations: Default::default(),
            install: Default::default(),
            starts_at_boot: true,
            template: None,
            aliases: Vec::new(),
            start_limit_interval: Duration::from_secs(10),
            start_limit_burst: 5,
            conditions: Vec::new(),
            checks: Default::default(),
            service: ServiceConfig::default(),
            instance: None,
        }
    }

    #[test]
    fn order_follows_after_and_before() {
        let units =
            [unit("web", &["db"], &[]), unit("db", &[], &[]), unit("cache", &[], &["web"]), unit("a", &[], &[])];
        assert_eq!(start_order(&units), Ok(vec!["a".into(), "cache".into(), "db".into(), "web".into()]));
        assert_eq!(find_cycle(&units), None);
    }

    #[test]
    fn ties_broken_by_name_and_missing_ignored() {
        let units = [unit("z", &["ghost"], &[]), unit("m", &[], &[]), unit("b", &["z"], &[])];
        assert_eq!(start_order(&units), Ok(vec!["m".into(), "z".into(), "b".into()]));
    }

    #[test]
    fn cycles() {
        let units = [unit("c", &["b"], &[]), unit("b", &["a"], &[]), unit("a", &["c"], &[]), unit("d", &["a"], &[])];
        let cycle = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(find_cycle(&units), Some(cycle.clone()));
        assert_eq!(start_order(&units), Err(cycle));

        // Before= makes the same cycle from the other side.
        let units = [unit("x", &[], &["y"]), unit("y", &["x"], &["x"])];
        assert_eq!(find_cycle(&units), Some(vec!["x".to_string(), "y".to_string()]));

        let units = [unit("self", &["self"], &[])];
        assert_eq!(find_cycle(&units), Some(vec!["self".to_string()]));
    }

    #[test]
    fn missing_references() {
        let mut a = unit("a", &[], &[]);
        a.requires = vec!["b".into(), "gone".into()];
        a.wants = vec!["maybe".into()];
        let units = [a, unit("b", &[], &[])];
        let diags = check_graph(&units);
        assert_eq!(diags.len(), 2);
        // As in systemd: a unit that does not exist (yet) is a warning, not an error.
        assert!(diags.iter().all(|d| d.severity == Severity::Warning), "{diags:?}");
        assert!(diags[0].message.contains("Requires=gone"));
        assert!(diags[1].message.contains("Wants=maybe"));
    }

    #[test]
    fn a_template_satisfies_references_to_its_instances() {
        let mut a = unit("a", &[], &[]);
        a.wants = vec!["getty@tty1".into(), "other@x".into()];
        a.relations.on_failure = vec!["notify@a".into()];
        a.relations.conflicts = vec!["nowhere".into()];
        let templates: BTreeSet<String> = ["getty@".to_string(), "notify@".to_string()].into();
        let diags = check_graph_with(&[a], &templates);
        let text: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(text, ["Wants=other@x: no unit named 'other@x' is loaded"]);
    }

    #[test]
    fn the_dependency_tree_follows_requires_and_wants_and_stops_at_cycles() {
        let mut web = unit("web", &[], &[]);
        web.requires = vec!["db".into()];
        web.wants = vec!["ghost".into()];
        let mut db = unit("db", &[], &[]);
        db.relations.binds_to = vec!["web".into()];
        let units = [web, db];
        let tree = dependency_tree(&units, "web").expect("web is loaded");
        assert_eq!(tree.children.len(), 2);
        assert_eq!((tree.children[0].name.as_str(), tree.children[0].via), ("db", "Requires"));
        assert_eq!(tree.children[0].children[0].name, "web");
        assert!(tree.children[0].children[0].children.is_empty(), "a cycle ends the branch");
        assert!(!tree.children[1].loaded);
        assert!(dependency_tree(&units, "nope").is_none());
    }

    #[test]
    fn long_chain_does_not_overflow() {
        let names: Vec<String> = (0..20_000).map(|i| format!("u{i:05}")).collect();
        let units: Vec<Unit> = names
            .iter()
            .enumerate()
            .map(|(i, n)| if i == 0 { unit(n, &[], &[]) } else { unit(n, &[names[i - 1].as_str()], &[]) })
            .collect();
        assert_eq!(find_cycle(&units), None);
        assert_eq!(start_order(&units).map(|o| o.len()), Ok(20_000));
    }
}
