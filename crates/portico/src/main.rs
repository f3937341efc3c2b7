//! The `portico` command. Parsing and wiring live in the library.

/// mimalloc instead of glibc's malloc: the miss path allocates and frees
/// small buffers on every request, across threads (see README, bench-chain).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portico::main()
}
