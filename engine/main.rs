//! The `taskweave` command line; all logic lives in the library's `cli` module.

// The command line allocates many small, short-lived values (YAML nodes,
// JSON values, task states); mimalloc serves them faster than the system
// allocator. Programs embedding the library choose their own allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    taskweave::cli::main()
}
