//! The `portico` command, built as a binary of the test package so that
//! cargo builds it (with the test build's features) before the end-to-end
//! tests run; they find it at `CARGO_BIN_EXE_portico-e2e`.

fn main() -> std::process::ExitCode {
    portico::main()
}
