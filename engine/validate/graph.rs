//! The task graph: unique names (`duplicate-task`), parents that resolve
//! (`self-parent`, `unknown-parent`), no cycles (`cycle`); and the
//! topological order and ancestry that the template rules ask about.

use super::context::Rules;
use super::suggest::Pool;
use crate::diag::{Code, Diagnostic};
use crate::spec::node::Node;
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::{HashMap, HashSet};

impl Rules<'_> {
    /// `duplicate-task`: the index of each task name's first definition.
    pub(super) fn names<'t>(&mut self, tasks: &'t [Node]) -> HashMap<&'t str, usize> {
        let mut ids: HashMap<&str, usize> = HashMap::with_capacity(tasks.len());
        for (i, t) in tasks.iter().enumerate() {
            let Some(name) = t.get("name").and_then(Node::as_str) else { continue };
            if let Some(&first) = ids.get(name) {
                let fs = self.root.span_at(&format!("{}/name", self.task_ptr(first)));
                self.push(
                    Diagnostic::new(
                        Code::DuplicateTask,
                        self.file,
                        self.root.span_at(&format!("{}/name", self.task_ptr(i))),
                        format!("duplicate task name `{name}`"),
                    )
                    .with_help(format!("`{name}` is first defined at line {}, column {}", fs.start.line, fs.start.column)),
                );
            } else {
                ids.insert(name, i);
            }
        }
        ids
    }

    /// `self-parent` and `unknown-parent`; the parent links that resolve go
    /// into `parents_of` and `graph`.
    pub(super) fn parents(
        &mut self,
        i: usize,
        t: &Node,
        name: &str,
        ids: &HashMap<&str, usize>,
        parents_of: &mut [Vec<usize>],
        graph: &mut DiGraph<usize, ()>,
    ) {
        if let Some(ps) = t.get("parents").and_then(Node::as_seq) {
            for (j, p) in ps.iter().enumerate() {
                let Some(p) = p.as_str() else { continue };
                let ptr = format!("{}/parents/{j}", self.task_ptr(i));
                if p == name {
                    self.push(Diagnostic::new(
                        Code::SelfParent,
                        self.file,
                        self.root.span_at(&ptr),
                        format!("task `{name}` lists itself as a parent"),
                    ));
                } else if let Some(&pid) = ids.get(p)
                    && self.phase_of(pid) != self.phase_of(i)
                {
                    let (mine, theirs) = (self.phase_of(i).key(), self.phase_of(pid).key());
                    self.push(
                        Diagnostic::new(
                            Code::UnknownParent,
                            self.file,
                            self.root.span_at(&ptr),
                            format!("parent `{p}` of `{name}` is in `{theirs}`, not in `{mine}`"),
                        )
                        .with_help(format!(
                            "the parents of a task are in its own list; `{mine}` tasks start once every task before them is final, and read any task's `status` and `output`"
                        )),
                    );
                } else if let Some(&pid) = ids.get(p) {
                    if !parents_of[i].contains(&pid) {
                        parents_of[i].push(pid);
                        graph.add_edge(NodeIndex::new(pid), NodeIndex::new(i), ());
                    }
                } else {
                    let d = Diagnostic::new(
                        Code::UnknownParent,
                        self.file,
                        self.root.span_at(&ptr),
                        format!("unknown parent `{p}` of task `{name}`"),
                    );
                    self.push_suggesting(d, p, Pool::Tasks { except: Some(name.to_string()) });
                }
            }
        }
    }

    /// One `cycle` diagnostic per strongly connected component: the
    /// shortest cycle through its first task (in file order), listed in
    /// execution order from that task, reported at the parent link that
    /// closes it (in the first task's `parents`).
    pub(super) fn cycles(&mut self, graph: &DiGraph<usize, ()>, tasks: &[Node]) {
        let name = |i: usize| tasks[i].get("name").and_then(Node::as_str).unwrap_or("?").to_string();
        // Kosaraju's, not Tarjan's: petgraph's Tarjan recurses once per task
        // of a chain, and a long chain would overflow the stack.
        let mut sccs = petgraph::algo::kosaraju_scc(graph);
        sccs.retain(|c| c.len() > 1);
        sccs.sort_by_key(|c| c.iter().map(|n| n.index()).min());
        for scc in sccs {
            let members: HashSet<usize> = scc.iter().map(|n| n.index()).collect();
            let Some(&start) = members.iter().min() else { continue };
            // Breadth-first along parent -> child edges, inside the component,
            // until an edge leads back to `start`.
            let mut came_from: HashMap<usize, usize> = HashMap::new();
            let mut queue = std::collections::VecDeque::from([start]);
            let mut last = None;
            'search: while let Some(cur) = queue.pop_front() {
                for child in graph.neighbors_directed(NodeIndex::new(cur), petgraph::Direction::Outgoing) {
                    let child = child.index();
                    if child == start {
                        last = Some(cur);
                        break 'search;
                    }
                    if members.contains(&child) && !came_from.contains_key(&child) {
                        came_from.insert(child, cur);
                        queue.push_back(child);
                    }
                }
            }
            let Some(last) = last else { continue };
            let mut path = vec![last];
            while let Some(&prev) = came_from.get(path.last().unwrap_or(&start)) {
                path.push(prev);
            }
            if path.last() != Some(&start) {
                path.push(start);
            }
            path.reverse();
            let mut names: Vec<String> = path.iter().map(|&i| name(i)).collect();
            names.push(names[0].clone());
            let closing = name(last);
            let ptr = tasks[start]
                .get("parents")
                .and_then(Node::as_seq)
                .and_then(|ps| ps.iter().position(|p| p.as_str() == Some(closing.as_str())))
                .map_or_else(|| format!("{}/name", self.task_ptr(start)), |j| format!("{}/parents/{j}", self.task_ptr(start)));
            self.push(
                Diagnostic::new(
                    Code::Cycle,
                    self.file,
                    self.root.span_at(&ptr),
                    format!("the parents form a cycle: {}", names.join(" -> ")),
                )
                .with_help("remove one of these parent links"),
            );
        }
    }
}

/// "Is X an ancestor of T?" for many pairs, without building every task's
/// ancestor set (quadratic on long chains, and templates commonly read the
/// first task from everywhere).
///
/// [`Reach::quick`] walks up the parents of T for a few steps, skipping tasks
/// placed before X in a topological order (they cannot descend from X):
/// templates mostly read a parent or a near ancestor, which this settles.
/// [`Reach::batch`] answers the rest exactly, 64 targets per pass over the
/// tasks in topological order with one bit per target, so the cost is
/// `O(targets / 64 * (tasks + parent links))` even for hostile files.
///
/// Tasks in or behind a cycle have no position; the cycle is reported, so
/// their references are not judged (and nothing in a cycle is an ancestor of
/// a task outside it).
pub(super) struct Reach<'a> {
    parents_of: &'a [Vec<usize>],
    /// Each task's position in a topological order; `NONE` in or behind a cycle.
    position: Vec<usize>,
    /// The positioned tasks in topological order.
    order: Vec<usize>,
    /// Visit stamps, so the buffer needs no clearing between walks.
    seen: Vec<u32>,
    stamp: u32,
    stack: Vec<usize>,
}

const NONE: usize = usize::MAX;
/// Steps of a quick walk before the question is left to [`Reach::batch`].
const QUICK_STEPS: usize = 64;

impl<'a> Reach<'a> {
    pub(super) fn new(parents_of: &'a [Vec<usize>], (position, order): (Vec<usize>, Vec<usize>)) -> Self {
        Reach { parents_of, position, order, seen: vec![0; parents_of.len()], stamp: 0, stack: Vec::new() }
    }

    /// The tasks outside cycles, in topological order.
    pub(super) fn order(&self) -> &[usize] {
        &self.order
    }

    /// Settle "is `x` an ancestor of `task`" with a short walk, when it can.
    pub(super) fn quick(&mut self, x: usize, task: usize) -> Option<bool> {
        let (px, pt) = (self.position[x], self.position[task]);
        if pt == NONE {
            return Some(true);
        }
        if px == NONE || px >= pt {
            return Some(false);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.seen.fill(0);
            self.stamp = 1;
        }
        self.stack.clear();
        self.stack.extend(self.parents_of[task].iter().copied());
        let mut steps = 0;
        while let Some(p) = self.stack.pop() {
            if p == x {
                return Some(true);
            }
            if self.seen[p] == self.stamp || self.position[p] < px {
                continue;
            }
            steps += 1;
            if steps > QUICK_STEPS {
                return None;
            }
            self.seen[p] = self.stamp;
            self.stack.extend(self.parents_of[p].iter().copied());
        }
        Some(false)
    }

    /// Answer many `(x, task)` questions exactly; see the type's docs.
    pub(super) fn batch(&self, queries: &[(usize, usize)]) -> Vec<bool> {
        let mut answers = vec![false; queries.len()];
        let mut targets: Vec<usize> = queries.iter().map(|&(x, _)| x).collect();
        targets.sort_unstable();
        targets.dedup();
        let n = self.parents_of.len();
        let mut bit_of = vec![NONE; n];
        let mut reach = vec![0u64; n];
        for chunk in targets.chunks(64) {
            for (b, &x) in chunk.iter().enumerate() {
                bit_of[x] = b;
            }
            // reach[t]: the bits of the chunk's targets among t and its ancestors.
            for &t in &self.order {
                let mut m = if bit_of[t] == NONE { 0 } else { 1u64 << bit_of[t] };
                for &p in &self.parents_of[t] {
                    m |= reach[p];
                }
                reach[t] = m;
            }
            for (i, &(x, t)) in queries.iter().enumerate() {
                if bit_of[x] != NONE && x != t {
                    answers[i] = (reach[t] >> bit_of[x]) & 1 == 1;
                }
            }
            for &x in chunk {
                bit_of[x] = NONE;
            }
        }
        answers
    }
}

/// Kahn's algorithm over the parent lists: each task's position in a
/// topological order (`NONE` for tasks in or behind a cycle), and the
/// positioned tasks in that order.
pub(super) fn topological_positions(parents_of: &[Vec<usize>]) -> (Vec<usize>, Vec<usize>) {
    let n = parents_of.len();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut waiting: Vec<usize> = vec![0; n];
    for (t, ps) in parents_of.iter().enumerate() {
        waiting[t] = ps.len();
        for &p in ps {
            children[p].push(t);
        }
    }
    let mut ready: Vec<usize> = (0..n).rev().filter(|&t| waiting[t] == 0).collect();
    let mut position = vec![NONE; n];
    let mut order = Vec::with_capacity(n);
    while let Some(t) = ready.pop() {
        position[t] = order.len();
        order.push(t);
        for &c in &children[t] {
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.push(c);
            }
        }
    }
    (position, order)
}
