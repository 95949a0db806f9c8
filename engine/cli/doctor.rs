//! `taskweave doctor`: is every configured backend, the store, the flag
//! source, the `llm` handler's settings and every workflow folder usable?
//! One line per check; warnings (`warn`, one for each backend with tasks
//! queued that no live worker takes) do not fail it.

use crate::config::Config;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

struct Check {
    what: String,
    ok: bool,
    detail: String,
}

pub async fn doctor(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return Ok(super::config_error(&e)),
    };
    let mut checks = Vec::new();
    let mut warnings = Vec::new();
    checks.push(Check {
        what: "config".into(),
        ok: true,
        detail: match &config.path {
            Some(p) => format!("{} is valid", p.display()),
            None => "no taskweave.toml; using the defaults".into(),
        },
    });
    // Store: open it when it exists (applying migrations); a missing SQLite
    // file is not created here, the first run does that.
    let store = tokio::time::timeout(Duration::from_secs(10), crate::store::Store::open_existing(&config.engine.store)).await;
    checks.push(match store {
        Ok(Ok(Some(s))) => Check { what: "store".into(), ok: true, detail: format!("{} answers", s.location()) },
        Ok(Ok(None)) => Check {
            what: "store".into(),
            ok: true,
            detail: format!("no run history at {} yet; the first run creates it", config.engine.store),
        },
        Ok(Err(e)) => Check { what: "store".into(), ok: false, detail: e.to_string() },
        Err(_) => Check { what: "store".into(), ok: false, detail: format!("{}: no answer within 10s", config.engine.store) },
    });
    let registry = std::sync::Arc::new(crate::reload::Registry::new(Vec::new(), crate::engine::validate_options(&config)));
    for name in config.backend_names() {
        let kind = config.kind_of(&name).unwrap_or("?").to_string();
        let what = format!("backend {name}");
        if !crate::backend::is_built(&kind) {
            checks.push(Check { what, ok: false, detail: crate::backend::not_built(&kind) });
            continue;
        }
        let checked = tokio::time::timeout(Duration::from_secs(10), async {
            let backend = open_backend(&config, &name, &kind, &registry).await?;
            let line = backend.check().await;
            Ok::<_, crate::backend::BackendError>((backend, line))
        })
        .await;
        let checked = match checked {
            Ok(Ok((backend, line))) => {
                if line.is_ok() {
                    // Tasks waiting for workers that are not there: say so.
                    warnings.extend(unserved(&name, &kind, crate::backend::workers::ask(std::sync::Arc::clone(&backend)).await));
                }
                backend.shutdown().await;
                Ok(line)
            }
            Ok(Err(e)) => Ok(Err(e)),
            Err(timeout) => Err(timeout),
        };
        checks.push(match checked {
            Ok(Ok(detail)) => Check { what, ok: true, detail },
            Ok(Err(e)) => Check { what, ok: false, detail: e.to_string() },
            Err(_) => Check { what, ok: false, detail: format!("kind `{kind}`: no answer within 10s") },
        });
    }
    if let Some(src) = &config.flags.source {
        checks.push(flag_source(src).await);
    }
    let mut workflows = Vec::new();
    for dir in &config.engine.workflows {
        checks.push(if !dir.is_dir() {
            Check { what: format!("workflows {}", dir.display()), ok: false, detail: "folder does not exist".into() }
        } else {
            match crate::validate::check_paths(std::slice::from_ref(dir), &crate::engine::validate_options(&config)) {
                Ok(files) => {
                    let bad = files.iter().filter(|f| f.has_errors()).count();
                    workflows.extend(files.iter().filter_map(|f| f.workflow.clone()));
                    Check {
                        what: format!("workflows {}", dir.display()),
                        ok: bad == 0,
                        detail: if bad == 0 {
                            format!("{} valid workflow file(s)", files.len())
                        } else {
                            format!("{bad} of {} file(s) have errors; run `taskweave validate {}`", files.len(), dir.display())
                        },
                    }
                }
                Err(e) => Check { what: format!("workflows {}", dir.display()), ok: false, detail: e.to_string() },
            }
        });
    }
    let (llm, llm_warnings) = llm_checks(&config, &workflows);
    checks.extend(llm);
    warnings.extend(llm_warnings);
    let width = checks.iter().chain(&warnings).map(|c| c.what.len()).max().unwrap_or(0);
    for c in &checks {
        println!("{} {:<width$}  {}", if c.ok { "ok  " } else { "FAIL" }, c.what, c.detail);
    }
    for c in &warnings {
        println!("warn {:<width$}  {}", c.what, c.detail);
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    let warned = if warnings.is_empty() { String::new() } else { format!(", {} warning(s)", warnings.len()) };
    if failed > 0 {
        println!("{failed} problem(s) found{warned}");
        Ok(ExitCode::from(1))
    } else {
        println!("everything answers{warned}");
        Ok(ExitCode::SUCCESS)
    }
}

/// A warning when the backend has tasks queued that no live worker takes,
/// or when it could not say which workers are live.
fn unserved(name: &str, kind: &str, surveyed: crate::backend::workers::Surveyed) -> Option<Check> {
    let what = format!("workers {name}");
    let report = match surveyed.report {
        Ok(r) => r,
        Err(e) => return Some(Check { what, ok: true, detail: format!("cannot list the live workers: {e}") }),
    };
    let unserved = report.unserved();
    if unserved.is_empty() {
        return None;
    }
    let queues: Vec<String> = unserved.iter().map(|(q, n)| format!("{n} in `{q}`")).collect();
    let flags: String = unserved.iter().map(|(q, _)| format!(" --queue {q}")).collect();
    let start = if kind == "celery" {
        let python: String = unserved.iter().map(|(q, _)| q.to_string()).collect::<Vec<_>>().join(",");
        format!("start `taskweave worker --backend {name}{flags}`, or a Python Celery worker with `-Q {python}` for `celery:` tasks")
    } else {
        format!("start one with `taskweave worker --backend {name}{flags}`")
    };
    Some(Check { what, ok: true, detail: format!("task(s) queued and no live worker takes them: {}; {start}", queues.join(", ")) })
}

/// Open one configured backend to look at it (`doctor`, `taskweave
/// workers`): no run store, and no workflows of its own.
pub(crate) async fn open_backend(
    config: &Config,
    name: &str,
    kind: &str,
    registry: &std::sync::Arc<crate::reload::Registry>,
) -> Result<std::sync::Arc<dyn crate::backend::Backend>, crate::backend::BackendError> {
    let ctx = crate::backend::DriverContext {
        name: name.to_string(),
        kind: kind.to_string(),
        options: config.backends.get(name).map(|b| b.options.clone()).unwrap_or_default(),
        executor: crate::run::executor::Executor {
            handlers: std::sync::Arc::new(crate::run::actions::Handlers::builtin_with(crate::run::actions::BuiltinSettings {
                llm: config.llm(),
                extract_text: config.actions.extract_text_settings(),
            })),
            limits: std::sync::Arc::new(config.actions.limits()),
            writer: None,
            events: None,
        },
        store: None,
        registry: std::sync::Arc::clone(registry),
    };
    crate::backend::open(ctx)
        .await?
        .ok_or_else(|| crate::backend::BackendError::Permanent { backend: name.to_string(), reason: crate::backend::not_built(kind) })
}

/// The `llm` handler's settings, when they are configured or a workflow
/// has an `llm` task: the base URL parses, a model is named, the key's
/// variable is set; and a warning for each `llm` task whose timeout is
/// longer than one request may take. Returns the checks, then the warnings.
fn llm_checks(config: &Config, workflows: &[std::sync::Arc<crate::plan::Workflow>]) -> (Vec<Check>, Vec<Check>) {
    use crate::plan::Action;
    let tasks: Vec<(&str, &crate::plan::Task)> = workflows
        .iter()
        .flat_map(|w| w.tasks.iter().map(move |t| (w.name.as_str(), t)))
        .filter(|(_, t)| matches!(&t.action, Action::Uses { handler, .. } if handler == "llm"))
        .collect();
    let configured = config.sources.keys().any(|k| k.starts_with("handlers.llm."));
    let (mut checks, mut warnings) = (Vec::new(), Vec::new());
    if tasks.is_empty() && !configured {
        return (checks, warnings);
    }
    let check = |ok: bool, detail: String| Check { what: "llm".into(), ok, detail };
    let section = &config.handlers.llm;
    let llm = config.llm();
    let shown_url = crate::config::keys::mask_url(&llm.base_url);
    if let Some(p) = crate::config::handlers::base_url_problem(&llm.base_url) {
        checks.push(check(false, format!("base_url: {p}")));
    } else if llm.model.trim().is_empty() {
        checks.push(check(false, "no model: set `[handlers.llm] model` or TASKWEAVE_LLM_MODEL".into()));
    } else {
        let env = |k: &str| std::env::var(k).ok();
        let key = match section.key_source(&env) {
            Some(var) => Ok(format!("the key from {var}")),
            None if !llm.needs_key() => Ok("no key (a service on this machine)".to_string()),
            None => {
                let (first, fallback) = section.key_env();
                let named = match fallback {
                    Some(f) => format!("{first} or {f}"),
                    None => format!("{first} (named by `[handlers.llm] api_key_env`)"),
                };
                Err(format!("no API key for {shown_url}: {named} is not set"))
            }
        };
        let used = if tasks.is_empty() { "no workflow uses it yet".to_string() } else { format!("{} llm task(s)", tasks.len()) };
        match key {
            Ok(key) => checks.push(check(
                true,
                format!(
                    "model {} at {shown_url}, {key}, requests time out after {}; {used}",
                    llm.model,
                    humantime::format_duration(llm.timeout)
                ),
            )),
            // Without tasks that need it, a missing key is only a warning.
            Err(e) if tasks.is_empty() => warnings.push(check(true, e)),
            Err(e) => checks.push(check(false, e)),
        }
    }
    for (wf, t) in &tasks {
        if let Some(timeout) = t.timeout.filter(|d| *d > llm.timeout) {
            let limit = humantime::format_duration(llm.timeout);
            warnings.push(Check {
                what: "llm timeout".into(),
                ok: true,
                detail: format!(
                    "workflow `{wf}`, task `{}`: its timeout {} is longer than `[handlers.llm] timeout` {limit}; each request stops after {limit}",
                    t.name,
                    humantime::format_duration(timeout),
                ),
            });
        }
    }
    (checks, warnings)
}

async fn flag_source(src: &str) -> Check {
    let what = "flags".to_string();
    if src.starts_with("http://") || src.starts_with("https://") {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build();
        let r = match client {
            Ok(c) => c.get(src).send().await,
            Err(e) => {
                return Check { what, ok: false, detail: e.to_string() };
            }
        };
        match r {
            Ok(resp) => Check { what, ok: true, detail: format!("{src} answers (HTTP {})", resp.status().as_u16()) },
            Err(e) => Check { what, ok: false, detail: format!("{src}: {}", e.without_url()) },
        }
    } else {
        match crate::flags::file::load_path(std::path::Path::new(src)) {
            Ok(l) => match (&l.features, l.diagnostics.iter().find(|d| d.is_error())) {
                (Some(f), _) => {
                    Check { what, ok: true, detail: format!("{src}: {} flag(s), {} segment(s)", f.flags.len(), f.segments.len()) }
                }
                (None, Some(d)) => Check {
                    what,
                    ok: false,
                    detail: format!(
                        "{}:{}:{}: {} ({} error(s); run `taskweave flags validate {src}`)",
                        d.file,
                        d.span.start.line,
                        d.span.start.column,
                        d.message,
                        l.diagnostics.iter().filter(|d| d.is_error()).count()
                    ),
                },
                (None, None) => Check { what, ok: false, detail: format!("{src} is not a valid features file") },
            },
            Err(e) => Check { what, ok: false, detail: format!("{src}: {e}") },
        }
    }
}
