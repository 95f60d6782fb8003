//! The node graph: cycles, islands, topological order, and DOT / Mermaid rendering.
//!
//! Nodes are indices (in name order, so index order is name order); an [`Edge`] goes from a
//! dependency to the node that lists it in `after`, the direction work flows.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt::Write;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::unionfind::UnionFind;

use crate::{RoundRule, Workflow};

/// A dependency edge: `from` finishes before `to` starts (within a round).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Edge {
    pub from: usize,
    pub to: usize,
}

/// One cycle per strongly connected component with more than one node, as the node list
/// `[a, b, ..]` of the shortest cycle `a → b → .. → a` through the component's first node.
pub(crate) fn cycles(n: usize, edges: &[Edge]) -> Vec<Vec<usize>> {
    let mut g: DiGraph<(), ()> = DiGraph::with_capacity(n, edges.len());
    for _ in 0..n {
        g.add_node(());
    }
    for e in edges {
        g.add_edge(NodeIndex::new(e.from), NodeIndex::new(e.to), ());
    }
    let mut found: Vec<Vec<usize>> = petgraph::algo::tarjan_scc(&g)
        .into_iter()
        .filter(|scc| scc.len() > 1)
        .map(|scc| {
            let members: Vec<usize> = scc.iter().map(|i| i.index()).collect();
            shortest_cycle_through(*members.iter().min().expect("non-empty"), &members, edges)
        })
        .collect();
    found.sort();
    found
}

/// Breadth-first from `start` within `members` back to `start`.
fn shortest_cycle_through(start: usize, members: &[usize], edges: &[Edge]) -> Vec<usize> {
    let mut next: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for e in edges {
        if members.contains(&e.from) && members.contains(&e.to) {
            next.entry(e.from).or_default().push(e.to);
        }
    }
    for v in next.values_mut() {
        v.sort_unstable();
    }
    let mut parent: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(u) = queue.pop_front() {
        for &v in next.get(&u).map(Vec::as_slice).unwrap_or(&[]) {
            if v == start {
                let mut path = vec![u];
                let mut at = u;
                while at != start {
                    at = parent[&at];
                    path.push(at);
                }
                path.reverse();
                return path;
            }
            if v != start && !parent.contains_key(&v) {
                parent.insert(v, u);
                queue.push_back(v);
            }
        }
    }
    vec![start]
}

/// Nodes outside the main weakly connected component (the largest; ties: the one whose first
/// node comes first in the file, by `file_order`).
pub(crate) fn islands(n: usize, edges: &[Edge], file_order: &[usize]) -> Vec<usize> {
    let mut uf = UnionFind::<usize>::new(n);
    for e in edges {
        uf.union(e.from, e.to);
    }
    let mut components: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..n {
        components.entry(uf.find(i)).or_default().push(i);
    }
    if components.len() <= 1 {
        return Vec::new();
    }
    let first_in_file = |c: &Vec<usize>| c.iter().map(|&i| file_order[i]).min().unwrap_or(0);
    let main = components
        .values()
        .max_by_key(|c| (c.len(), Reverse(first_in_file(c))))
        .expect("at least one component")
        .clone();
    let mut out: Vec<usize> = (0..n).filter(|i| !main.contains(i)).collect();
    out.sort_unstable();
    out
}

/// Kahn's algorithm; among ready nodes the lowest index (first name) goes first.
pub(crate) fn topological_order(n: usize, edges: &[Edge]) -> Vec<usize> {
    let mut indegree = vec![0usize; n];
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); n];
    for e in edges {
        indegree[e.to] += 1;
        next[e.from].push(e.to);
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| indegree[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(u)) = ready.pop() {
        order.push(u);
        for &v in &next[u] {
            indegree[v] -= 1;
            if indegree[v] == 0 {
                ready.push(Reverse(v));
            }
        }
    }
    order
}

/// A short note on when a node runs, for graph labels; empty for `every`.
fn rounds_note(rule: RoundRule) -> &'static str {
    match rule {
        RoundRule::Every => "",
        RoundRule::First => "round 1 only",
        RoundRule::AfterFirst => "rounds 2+",
    }
}

/// The one-line summary shown as the graph's title.
fn title(w: &Workflow) -> String {
    let mut t = format!(
        "{}: up to {} round{}",
        w.name,
        w.max_rounds,
        if w.max_rounds == 1 { "" } else { "s" }
    );
    if let Some(stop) = &w.stop_when {
        let _ = write!(t, ", stop when {} ≥ {}", stop.kind, stop.min_confidence);
    }
    t
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub(crate) fn to_dot(w: &Workflow) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", dot_escape(&w.name));
    let _ = writeln!(
        out,
        "  graph [rankdir=LR, labelloc=t, label=\"{}\"];",
        dot_escape(&title(w))
    );
    out.push_str("  node [shape=box, style=rounded];\n");
    for n in &w.nodes {
        let mut label = format!(
            "{}\\n{} · {}",
            dot_escape(&n.name),
            dot_escape(&n.role),
            dot_escape(&n.stage)
        );
        let note = rounds_note(n.rounds);
        if !note.is_empty() {
            let _ = write!(label, "\\n{note}");
        }
        let _ = writeln!(out, "  \"{}\" [label=\"{label}\"];", dot_escape(&n.name));
    }
    for n in &w.nodes {
        for dep in &n.after {
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\";",
                dot_escape(dep),
                dot_escape(&n.name)
            );
        }
    }
    out.push_str("}\n");
    out
}

fn mermaid_escape(s: &str) -> String {
    s.replace('"', "#quot;")
}

pub(crate) fn to_mermaid(w: &Workflow) -> String {
    // Node names are identifiers, which Mermaid takes as ids, except its keywords.
    const KEYWORDS: [&str; 9] = [
        "end",
        "graph",
        "flowchart",
        "subgraph",
        "style",
        "class",
        "classDef",
        "click",
        "linkStyle",
    ];
    let mut ids: BTreeMap<&str, String> = BTreeMap::new();
    for n in &w.nodes {
        let mut id = n.name.clone();
        while KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(&id))
            || w.nodes.iter().any(|m| m.name == id && m.name != n.name)
        {
            id.push('_');
        }
        ids.insert(&n.name, id);
    }
    let mut out = String::new();
    let _ = writeln!(out, "---\ntitle: \"{}\"\n---", mermaid_escape(&title(w)));
    out.push_str("flowchart LR\n");
    for n in &w.nodes {
        let mut label = format!(
            "{}<br/>{} · {}",
            mermaid_escape(&n.name),
            mermaid_escape(&n.role),
            mermaid_escape(&n.stage)
        );
        let note = rounds_note(n.rounds);
        if !note.is_empty() {
            let _ = write!(label, "<br/>{note}");
        }
        let _ = writeln!(out, "  {}[\"{label}\"]", ids[n.name.as_str()]);
    }
    for n in &w.nodes {
        for dep in &n.after {
            let _ = writeln!(out, "  {} --> {}", ids[dep.as_str()], ids[n.name.as_str()]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(from: usize, to: usize) -> Edge {
        Edge { from, to }
    }

    #[test]
    fn finds_the_shortest_cycle_from_the_first_node() {
        // 0 → 1 → 2 → 0 and 1 → 0: the shortest through 0 is 0 → 1 → 0.
        let c = cycles(4, &[e(0, 1), e(1, 2), e(2, 0), e(1, 0), e(2, 3)]);
        assert_eq!(c, vec![vec![0, 1]]);
        let c = cycles(3, &[e(0, 1), e(1, 2), e(2, 0)]);
        assert_eq!(c, vec![vec![0, 1, 2]]);
        assert!(cycles(3, &[e(0, 1), e(1, 2)]).is_empty());
    }

    #[test]
    fn islands_are_the_nodes_outside_the_largest_component() {
        assert_eq!(islands(4, &[e(0, 1), e(1, 2)], &[0, 1, 2, 3]), vec![3]);
        assert!(islands(3, &[e(0, 1), e(2, 1)], &[0, 1, 2]).is_empty());
        // Two components of one node each: the first in the file is the main one.
        assert_eq!(islands(2, &[], &[50, 10]), vec![0]);
    }

    #[test]
    fn topological_order_breaks_ties_by_index() {
        // 3 → 1, 3 → 0, 2 free: ready {2, 3} → 2, 3, then {0, 1} → 0, 1.
        assert_eq!(topological_order(4, &[e(3, 1), e(3, 0)]), vec![2, 3, 0, 1]);
    }
}
