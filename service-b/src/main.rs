//! service-b: everything but the routes is the shared daemon lifecycle.

fn main() -> std::process::ExitCode {
    service_kit::daemon::main::<service_b::ServiceB>()
}
