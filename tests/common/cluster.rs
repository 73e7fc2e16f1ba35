//! A PostgreSQL cluster of a test's own, on a port of its own, started and stopped by the
//! test (as the `postgres` user): for server settings and server faults, never the shared
//! server's.

use std::path::PathBuf;
use std::process::Command;

/// A cluster in a temporary directory, stopped and removed when dropped.
pub struct ScratchCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    options: String,
}

impl ScratchCluster {
    /// Creates and starts one with the server options `settings` (`-c name=value ...`);
    /// `None` where the server's programs are missing or cannot be run as `postgres` (not
    /// run as root).
    pub fn start(settings: &str) -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
            .find(|bin| bin.join("initdb").exists())?;
        let dir = tempfile::Builder::new().prefix("scratch-pg").tempdir().ok()?;
        let chown = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir.path())
            .status()
            .ok()?;
        if !chown.success() {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} {settings}",
            dir.path().display()
        );
        let cluster = ScratchCluster {
            dir,
            bin,
            port,
            options,
        };
        let init = cluster
            .as_postgres("initdb")
            .args(["--auth=trust", "--username=postgres", "-D"])
            .arg(cluster.data())
            .output()
            .ok()?;
        assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
        cluster.start_again();
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn as_postgres(&self, program: &str) -> Command {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(self.bin.join(program));
        command
    }

    /// Starts the stopped cluster again, on its port, and waits until it accepts connections.
    pub fn start_again(&self) {
        let start = self
            .as_postgres("pg_ctl")
            .args(["-w", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-o", &self.options, "start"])
            .output()
            .expect("pg_ctl runs");
        assert!(
            start.status.success(),
            "{}",
            String::from_utf8_lossy(&start.stderr)
        );
    }

    /// Stops it at once, as a crash would (`-m immediate`): every connection is cut.
    pub fn stop(&self) {
        let _ = self
            .as_postgres("pg_ctl")
            .args(["-m", "immediate", "-w", "-D"])
            .arg(self.data())
            .arg("stop")
            .output();
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
