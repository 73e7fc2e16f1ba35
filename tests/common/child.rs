//! Worker processes: copies of the test binary that run one test's worker side, started,
//! watched and stopped by the test.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts a copy of this test binary running only test `test`, with the variables `env`
/// set (the test sees them and runs as the worker), waits until it prints `READY`, and hands
/// each line it prints afterwards to `on_line`, on a thread of its own (so that its output
/// never fills the pipe). Closing its standard input asks it to stop.
pub fn spawn_worker(
    test: &str,
    env: &[(&str, &str)],
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|line| line.is_ok_and(|l| l.trim() == "READY")),
        "a worker of {test} did not start"
    );
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            on_line(&line);
        }
    });
    child
}

/// For a worker: completes when its standard input closes, which is how the test stops it
/// gracefully.
pub fn stdin_closed() -> impl Future<Output = ()> + Send + 'static {
    let (closed, mut watch) = tokio::sync::watch::channel(false);
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
        closed.send_replace(true);
    });
    async move {
        let _ = watch.wait_for(|c| *c).await;
    }
}
