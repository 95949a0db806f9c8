//! `when:` conditions: CEL that parses (`expression`), reads only what
//! exists when the task starts (`template-ref`: variables, ancestors by
//! name, `tasks["a-b"]` for names with `-`), and tasks a literal `false`
//! condition leaves with no way to start (`unreachable`).

use super::context::Rules;
use super::graph::Reach;
use super::suggest::Pool;
use crate::diag::{Code, Diagnostic, Span, did_you_mean};
use crate::plan::Trigger;
use crate::plan::cond::{Condition, VARIABLES};
use crate::spec::node::Node;
use std::collections::HashMap;

impl Rules<'_> {
    pub(super) fn conditions(&mut self, tasks: &[Node], ids: &HashMap<&str, usize>, reach: &mut Reach) {
        for (i, t) in tasks.iter().enumerate() {
            let Some(node) = t.get("when") else { continue };
            let Some(src) = node.as_str() else { continue };
            let node_span = node.span;
            // The span of `len` characters of the expression from byte `at`,
            // found in the source by the text that starts there.
            let at = |me: &Self, at: usize, len: usize| -> Span {
                let line_end = src[at..].find('\n').map_or(src.len(), |n| at + n);
                let needle: String = src[at..line_end].chars().take(40).collect();
                let found = if needle.is_empty() { None } else { me.locate(node_span, &needle) };
                match found {
                    Some(s) => Span::new(s.start.line, s.start.column, s.start.line, s.start.column + len.max(1) as u32),
                    None => node_span,
                }
            };
            let c = match Condition::compile(src) {
                Ok(c) => c,
                Err(e) => {
                    // At the end of the text: point at its last character.
                    let offset = if e.offset >= src.len() { src.char_indices().last().map_or(0, |(b, _)| b) } else { e.offset };
                    let span = at(self, offset, 1);
                    self.push(
                        Diagnostic::new(Code::Expression, self.file, span, format!("invalid condition: {}", e.message))
                            .with_help("conditions are CEL and return a bool, e.g. `size(tasks.split.output.pages) > 0`"),
                    );
                    continue;
                }
            };
            let refs = c.refs();
            // `tasks.extract-text`: CEL reads `tasks.extract - text`.
            let mut dashed: Vec<std::ops::Range<usize>> = Vec::new();
            for r in &refs.tasks {
                if ids.contains_key(r.name.as_str()) {
                    continue;
                }
                let from = r.range.start + "tasks.".len();
                if !src[r.range.start..].starts_with("tasks.") {
                    continue;
                }
                let len = src[from..].find(|ch: char| !(ch.is_ascii_alphanumeric() || "._-".contains(ch))).unwrap_or(src.len() - from);
                let spelled = src[from..from + len].trim_end_matches('.');
                // The longest task name the spelling starts with, up to a `.`.
                let name = spelled
                    .match_indices('.')
                    .map(|(k, _)| &spelled[..k])
                    .chain(std::iter::once(spelled))
                    .rfind(|n| n.contains('-') && ids.contains_key(n));
                if let Some(name) = name {
                    dashed.push(from..from + name.len());
                    let span = at(self, r.range.start, "tasks.".len() + name.len());
                    self.push(
                        Diagnostic::new(
                            Code::TemplateRef,
                            self.file,
                            span,
                            format!("condition reads `tasks.{name}`, which CEL takes for `tasks.{}` minus a variable", &r.name),
                        )
                        .with_help(format!("write `tasks[\"{name}\"]`: a task name with `-` is read with brackets")),
                    );
                }
            }
            let in_dashed = |at: usize| dashed.iter().any(|d| d.contains(&at));
            for (name, offset) in &refs.unknown {
                if in_dashed(*offset) {
                    continue;
                }
                let d = Diagnostic::new(
                    Code::TemplateRef,
                    self.file,
                    at(self, *offset, name.chars().count()),
                    format!("condition reads `{name}`, which is not a variable"),
                );
                let list = "the variables are input, tasks, run, workflow and context";
                self.push(match did_you_mean(name, VARIABLES.iter().copied()) {
                    Some(s) => d.with_help(format!("did you mean `{s}`? {list}")),
                    None => d.with_help(list),
                });
            }
            for &offset in &refs.whole_tasks {
                self.push(
                    Diagnostic::new(Code::TemplateRef, self.file, at(self, offset, 5), "a condition reads tasks by name only")
                        .with_help("write `tasks.NAME.output` or `tasks[\"NAME\"].status`, naming an ancestor"),
                );
            }
            let mut deferred = Vec::new();
            for r in &refs.tasks {
                let text = &src[r.range.clone()];
                let span = at(self, r.range.start, text.chars().count());
                let Some(&target) = ids.get(r.name.as_str()) else {
                    if dashed.iter().any(|d| d.start == r.range.start + "tasks.".len()) {
                        continue;
                    }
                    let d = Diagnostic::new(
                        Code::TemplateRef,
                        self.file,
                        span,
                        format!("condition reads `{text}`, but there is no task `{}`", r.name),
                    );
                    self.push_suggesting(d, &r.name, Pool::Tasks { except: None });
                    continue;
                };
                let raw = match &r.field {
                    Some(f) => format!("tasks.{}.{f}", r.name),
                    None => format!("tasks.{}", r.name),
                };
                let earlier = self.phase_of(target) < self.phase_of(i);
                match if earlier { Some(true) } else { reach.quick(target, i) } {
                    Some(ancestor) => self.task_ref(ancestor, &|_| span, &raw, tasks, target, i, r.field.as_deref()),
                    None => deferred.push((target, span, raw, r.field.clone())),
                }
            }
            if !deferred.is_empty() {
                let answers = reach.batch(&deferred.iter().map(|(x, ..)| (*x, i)).collect::<Vec<_>>());
                for ((target, span, raw, field), ancestor) in deferred.into_iter().zip(answers) {
                    self.task_ref(ancestor, &|_| span, &raw, tasks, target, i, field.as_deref());
                }
            }
        }
    }

    /// `unreachable`: tasks whose trigger needs a parent to succeed that
    /// never can (a literal `false` condition, or unreachable itself).
    pub(super) fn unreachable(&mut self, tasks: &[Node], parents_of: &[Vec<usize>], reach: &Reach) {
        if !tasks.iter().any(|t| t.get("when").is_some()) {
            return;
        }
        let mut never = vec![false; tasks.len()];
        for &i in reach.order() {
            let t = &tasks[i];
            if t.get("when").and_then(Node::as_str).is_some_and(|w| w.trim() == "false") {
                never[i] = true;
                continue;
            }
            let trigger = t
                .get("trigger")
                .and_then(Node::as_str)
                .map_or(Some(Trigger::AllSuccess), |s| Trigger::ALL.iter().copied().find(|x| x.as_str() == s));
            let ps = &parents_of[i];
            let blocker = match trigger {
                Some(Trigger::AllSuccess) => ps.iter().copied().find(|&p| never[p]),
                Some(Trigger::OneSuccess) if !ps.is_empty() && ps.iter().all(|&p| never[p]) => ps.first().copied(),
                _ => None,
            };
            let Some(p) = blocker else { continue };
            never[i] = true;
            let name = |k: usize| tasks[k].get("name").and_then(Node::as_str).unwrap_or("?").to_string();
            let (me, parent) = (name(i), name(p));
            let span = t.get("name").map_or(t.span, |n| n.span);
            let why = if tasks[p].get("when").and_then(Node::as_str).is_some_and(|w| w.trim() == "false") {
                format!("its condition is `false`, so `{parent}` is always skipped")
            } else {
                format!("`{parent}` can never start either")
            };
            self.push(
                Diagnostic::new(
                    Code::Unreachable,
                    self.file,
                    span,
                    format!("task `{me}` can never start: it needs `{parent}` to succeed, and {why}"),
                )
                .with_help(format!(
                    "give `{me}` a trigger that accepts a skipped parent (`trigger: none_failed`), or change the condition of `{parent}`"
                )),
            );
        }
    }
}
