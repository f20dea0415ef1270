//! Integration tests of the ryw adapters against real stores in Docker: DynamoDB Local, a MongoDB
//! replica set, and ScyllaDB.
//!
//! The suites are built with `--features docker` and run only where `RYW_DOCKER_TESTS=1` is set
//! and a Docker engine is reachable:
//!
//! ```text
//! RYW_DOCKER_TESTS=1 cargo test -p ryw-testcontainers --features docker
//! ```
//!
//! Anywhere else every suite prints what it skipped and passes.

/// The environment variable that turns the Docker suites on.
pub const ENABLE_VAR: &str = "RYW_DOCKER_TESTS";

/// True when Docker suites should run; otherwise prints that `suite` was skipped and why.
pub fn docker_enabled(suite: &str) -> bool {
    let on = std::env::var(ENABLE_VAR).is_ok_and(|v| v == "1");
    if !on {
        eprintln!(
            "skipped: {suite} (needs Docker: set {ENABLE_VAR}=1 and build with --features docker)"
        );
    }
    on
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_gate_reads_the_environment() {
        // The variable is not set in CI: the gate must say no (and print why).
        if std::env::var_os(super::ENABLE_VAR).is_none() {
            assert!(!super::docker_enabled("gate self-test"));
        }
    }
}
