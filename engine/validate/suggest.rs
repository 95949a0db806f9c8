//! "Did you mean" help, computed only for the findings that are shown: a
//! suggestion compares a name with every candidate, which is quadratic when
//! a file has thousands of findings.

use crate::diag::{Code, Diagnostic, Span, did_you_mean};
use crate::spec::node::Node;
use std::collections::{HashMap, HashSet};

/// "Did you mean" help left for later, by the diagnostic it belongs to
/// (code, span, message: unique once repeats are dropped). A suggestion
/// compares a name with every task name, so computing one per finding is
/// quadratic in a file of 50,000 unknown parents; [`suggest`] computes
/// them for the diagnostics that are shown only.
pub type Pending = HashMap<(Code, Span, String), (String, Pool)>;

/// Where the candidates of a pending suggestion come from.
pub enum Pool {
    /// The task names, but this one.
    Tasks { except: Option<String> },
    /// The properties of a closed input schema.
    InputProps,
}

/// How many name comparisons the suggestions of one file may cost: all
/// the shown findings of a file of a thousand tasks get one, the first
/// twenty of a file of 50,000.
const MAX_SUGGEST_COMPARISONS: usize = 1_000_000;

/// Add the pending "did you mean" help of the diagnostics that were kept
/// (in file order, within [`MAX_SUGGEST_COMPARISONS`]).
pub fn suggest(root: &Node, diags: &mut [Diagnostic], mut pending: Pending) {
    if pending.is_empty() {
        return;
    }
    let tasks = root.get("tasks").and_then(Node::as_seq).unwrap_or_default();
    let names: Vec<&str> = {
        let mut seen = HashSet::new();
        tasks.iter().filter_map(|t| t.get("name").and_then(Node::as_str)).filter(|n| seen.insert(*n)).collect()
    };
    let props: Vec<&str> = root
        .get("input")
        .and_then(|i| i.get("properties"))
        .and_then(Node::as_map)
        .map(|p| p.iter().map(|(k, _)| k.name.as_str()).collect())
        .unwrap_or_default();
    let mut comparisons = MAX_SUGGEST_COMPARISONS;
    for d in diags.iter_mut().filter(|d| d.help.is_none()) {
        let Some((name, pool)) = pending.remove(&(d.code, d.span, d.message.clone())) else { continue };
        let size = match &pool {
            Pool::Tasks { .. } => names.len(),
            Pool::InputProps => props.len(),
        };
        let Some(left) = comparisons.checked_sub(size) else { break };
        comparisons = left;
        let found = match &pool {
            Pool::Tasks { except } => did_you_mean(&name, names.iter().copied().filter(|n| Some(*n) != except.as_deref())),
            Pool::InputProps => did_you_mean(&name, props.iter().copied()),
        };
        if let Some(s) = found {
            d.help = Some(format!("did you mean `{s}`?"));
        }
    }
}
