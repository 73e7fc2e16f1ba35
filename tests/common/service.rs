//! The example service's binary, for the tests that run it as a process.

/// The example service's binary, built beside the test by `cargo test` and `cargo nextest`.
pub fn service_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = dir
        .join("examples")
        .join(format!("bank_service{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: build it with cargo build -p eventsourcing-kit --example bank_service --features example-service",
        binary.display()
    );
    binary
}
