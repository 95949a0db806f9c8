//! `taskweave serve`: the HTTP API, with workflows loaded from the configured
//! folders and reloaded live. `taskweave status` asks a running server.
//!
//! A token that cannot work (empty, padded, unsendable) stops the server
//! before it listens, with exit status 2. Connection limits come from the
//! flags, else `[serve]` in taskweave.toml, else their defaults.

use crate::api::server::{ConnLimits, Server};
use crate::api::token::{self, TokenError};
use crate::api::{ApiOptions, router};
use crate::config::{Config, ServeConfig};
use crate::engine::EngineBuilder;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1:8080", env = "TASKWEAVE_BIND")]
    pub bind: SocketAddr,
    /// Require `Authorization: Bearer TOKEN` on every endpoint but /healthz.
    #[arg(long, env = "TASKWEAVE_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the token from a file, such as a mounted secret (one trailing newline is ignored).
    #[arg(long, env = "TASKWEAVE_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// How long a client may take to send a request's headers [config: serve.header_timeout; default 10s].
    #[arg(long, env = "TASKWEAVE_HEADER_TIMEOUT", value_name = "DURATION", value_parser = parse_limit)]
    pub header_timeout: Option<Duration>,
    /// How long a client may take to send a whole request body [config: serve.body_timeout; default 30s].
    #[arg(long, env = "TASKWEAVE_BODY_TIMEOUT", value_name = "DURATION", value_parser = parse_limit)]
    pub body_timeout: Option<Duration>,
    /// How long an idle kept-alive connection stays open [config: serve.idle_timeout; default 60s].
    #[arg(long, env = "TASKWEAVE_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_limit)]
    pub idle_timeout: Option<Duration>,
    /// How many client connections are served at once [config: serve.max_connections; default 1024].
    #[arg(long, env = "TASKWEAVE_MAX_CONNECTIONS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
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

fn parse_limit(s: &str) -> Result<Duration, String> {
    crate::config::parse_positive_duration(s)
}

/// The token the server requires, if any, checked so that it can work.
fn resolve_token(args: &ServeArgs) -> Result<Option<String>, TokenError> {
    match (&args.token, &args.token_file) {
        (Some(t), _) => {
            token::check(t, "the token (--token or TASKWEAVE_TOKEN)")?;
            Ok(Some(t.clone()))
        }
        (None, Some(path)) => token::read_file(path).map(Some),
        (None, None) => Ok(None),
    }
}

/// The connection limits and the body timeout: flags, else `[serve]`, else defaults.
fn limits(args: &ServeArgs, file: &ServeConfig) -> (ConnLimits, Duration) {
    let d = ConnLimits::default();
    let conn = ConnLimits {
        header_timeout: args.header_timeout.or(file.header_timeout).unwrap_or(d.header_timeout),
        idle_timeout: args.idle_timeout.or(file.idle_timeout).unwrap_or(d.idle_timeout),
        max_connections: args.max_connections.map(|n| n as usize).or(file.max_connections).unwrap_or(d.max_connections),
    };
    (conn, args.body_timeout.or(file.body_timeout).unwrap_or(ApiOptions::default().body_timeout))
}

pub async fn serve(args: ServeArgs, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let token = match resolve_token(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return Ok(super::config_error(&e)),
    };
    let (conn_limits, body_timeout) = limits(&args, &config.serve);
    let engine = match EngineBuilder::new().config(config).resume_interrupted(true).build().await {
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
    let stop = CancellationToken::new();
    let has_token = token.is_some();
    let router = router(engine.clone(), ApiOptions { token, body_timeout, shutdown: stop.clone(), ..Default::default() });
    let listener = match tokio::net::TcpListener::bind(args.bind).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.bind);
            return Ok(ExitCode::from(2));
        }
    };
    let server = Server::start(listener, router, conn_limits, stop)?;
    let terminated = terminated();
    let addr = server.local_addr();
    eprintln!(
        "taskweave serving http://{addr} ({} workflow(s) loaded, {} file(s) with errors{}, {})",
        registry.names().len(),
        report.failed.len(),
        match registry.folder_status().iter().filter(|f| !f.is_ok()).count() {
            0 => String::new(),
            n => format!(", {n} workflow folder(s) missing or unreadable"),
        },
        if has_token { "token required" } else { "no token: open to every client" }
    );
    if !has_token && !addr.ip().is_loopback() {
        eprintln!("warning: {addr} is reachable from other machines and no token is set: anyone who can connect can start and cancel runs");
    }
    terminated.await;
    let grace = args.grace;
    eprintln!("shutting down: no new runs; waiting up to {} for running runs", humantime::format_duration(grace));
    // Stop accepting; requests in flight and running runs get the grace period, side by side.
    server.shutdown();
    let deadline = tokio::time::Instant::now() + grace;
    let drain_runs = async {
        for b in engine.backends().iter() {
            b.drain().await;
        }
    };
    let (_, drained) = tokio::join!(tokio::time::timeout_at(deadline, server.closed()), tokio::time::timeout_at(deadline, drain_runs));
    if drained.is_err() {
        eprintln!("grace period over: cancelling the runs still in flight");
    }
    engine.shutdown().await;
    // Long-polls on the runs just cancelled answer now; what is still open after that is closed.
    if tokio::time::timeout(Duration::from_secs(1), server.closed()).await.is_err() {
        server.abort().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled, so a signal sent right after
/// the start-up banner is not lost.
pub(crate) fn terminated() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(int.take()) => {}
            _ = wait(term.take()) => {}
        }
    }
}

/// `taskweave status`: the reload status of a running server.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The server's address (default: from `TASKWEAVE_BIND`, the address
    /// `serve` listens on, else http://127.0.0.1:8080).
    #[arg(long, env = "TASKWEAVE_URL")]
    pub url: Option<String>,
    #[arg(long, env = "TASKWEAVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, value_enum, default_value = "human")]
    pub format: super::OutputFormat,
}

/// The URL `status` asks: `--url`, else the address `serve` would listen on
/// (`TASKWEAVE_BIND`; a wildcard address is asked on loopback).
fn status_url(url: Option<String>, bind: Option<String>) -> String {
    if let Some(u) = url {
        return u;
    }
    match bind.and_then(|b| b.parse::<SocketAddr>().ok()) {
        Some(a) if a.ip().is_unspecified() => format!("http://127.0.0.1:{}", a.port()),
        Some(a) => format!("http://{a}"),
        None => "http://127.0.0.1:8080".to_string(),
    }
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let url = status_url(args.url.clone(), std::env::var("TASKWEAVE_BIND").ok());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let mut req = client.get(format!("{}/v1/workflows", url.trim_end_matches('/')));
    if let Some(t) = &args.token {
        req = req.bearer_auth(t);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot reach {url}: {}", e.without_url());
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

#[cfg(test)]
mod status_tests {
    use super::status_url;

    #[test]
    fn status_asks_where_serve_listens() {
        assert_eq!(status_url(Some("http://h:1".into()), Some("127.0.0.1:9".into())), "http://h:1");
        assert_eq!(status_url(None, Some("127.0.0.1:9090".into())), "http://127.0.0.1:9090");
        assert_eq!(status_url(None, Some("0.0.0.0:9090".into())), "http://127.0.0.1:9090");
        assert_eq!(status_url(None, Some("[::]:9090".into())), "http://127.0.0.1:9090");
        assert_eq!(status_url(None, None), "http://127.0.0.1:8080");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(extra: &[&str]) -> ServeArgs {
        Cli::parse_from(std::iter::once("serve").chain(extra.iter().copied())).serve
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let file = ServeConfig {
            header_timeout: Some(Duration::from_secs(5)),
            body_timeout: Some(Duration::from_secs(7)),
            idle_timeout: None,
            max_connections: Some(64),
        };
        let (conn, body) = limits(&args(&["--header-timeout", "2s", "--max-connections", "8"]), &file);
        assert_eq!(conn, ConnLimits { header_timeout: Duration::from_secs(2), idle_timeout: Duration::from_secs(60), max_connections: 8 });
        assert_eq!(body, Duration::from_secs(7));
        let (conn, body) = limits(&args(&[]), &ServeConfig::default());
        assert_eq!((conn, body), (ConnLimits::default(), Duration::from_secs(30)));
    }
}
