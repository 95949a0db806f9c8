//! A task's action: exactly one (`action`), the handler a `uses:` task
//! names and its arguments (`unknown-handler`, `handler-args`), the URL of
//! an `http:` task (`url`).

use super::context::Rules;
use super::handlers::check_with;
use crate::diag::{Code, Diagnostic, did_you_mean};
use crate::plan::template;
use crate::spec::node::Node;

pub const ACTIONS: [&str; 5] = ["run", "shell", "http", "celery", "uses"];

impl Rules<'_> {
    /// `action`: a task has exactly one action; `with` only with `uses`.
    pub(super) fn action(&mut self, i: usize, t: &Node, name: &str) {
        if let Some(obj) = Some(t).filter(|t| t.is_map()) {
            let present: Vec<&str> = ACTIONS.iter().copied().filter(|a| obj.contains_key(a)).collect();
            if present.is_empty() {
                let d = Diagnostic::new(
                    Code::Action,
                    self.file,
                    self.root.span_at(&format!("{}/name", self.task_ptr(i))),
                    format!("task `{name}` has no action"),
                );
                let d = if obj.contains_key("with") {
                    d.with_help("`with` gives arguments to a handler: add `uses: NAME`")
                } else {
                    d.with_help("add one of `run`, `shell`, `http`, `celery` or `uses`")
                };
                self.push(d);
            } else if present.len() > 1 {
                let first = self.root.key_span_at(&format!("{}/{}", self.task_ptr(i), present[0]));
                for extra in &present[1..] {
                    self.push(
                        Diagnostic::new(
                            Code::Action,
                            self.file,
                            self.root.key_span_at(&format!("{}/{extra}", self.task_ptr(i))),
                            format!("task `{name}` has more than one action (`{}` and `{extra}`)", present[0]),
                        )
                        .with_help(format!(
                            "a task has exactly one action; `{}` is at line {}; split this into two tasks",
                            present[0], first.start.line
                        )),
                    );
                }
            }
            if obj.contains_key("with") && !obj.contains_key("uses") && !present.is_empty() {
                self.push(Diagnostic::new(
                    Code::Schema,
                    self.file,
                    self.root.key_span_at(&format!("{}/with", self.task_ptr(i))),
                    format!("`with` only applies to `uses` tasks, and task `{name}` is a `{}` task", present[0]),
                ));
            }
        }
    }

    /// `unknown-handler` and `handler-args` of a `uses:` task.
    pub(super) fn uses(&mut self, i: usize, task: &Node, name: &str, handler: &str) {
        let Some(catalog) = self.handlers else { return };
        if catalog.contains(handler) {
            check_with(self.file, self.root, catalog, handler, &self.task_ptr(i), task, self.out);
            return;
        }
        let mut d = Diagnostic::new(
            Code::UnknownHandler,
            self.file,
            self.root.span_at(&format!("{}/uses", self.task_ptr(i))),
            format!("task `{name}` uses handler `{handler}`, which does not exist"),
        );
        d = match did_you_mean(handler, catalog.names()) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None => d.with_help(format!(
                "the handlers are {}; a program that embeds the engine registers its own (list them in `[validate] handlers` of taskweave.toml for `taskweave validate`)",
                catalog.names().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            )),
        };
        self.push(d);
    }

    /// `url`: a literal `http.url` that cannot be sent.
    pub(super) fn url(&mut self, i: usize, url: &str) {
        if template::is_template(url) {
            return;
        }
        let shown = crate::diag::display_url(url);
        let (message, help) = match url::Url::parse(url) {
            // `localhost:8080` parses, with `localhost` as its scheme.
            Ok(u) if !matches!(u.scheme(), "http" | "https") && !url.contains("://") => {
                (format!("`{shown}` is not an HTTP URL: its scheme is `{}`", u.scheme()), format!("write the whole URL: `https://{shown}`"))
            }
            Ok(u) if !matches!(u.scheme(), "http" | "https") => (
                format!("`{shown}` is not an HTTP URL: its scheme is `{}`", u.scheme()),
                "an `http:` task sends HTTP requests: the URL starts with `http://` or `https://`".to_string(),
            ),
            // A parsed `http(s)` URL always has a host.
            Ok(_) => return,
            Err(url::ParseError::RelativeUrlWithoutBase) => (
                format!("`{shown}` is not a URL: it has no scheme"),
                format!("write the whole URL: `https://{}`", shown.trim_start_matches('/')),
            ),
            Err(e) => (format!("`{shown}` is not a valid URL: {e}"), "write the whole URL, e.g. `https://example.com/path`".to_string()),
        };
        self.push(
            Diagnostic::new(Code::Url, self.file, self.root.span_at(&format!("{}/http/url", self.task_ptr(i))), message).with_help(help),
        );
    }
}
