//! `taskweave doctor`: is every configured backend, the store, the flag
//! source and every workflow folder usable? One line per check, and a
//! warning for each backend with tasks queued that no live worker takes.

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
            checks.push(Check {
                what,
                ok: false,
                detail: format!("kind `{kind}` is not built into this binary (build with `--features {kind}`)"),
            });
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
    for dir in &config.engine.workflows {
        checks.push(if !dir.is_dir() {
            Check { what: format!("workflows {}", dir.display()), ok: false, detail: "folder does not exist".into() }
        } else {
            match crate::validate::check_paths(std::slice::from_ref(dir), &crate::engine::validate_options(&config)) {
                Ok(files) => {
                    let bad = files.iter().filter(|f| f.has_errors()).count();
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
                llm: crate::run::actions::handlers::LlmConfig::from_env(),
                extract_text: config.actions.extract_text_settings(),
            })),
            limits: std::sync::Arc::new(config.actions.limits()),
            writer: None,
            events: None,
        },
        store: None,
        registry: std::sync::Arc::clone(registry),
    };
    crate::backend::open(ctx).await?.ok_or_else(|| crate::backend::BackendError::Permanent {
        backend: name.to_string(),
        reason: format!("kind `{kind}` is not built into this binary"),
    })
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
