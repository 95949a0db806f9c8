//! Compiled definitions, each compiled once per process. A run pins the
//! definition it started with (by its version, a content hash); a driver
//! that executes runs elsewhere (a queue worker, an activity) reads that
//! definition back and compiles it here, once, whichever driver asks.

use crate::plan::Workflow;
use crate::spec::raw::RawWorkflow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Definitions kept at most; past it the cache starts over.
const MAX_KEPT: usize = 1000;

#[derive(Default)]
pub struct Definitions {
    compiled: Mutex<HashMap<String, Arc<Workflow>>>,
}

impl Definitions {
    pub fn new() -> Definitions {
        Definitions::default()
    }

    /// The definition `id`, if it was compiled here.
    pub fn get(&self, id: &str) -> Option<Arc<Workflow>> {
        self.lock().get(id).cloned()
    }

    /// Keep `wf`, compiled here already, as `id` (unless one is kept).
    pub fn insert(&self, id: &str, wf: Arc<Workflow>) {
        self.lock().entry(id.to_string()).or_insert(wf);
    }

    /// Compile `definition` (a recorded definition, as JSON) and keep it as
    /// `id`. The error says what was wrong, for the run's error.
    pub fn compile(&self, id: &str, definition: serde_json::Value) -> Result<Arc<Workflow>, String> {
        let raw: RawWorkflow = serde_json::from_value(definition).map_err(|e| format!("definition {id} does not parse: {e}"))?;
        let wf = crate::plan::compile(raw).map_err(|e| format!("definition {id} does not compile: {e}"))?;
        let mut compiled = self.lock();
        // Bounded: a long-lived worker sees every version ever deployed.
        if compiled.len() >= MAX_KEPT {
            compiled.clear();
        }
        compiled.insert(id.to_string(), Arc::clone(&wf));
        Ok(wf)
    }

    /// As [`Definitions::compile`], from the JSON text.
    pub fn compile_text(&self, id: &str, text: &str) -> Result<Arc<Workflow>, String> {
        let value = serde_json::from_str(text).map_err(|e| format!("definition {id} is not JSON: {e}"))?;
        self.compile(id, value)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Workflow>>> {
        self.compiled.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_compiles_once_and_a_broken_one_says_why() {
        let defs = Definitions::new();
        assert!(defs.get("v1").is_none());
        let doc = serde_json::json!({"version": 1, "name": "w", "tasks": [{"name": "a", "uses": "echo"}]});
        let wf = defs.compile("v1", doc).unwrap();
        assert!(Arc::ptr_eq(&wf, &defs.get("v1").unwrap()));
        let err = defs.compile_text("v2", r#"{"version": 1, "name": "w", "tasks": [{"name": "a", "parents": ["zz"], "uses": "echo"}]}"#);
        assert!(err.unwrap_err().starts_with("definition v2 does not compile"));
        assert!(defs.compile_text("v3", "{").unwrap_err().starts_with("definition v3 is not JSON"));
    }
}
