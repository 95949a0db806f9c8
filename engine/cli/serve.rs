//! `taskweave serve`: the HTTP API, with workflows loaded from the configured
//! folders and reloaded live. `taskweave status` asks a running server.

use crate::config::Config;
use crate::engine::EngineBuilder;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1:8080", env = "TASKWEAVE_BIND")]
    pub bind: SocketAddr,
    /// Require `Authorization: Bearer TOKEN` on every endpoint but /healthz.
    #[arg(long, env = "TASKWEAVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How long running runs may finish after SIGTERM before they are cancelled.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Debounce of the file watcher.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub debounce: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::plan::parse_duration(s)
}

pub async fn serve(args: ServeArgs, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return Ok(super::config_error(&e)),
    };
    let engine = match EngineBuilder::new().config(config).build().await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let report = super::load_workflows(&engine).await?;
    let registry = std::sync::Arc::clone(engine.registry());
    let _watcher = match crate::reload::watch::watch(std::sync::Arc::clone(&registry), args.debounce) {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!("warning: live reload is off: {e}");
            None
        }
    };
    let router = crate::api::router(
        engine.clone(),
        crate::api::ApiOptions { token: args.token.clone().filter(|t| !t.is_empty()), ..Default::default() },
    );
    let listener = match tokio::net::TcpListener::bind(args.bind).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.bind);
            return Ok(ExitCode::from(2));
        }
    };
    let addr = listener.local_addr()?;
    eprintln!(
        "taskweave serving http://{addr} ({} workflow(s) loaded, {} file(s) with errors{}{})",
        registry.names().len(),
        report.failed.len(),
        match registry.folder_status().iter().filter(|f| !f.is_ok()).count() {
            0 => String::new(),
            n => format!(", {n} workflow folder(s) missing or unreadable"),
        },
        if args.token.is_some() { ", token required" } else { "" }
    );
    let grace = args.grace;
    let shutdown = async move {
        terminated().await;
        eprintln!("shutting down: no new runs; waiting up to {} for running runs", humantime::format_duration(grace));
    };
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
    // Let running runs finish within the grace period, then cancel and record the rest.
    let drained = tokio::time::timeout(args.grace, async {
        for b in engine.backends().iter() {
            b.drain().await;
        }
    })
    .await;
    if drained.is_err() {
        eprintln!("grace period over: cancelling the runs still in flight");
    }
    engine.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

/// `taskweave status`: the reload status of a running server.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The server's address.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "TASKWEAVE_URL")]
    pub url: String,
    #[arg(long, env = "TASKWEAVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, value_enum, default_value = "human")]
    pub format: super::OutputFormat,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let mut req = client.get(format!("{}/v1/workflows", args.url.trim_end_matches('/')));
    if let Some(t) = &args.token {
        req = req.bearer_auth(t);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot reach {}: {}", args.url, e.without_url());
            return Ok(ExitCode::from(2));
        }
    };
    let code = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !code.is_success() {
        eprintln!("error: HTTP {}: {}", code.as_u16(), body["error"]["message"].as_str().unwrap_or("no message"));
        return Ok(ExitCode::from(2));
    }
    if args.format == super::OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut failing = 0;
    // A folder that is missing or unreadable serves nothing: a problem, not an empty folder.
    let mut bad_folders = 0;
    for f in body["folders"].as_array().into_iter().flatten() {
        let state = f["state"].as_str().unwrap_or("?");
        if state != "ok" {
            bad_folders += 1;
            let why = f["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default();
            println!(
                "{} {}  (workflow folder {state}{why})",
                if state == "missing" { "MISSING" } else { "FAIL" },
                f["path"].as_str().unwrap_or("?")
            );
        }
    }
    for f in body["files"].as_array().into_iter().flatten() {
        let ok = f["last_attempt"]["ok"].as_bool().unwrap_or(false);
        let version = f["active_version"].as_str().map(|v| &v[..v.len().min(19)]).unwrap_or("-");
        println!(
            "{} {}  {}  {}",
            if ok { "ok  " } else { "FAIL" },
            f["path"].as_str().unwrap_or("?"),
            f["workflow"].as_str().unwrap_or("?"),
            version
        );
        if !ok {
            failing += 1;
            for d in f["last_attempt"]["diagnostics"].as_array().into_iter().flatten() {
                println!(
                    "       {}:{}:{}: {}[{}]: {}",
                    d["file"].as_str().unwrap_or("?"),
                    d["line"],
                    d["column"],
                    d["severity"].as_str().unwrap_or("error"),
                    d["code"].as_str().unwrap_or("?"),
                    d["message"].as_str().unwrap_or("")
                );
            }
        }
    }
    let folders = if bad_folders > 0 { format!(", {bad_folders} folder(s) missing or unreadable") } else { String::new() };
    println!("{} workflow(s) serving, {failing} file(s) failing{folders}", body["workflows"].as_array().map_or(0, Vec::len));
    Ok(if failing > 0 || bad_folders > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
