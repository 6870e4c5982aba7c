//! service-b: everything but the routes is the shared daemon lifecycle.

// mimalloc: 6-14 % fewer instructions per request than glibc's malloc, idle
// RSS within 1 MB of it (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    service_kit::daemon::main::<service_b::ServiceB>()
}
