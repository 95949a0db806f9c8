//! Embedding taskweave in a Rust program: start an engine, register a
//! custom handler, register a workflow, run it, read the result.
//!
//! Runs `workflows/document-processing-v2.yaml` on `examples/data/sample.txt`
//! with a local `llm` handler in place of the OpenAI-compatible built-in, so
//! it needs no network or API key:
//!
//! ```sh
//! cargo run --example embed [-- PATH_TO_TEXT_FILE]
//! ```

use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use taskweave::config::Config;
use taskweave::run::actions::{ActionError, HandlerCtx};
use taskweave::{Engine, RunOptions};

/// A stand-in for an LLM: the first sentence and a word count.
async fn summarise(with: Value, _ctx: HandlerCtx) -> Result<Value, ActionError> {
    let prompt = with["prompt"].as_str().ok_or_else(|| ActionError::Permanent("`prompt` must be a string".into()))?;
    let text = prompt.trim_start_matches("Summarise:").trim();
    let first = text.split_inclusive('.').next().unwrap_or(text).trim();
    let words = text.split_whitespace().count();
    Ok(json!({"response": format!("{first} ({words} words)"), "tokens_used": words}))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let document = std::env::args().nth(1).unwrap_or_else(|| root.join("examples/data/sample.txt").display().to_string());

    // `extract-text` reads only inside its root folder (`[actions.extract_text]
    // root` of taskweave.toml; default: the working directory): here, the
    // document's own folder.
    let mut config = Config::default();
    config.actions.extract_text.root = Path::new(&document).parent().map(Path::to_path_buf);

    // History in memory only; `.store("sqlite://...")` keeps it on disk.
    let engine = Engine::builder().config(config).without_store().handler("llm", summarise).build().await?;
    let wf = engine.register_file(&root.join("workflows/document-processing-v2.yaml"))?;
    println!("registered {} {}", wf.name, wf.version);

    let run_id = engine
        .run_workflow(
            "document-processing-v2",
            RunOptions {
                input: Some(json!({"document_path": document})),
                context: Some(json!({"user_id": "u-1", "organization_id": "acme"})),
                ..Default::default()
            },
        )
        .await?;
    let result = engine.get_result(&run_id, Some(Duration::from_secs(60))).await?;
    println!("run {run_id}: {}", result.status);
    for (name, task) in &result.tasks {
        println!("  {name}: {} {}", task.status, task.output.as_ref().map(Value::to_string).unwrap_or_default());
    }
    // An unknown run id is a not-found error, not a panic.
    assert!(matches!(engine.get_result("no-such-run", None).await, Err(taskweave::EngineError::RunNotFound(_))));
    engine.shutdown().await;
    if result.status != taskweave::run::RunStatus::Succeeded {
        std::process::exit(1);
    }
    Ok(())
}
