//! The semantic rules of the spec language, beyond the schema: unique task
//! names, parents that resolve, no cycles, one action per task, durations,
//! templates and what they may read, timeouts, backends.
//!
//! The rules read the untyped document so they still report everything when
//! another part of the file breaks the schema.
//!
//! This file runs them, in the order their findings are reported; each
//! concern has its file: `graph.rs` (names, parents, cycles), `actions.rs`
//! (one action per task, handlers, URLs), `durations.rs` (durations and
//! timeouts), `backends.rs` (backends, the rollout flag, backends that
//! cannot run a task), `templates.rs` (templates and what they read),
//! `conditions.rs` (`when:` conditions, and tasks they make unreachable).
//! `context.rs` holds the state of a check and places findings in the
//! source; `suggest.rs` adds "did you mean" help to the findings shown.

use super::context::Rules;
use super::graph::{Reach, topological_positions};
use super::suggest::Pending;
use crate::spec::node::Node;
use petgraph::graph::DiGraph;
use std::borrow::Cow;

impl Rules<'_> {
    /// Check the document; the help left for later comes back (see [`suggest`](super::suggest::suggest)).
    pub fn check(mut self) -> Pending {
        self.check_all();
        self.pending
    }

    fn check_all(&mut self) {
        let v = self.root;
        let wf_timeout = self.duration("/timeout");
        let default_timeout = self.duration("/defaults/timeout");
        self.duration("/defaults/retry/delay");
        self.duration("/defaults/retry/max_delay");
        self.backend();
        self.flag();

        let Some(main) = v.get("tasks").and_then(Node::as_seq) else { return };
        // The handler lists are checked with the tasks, numbered after them.
        let on_failure = v.get("on_failure").and_then(Node::as_seq).unwrap_or_default();
        let finally = v.get("finally").and_then(Node::as_seq).unwrap_or_default();
        self.split = (main.len(), main.len() + on_failure.len());
        let all: Cow<[Node]> = if on_failure.is_empty() && finally.is_empty() {
            Cow::Borrowed(main)
        } else {
            Cow::Owned(main.iter().chain(on_failure).chain(finally).cloned().collect())
        };
        let tasks: &[Node] = &all;
        let ids = self.names(tasks);
        // Parents, actions, durations.
        let mut graph: DiGraph<usize, ()> = DiGraph::with_capacity(tasks.len(), tasks.len());
        for i in 0..tasks.len() {
            graph.add_node(i);
        }
        let mut parents_of: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
        // The `celery:` tasks, for `backend-action`.
        let mut celery_tasks = Vec::new();
        for (i, t) in tasks.iter().enumerate() {
            let name = t.get("name").and_then(Node::as_str).unwrap_or("");
            self.parents(i, t, name, &ids, &mut parents_of, &mut graph);
            self.action(i, t, name);
            if let Some(u) = t.get("uses").and_then(Node::as_str) {
                self.uses(i, t, name, u);
            }
            if let Some(url) = t.get("http").and_then(|h| h.get("url")).and_then(Node::as_str) {
                self.url(i, url);
            }
            if t.get("celery").is_some_and(Node::is_map) {
                celery_tasks.push(i);
            }
            self.task_durations(i, t, name, wf_timeout, default_timeout);
        }
        self.backend_action(tasks, &celery_tasks);
        let position = topological_positions(&parents_of);
        if position.1.len() < tasks.len() {
            self.cycles(&graph, tasks);
        }
        let mut reach = Reach::new(&parents_of, position);
        self.templates(tasks, &ids, &mut reach);
        self.conditions(tasks, &ids, &mut reach);
        self.unreachable(tasks, &parents_of, &reach);
    }
}
