//! The `taskweave` command line; all logic lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    taskweave::cli::main()
}
