//! The `portico` command. Parsing and wiring live in the library.

/// mimalloc instead of glibc's malloc: the miss path allocates and frees
/// small buffers on every request, across threads (see README, bench-chain).
/// Built with `no_thp`: otherwise mimalloc asks for transparent huge pages
/// on its arenas, and the first connection served by each new worker thread
/// stalled about 5 ms in the kernel's page faults (compaction) for them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portico::main()
}
