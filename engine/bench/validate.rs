//! Validation benchmark: how fast `taskweave validate` checks a folder of
//! realistic workflows, and one very large workflow.
//!
//! [`bench_validate`] writes `files` workflow files of `tasks_per_file` tasks
//! each into a folder (parents forming a DAG, templates reading ancestors and
//! the input, timeouts, retries, all five action kinds, one file in ten in
//! TOML), then times [`crate::validate::check_paths`] over that folder, and
//! [`crate::validate::check_source`] over one workflow of
//! [`LARGE_TASKS`] tasks. Figures are medians, minima and maxima over several
//! repetitions after a warm-up; nothing here asserts a speed.

use super::workloads::{median, peak_rss_mb};
use crate::spec::Format;
use crate::validate::{self, Options};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Tasks of the single large workflow.
pub const LARGE_TASKS: usize = 10_000;
/// Timed repetitions of each measurement (after one warm-up), by default.
pub const REPEAT: usize = 7;

/// Figures of one measurement, in milliseconds: wall-clock time, and the CPU
/// time the process spent (all threads), which a busy machine disturbs less.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub cpu_median_ms: f64,
    pub samples_ms: Vec<f64>,
}

impl Timing {
    fn of(samples: Vec<(f64, f64)>) -> Timing {
        let mut wall: Vec<f64> = samples.iter().map(|s| s.0).collect();
        let mut cpu: Vec<f64> = samples.iter().map(|s| s.1).collect();
        let median_ms = median(&mut wall);
        Timing {
            median_ms,
            min_ms: wall.first().copied().unwrap_or(0.0),
            max_ms: wall.last().copied().unwrap_or(0.0),
            cpu_median_ms: median(&mut cpu),
            samples_ms: samples.iter().map(|s| s.0).collect(),
        }
    }
}

/// Where the time of one large workflow goes (medians, milliseconds):
/// decoding and parsing into the positioned tree, compiling the validated
/// definition (`plan::compile`, timed on a copy of the definition), and the rest of `check_source` (schema,
/// rules, deserialisation).
#[derive(Debug, Clone, Serialize)]
pub struct Stages {
    pub parse_ms: f64,
    pub compile_ms: f64,
    pub schema_and_rules_ms: f64,
}

/// The report of [`bench_validate`].
#[derive(Debug, Clone, Serialize)]
pub struct ValidateReport {
    /// Where the generated files are.
    pub dir: PathBuf,
    pub files: usize,
    pub tasks_per_file: usize,
    /// Size of the generated folder, in bytes.
    pub folder_bytes: u64,
    /// `check_paths` over the whole folder.
    pub folder: Timing,
    pub files_per_sec: f64,
    pub tasks_per_sec: f64,
    /// Tasks of the single large workflow.
    pub large_tasks: usize,
    pub large_bytes: usize,
    /// `check_source` of the large workflow.
    pub large: Timing,
    pub large_stages: Stages,
    /// Diagnostics found (the generated workflows are valid: this should be 0).
    pub diagnostics: usize,
    /// Threads `check_paths` may use.
    pub threads: usize,
    /// Timed repetitions of each measurement.
    pub repeat: usize,
    pub peak_rss_mb: f64,
}

/// A small deterministic generator (xorshift), so every run benchmarks the
/// same files.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// One generated task, format-neutral.
struct GenTask {
    name: String,
    parents: Vec<usize>,
    timeout: Option<&'static str>,
    retry: bool,
    /// Which action: 0 uses, 1 run, 2 shell, 3 http, 4 uses reading input.
    action: usize,
    /// An ancestor whose output the templates read.
    reads: Option<usize>,
}

fn gen_tasks(tasks: usize, seed: u64) -> Vec<GenTask> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..tasks)
        .map(|i| {
            let mut parents = Vec::new();
            if i > 0 {
                // Mostly the previous task, sometimes one or two further back:
                // chains with joins, like real pipelines.
                parents.push(i - 1);
                for _ in 0..rng.below(3) {
                    let back = 2 + rng.below(8);
                    if back <= i && !parents.contains(&(i - back)) {
                        parents.push(i - back);
                    }
                }
            }
            GenTask {
                name: format!("step-{i:05}"),
                reads: parents.first().copied().filter(|_| rng.below(3) > 0),
                parents,
                timeout: match rng.below(4) {
                    0 => Some("10m"),
                    1 => Some("90s"),
                    _ => None,
                },
                retry: rng.below(3) == 0,
                action: rng.below(5),
            }
        })
        .collect()
}

/// A realistic YAML workflow of `tasks` tasks.
pub fn workflow_yaml(name: &str, tasks: usize, seed: u64) -> String {
    let ts = gen_tasks(tasks, seed);
    let mut s = String::with_capacity(tasks * 160 + 512);
    let _ = write!(
        s,
        "# yaml-language-server: $schema=../schemas/workflow.schema.json\n\
         version: 1\n\
         name: {name}\n\
         description: Generated benchmark workflow with {tasks} tasks\n\
         timeout: 2h\n\
         concurrency: 8\n\
         input:\n  type: object\n  required: [document_path]\n  additionalProperties: false\n  properties:\n    \
         document_path: {{type: string}}\n    llm_url: {{type: string}}\n    mode: {{type: string, default: fast}}\n\
         defaults:\n  timeout: 5m\n  retry: {{attempts: 2, delay: 1s, backoff: 2.0, max_delay: 1m}}\n\
         env: {{LANG: C.UTF-8}}\n\
         tasks:\n"
    );
    for t in &ts {
        let _ = writeln!(s, "  - name: {}", t.name);
        if !t.parents.is_empty() {
            let ps: Vec<&str> = t.parents.iter().map(|&p| ts[p].name.as_str()).collect();
            let _ = writeln!(s, "    parents: [{}]", ps.join(", "));
        }
        if let Some(to) = t.timeout {
            let _ = writeln!(s, "    timeout: {to}");
        }
        if t.retry {
            s.push_str("    retry: {attempts: 3, delay: 2s}\n");
        }
        let read = t.reads.map_or_else(|| "{{input.document_path}}".to_string(), |p| format!("{{{{tasks.{}.output}}}}", ts[p].name));
        match t.action {
            0 => {
                let _ = writeln!(s, "    uses: echo\n    with: {{message: \"{read}\", count: 3}}");
            }
            1 => {
                let _ = writeln!(s, "    run: [echo, \"{read}\", --mode, \"{{{{input.mode}}}}\"]");
            }
            2 => {
                let _ = writeln!(s, "    shell: |\n      echo {read} | wc -c\n      echo done");
            }
            3 => {
                let _ = writeln!(
                    s,
                    "    http:\n      method: POST\n      url: \"{{{{input.llm_url}}}}\"\n      headers: {{X-Run: \"{{{{run.id}}}}\"}}\n      json: {{prompt: \"Summarise: {read}\", max_tokens: 256}}"
                );
            }
            _ => {
                let _ = writeln!(s, "    uses: extract-text\n    with: {{path: \"{{{{input.document_path}}}}\"}}");
            }
        }
    }
    s
}

/// The same kind of workflow in TOML.
pub fn workflow_toml(name: &str, tasks: usize, seed: u64) -> String {
    let ts = gen_tasks(tasks, seed);
    let mut s = String::with_capacity(tasks * 180 + 512);
    let _ = write!(
        s,
        "version = 1\nname = \"{name}\"\ndescription = \"Generated benchmark workflow with {tasks} tasks\"\n\
         timeout = \"2h\"\nconcurrency = 8\nenv = {{ LANG = \"C.UTF-8\" }}\n\n\
         [input]\ntype = \"object\"\nrequired = [\"document_path\"]\n\
         properties = {{ document_path = {{ type = \"string\" }}, llm_url = {{ type = \"string\" }}, mode = {{ type = \"string\" }} }}\n\n\
         [defaults]\ntimeout = \"5m\"\nretry = {{ attempts = 2, delay = \"1s\" }}\n"
    );
    for t in &ts {
        let _ = write!(s, "\n[[tasks]]\nname = \"{}\"\n", t.name);
        if !t.parents.is_empty() {
            let ps: Vec<String> = t.parents.iter().map(|&p| format!("\"{}\"", ts[p].name)).collect();
            let _ = writeln!(s, "parents = [{}]", ps.join(", "));
        }
        if let Some(to) = t.timeout {
            let _ = writeln!(s, "timeout = \"{to}\"");
        }
        if t.retry {
            s.push_str("retry = { attempts = 3, delay = \"2s\" }\n");
        }
        let read = t.reads.map_or_else(|| "{{input.document_path}}".to_string(), |p| format!("{{{{tasks.{}.output}}}}", ts[p].name));
        match t.action {
            0 => {
                let _ = writeln!(s, "uses = \"echo\"\nwith = {{ message = \"{read}\", count = 3 }}");
            }
            1 => {
                let _ = writeln!(s, "run = [\"echo\", \"{read}\", \"--mode\", \"{{{{input.mode}}}}\"]");
            }
            2 => {
                let _ = writeln!(s, "shell = \"\"\"\necho {read} | wc -c\necho done\n\"\"\"");
            }
            3 => {
                let _ = writeln!(
                    s,
                    "http = {{ method = \"POST\", url = \"{{{{input.llm_url}}}}\", json = {{ prompt = \"Summarise: {read}\", max_tokens = 256 }} }}"
                );
            }
            _ => {
                let _ = writeln!(s, "uses = \"extract-text\"\nwith = {{ path = \"{{{{input.document_path}}}}\" }}");
            }
        }
    }
    s
}

/// CPU time of the whole process so far (user and system, all threads), in ms.
fn cpu_ms() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: initialised by the successful call above.
    let u = unsafe { usage.assume_init() };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(u.ru_utime) + ms(u.ru_stime)
}

/// Run `f` once to warm up, then `repeat` times; the samples (wall, CPU)
/// and the last result. The result of one repetition is dropped before the
/// next starts, outside the timed part: freeing it is not the work measured.
fn measure<T>(repeat: usize, mut f: impl FnMut() -> T) -> (Vec<(f64, f64)>, T) {
    let mut last = f();
    let mut samples = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        drop(last);
        let (t, c) = (Instant::now(), cpu_ms());
        last = f();
        samples.push((t.elapsed().as_secs_f64() * 1e3, cpu_ms() - c));
    }
    (samples, last)
}

/// Generate the files under `dir` (a `workflows/` folder and `large.yaml`)
/// and time validation over them, [`REPEAT`] times. See the module docs.
pub fn bench_validate(dir: &Path, files: usize, tasks_per_file: usize) -> std::io::Result<ValidateReport> {
    bench_validate_with(dir, files, tasks_per_file, REPEAT)
}

/// [`bench_validate`] with `repeat` timed repetitions of each measurement
/// (at least one).
pub fn bench_validate_with(dir: &Path, files: usize, tasks_per_file: usize, repeat: usize) -> std::io::Result<ValidateReport> {
    let repeat = repeat.max(1);
    let folder = dir.join("workflows");
    if folder.exists() {
        std::fs::remove_dir_all(&folder)?;
    }
    std::fs::create_dir_all(&folder)?;
    let mut folder_bytes = 0u64;
    for i in 0..files {
        let name = format!("bench-{i:05}");
        let (path, text) = if i % 10 == 9 {
            (folder.join(format!("{name}.toml")), workflow_toml(&name, tasks_per_file, i as u64 + 1))
        } else {
            (folder.join(format!("{name}.yaml")), workflow_yaml(&name, tasks_per_file, i as u64 + 1))
        };
        folder_bytes += text.len() as u64;
        std::fs::write(path, text)?;
    }
    let large_text = workflow_yaml("bench-large", LARGE_TASKS, 42);
    std::fs::write(dir.join("large.yaml"), &large_text)?;

    let opts = Options::default();
    let paths = [folder.clone()];
    let (samples, checked) = measure(repeat, || validate::check_paths(&paths, &opts));
    let mut diagnostics: usize = checked?.iter().map(|c| c.diagnostics.len()).sum();
    let folder_timing = Timing::of(samples);

    let (samples, n) = measure(repeat, || validate::check_source("large.yaml", large_text.clone(), Format::Yaml, &opts).diagnostics.len());
    diagnostics += n;
    let large = Timing::of(samples);
    let (parse, _) = measure(repeat, || crate::spec::parse("large.yaml", &large_text, Format::Yaml).is_ok());
    let raw: Option<crate::spec::raw::RawWorkflow> =
        crate::spec::parse("large.yaml", &large_text, Format::Yaml).ok().and_then(|doc| serde::Deserialize::deserialize(&doc.value).ok());
    let (compile, _) = measure(repeat, || raw.clone().map(crate::plan::compile));
    let parse_ms = median(&mut parse.iter().map(|s| s.0).collect::<Vec<_>>());
    let compile_ms = median(&mut compile.iter().map(|s| s.0).collect::<Vec<_>>());
    let large_stages = Stages { parse_ms, compile_ms, schema_and_rules_ms: (large.median_ms - parse_ms - compile_ms).max(0.0) };
    let secs = folder_timing.median_ms / 1e3;
    Ok(ValidateReport {
        dir: dir.to_path_buf(),
        files,
        tasks_per_file,
        folder_bytes,
        files_per_sec: if secs > 0.0 { files as f64 / secs } else { 0.0 },
        tasks_per_sec: if secs > 0.0 { (files * tasks_per_file) as f64 / secs } else { 0.0 },
        folder: folder_timing,
        large_tasks: LARGE_TASKS,
        large_bytes: large_text.len(),
        large,
        large_stages,
        diagnostics,
        threads: validate::threads(),
        repeat,
        peak_rss_mb: peak_rss_mb(),
    })
}
