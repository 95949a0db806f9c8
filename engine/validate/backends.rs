//! The backends a workflow names (`unknown-backend`), its rollout flag
//! (`unknown-flag`), and whether those backends can run its `celery:` tasks
//! (`backend-action`).

use super::context::Rules;
use crate::diag::{Code, Diagnostic, did_you_mean};
use crate::spec::node::{Node, NodeKind};

impl Rules<'_> {
    pub(super) fn backend(&mut self) {
        let Some(backends) = self.backends else { return };
        let Some(b) = self.root.get("backend") else { return };
        let mut named: Vec<(String, &str)> = Vec::new();
        match b {
            Node { kind: NodeKind::Str(s), .. } => named.push(("/backend".into(), s)),
            m @ Node { kind: NodeKind::Map(_), .. } => {
                for k in ["enabled", "disabled", "default"] {
                    if let Some(s) = m.get(k).and_then(Node::as_str) {
                        named.push((format!("/backend/{k}"), s));
                    }
                }
                if let Some(vs) = m.get("variants").and_then(Node::as_map) {
                    for (k, v) in vs {
                        let k = &k.name;
                        if let Some(s) = v.as_str() {
                            named.push((format!("/backend/variants/{}", crate::spec::node::pointer_seg(k)), s));
                        }
                    }
                }
            }
            _ => {}
        }
        for (ptr, name) in named {
            if !backends.iter().any(|b| b == name) {
                let mut d = Diagnostic::new(Code::UnknownBackend, self.file, self.root.span_at(&ptr), format!("unknown backend `{name}`"));
                d = match did_you_mean(name, backends.iter().map(String::as_str)) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!("configured backends: {}", backends.join(", "))),
                };
                self.push(d);
            }
        }
    }

    /// `unknown-flag`: a rollout rule's flag that the configured features
    /// file does not define.
    pub(super) fn flag(&mut self) {
        let Some(flags) = self.flags else { return };
        let Some(key) = self.root.pointer("/backend/flag").and_then(Node::as_str) else { return };
        if flags.keys.iter().any(|k| k == key) {
            return;
        }
        let mut d = Diagnostic::new(
            Code::UnknownFlag,
            self.file,
            self.root.span_at("/backend/flag"),
            format!(
                "flag `{key}` is not defined in {} (namespace `{}`), so every run goes to the rule's default backend",
                flags.source, flags.namespace
            ),
        );
        let keys = flags.keys.iter().map(String::as_str);
        d = match did_you_mean(key, keys.clone()) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None if flags.keys.is_empty() => d.with_help("the file defines no flags"),
            None => d.with_help(format!("defined flags: {}", keys.collect::<Vec<_>>().join(", "))),
        };
        self.push(d);
    }

    /// `backend-action`: `celery:` tasks in a workflow that may run on a
    /// backend of another kind.
    pub(super) fn backend_action(&mut self, tasks: &[Node], celery_tasks: &[usize]) {
        let Some((kinds, default)) = self.kinds else { return };
        if celery_tasks.is_empty() {
            return;
        }
        // The backends a run may land on, and how the workflow names them.
        let backend = self.root.get("backend");
        let (candidates, how): (Vec<&str>, &str) = match backend.map(|b| (b, &b.kind)) {
            None | Some((_, NodeKind::Null)) => (vec![default], "runs on the default backend"),
            Some((_, NodeKind::Str(b))) => (vec![b.as_str()], "runs on backend"),
            Some((rule, NodeKind::Map(_))) => {
                let mut c: Vec<&str> = ["enabled", "disabled"].iter().filter_map(|k| rule.get(k).and_then(Node::as_str)).collect();
                if let Some(vs) = rule.get("variants").and_then(Node::as_map) {
                    c.extend(vs.iter().filter_map(|(_, v)| v.as_str()));
                }
                // When the flag does not decide, the rule's default, else the configured one.
                c.push(rule.get("default").and_then(Node::as_str).unwrap_or(default));
                (c, "may run on backend")
            }
            Some(_) => return,
        };
        let mut bad: Vec<(&str, &str)> = Vec::new();
        for b in candidates {
            if let Some(k) = kinds.get(b).filter(|k| *k != "celery")
                && !bad.iter().any(|(n, _)| *n == b)
            {
                bad.push((b, k));
            }
        }
        if bad.is_empty() {
            return;
        }
        let on = bad.iter().map(|(n, k)| format!("`{n}` (kind `{k}`)")).collect::<Vec<_>>().join(" and ");
        let celery: Vec<&str> = kinds.iter().filter(|(_, k)| *k == "celery").map(|(n, _)| n.as_str()).collect();
        let help = match celery.first() {
            Some(c) => format!("only a backend of kind `celery` runs `celery:` tasks: set `backend: {c}`, or move the task to a workflow that runs there"),
            None => "only a backend of kind `celery` runs `celery:` tasks: configure one in taskweave.toml (`[backends.NAME] kind = \"celery\"`) and set `backend:` to it".to_string(),
        };
        for &i in celery_tasks {
            let name = tasks[i].get("name").and_then(Node::as_str).unwrap_or("?");
            self.push(
                Diagnostic::new(
                    Code::BackendAction,
                    self.file,
                    self.root.key_span_at(&format!("{}/celery", self.task_ptr(i))),
                    format!("task `{name}` is a `celery:` task, but the workflow {how} {on}, which cannot run it"),
                )
                .with_help(help.clone()),
            );
        }
    }
}
