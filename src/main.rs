//! The bootplan binary: parse arguments, run, exit with the verdict.

fn main() {
    std::process::exit(bootplan::cli::main());
}
