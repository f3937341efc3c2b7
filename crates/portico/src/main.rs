//! The `portico` command. Parsing and wiring live in the library.

fn main() -> std::process::ExitCode {
    portico::main()
}
