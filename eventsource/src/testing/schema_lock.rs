//! The schema lock check a project adds to its tests in one line.

use std::path::Path;

use crate::evolution::SchemaLock;

/// The environment variable that makes [`check_schema_lock`] rewrite the lock instead of
/// comparing with it: `EVENTSOURCE_SCHEMA_LOCK=overwrite cargo test`.
pub const SCHEMA_LOCK_ENV: &str = "EVENTSOURCE_SCHEMA_LOCK";

/// Compares the shapes of every state and event registered in the test program with the
/// lock file at `path`, and panics with what differs.
///
/// ```no_run
/// // tests/schema_lock.rs, with the domain types linked into the test (a `use` of the crate)
/// #[test]
/// fn schema_lock() {
///     eventsourcing_kit::testing::check_schema_lock(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.lock"));
/// }
/// ```
///
/// A type whose shape cannot be traced (see [`crate::evolution::shape`]) is recorded with the
/// reason and named in a warning on standard error: the lock does not check it.
///
/// A shape changed while its version stayed the same (the forgotten `schema_version` or
/// event `version` bump) fails with what changed and how to fix it in the code. Any other
/// difference (a deliberate bump, a type added or removed) fails too, until the lock is
/// rewritten: run the test once with `EVENTSOURCE_SCHEMA_LOCK=overwrite` and review the
/// lock's diff with the change. A missing lock file fails the same way, so CI never passes
/// on a lock nobody wrote.
///
/// # Panics
///
/// When the program's shapes differ from the lock, the lock cannot be read or written, or
/// `EVENTSOURCE_SCHEMA_LOCK` is set to something other than `overwrite`.
#[track_caller]
pub fn check_schema_lock(path: impl AsRef<Path>) {
    let path = path.as_ref();
    let program = SchemaLock::of_program();
    match std::env::var(SCHEMA_LOCK_ENV).as_deref() {
        Ok("overwrite") => {
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            }
            std::fs::write(path, program.to_string())
                .unwrap_or_else(|e| panic!("cannot write the schema lock {}: {e}", path.display()));
            eprintln!("wrote the schema lock {}", path.display());
            return;
        }
        Ok(other) => panic!("{SCHEMA_LOCK_ENV}={other:?}: the only value it takes is `overwrite`"),
        Err(_) => {}
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "there is no schema lock at {}; write it with {SCHEMA_LOCK_ENV}=overwrite and check it in",
            path.display()
        ),
        Err(e) => panic!("cannot read the schema lock {}: {e}", path.display()),
    };
    for (name, reason) in program.untraceable() {
        eprintln!("warning: the schema lock cannot check {name}: {reason}");
    }
    let locked = SchemaLock::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let differences = program.differences(&locked);
    if differences.is_empty() {
        return;
    }
    let (bumps, others): (Vec<_>, Vec<_>) = differences.iter().partition(|d| d.is_forgotten_bump());
    let mut message = format!("the program's schemas differ from the lock {}:\n", path.display());
    for difference in bumps.iter().chain(&others) {
        message.push_str(&format!("  - {difference}\n"));
    }
    if bumps.is_empty() {
        message.push_str(&format!(
            "if these changes are meant, rewrite the lock with {SCHEMA_LOCK_ENV}=overwrite and review its diff"
        ));
    } else {
        message.push_str(
            "a shape that changes needs its version bumped: fix the code first, then rewrite the lock",
        );
    }
    panic!("{message}");
}
