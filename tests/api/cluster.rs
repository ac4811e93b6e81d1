//! A throwaway PostgreSQL cluster of a test's own, from the installed server
//! binaries: for what the shared server must never be put through (TLS only,
//! a restart, a stop). Stopped and deleted on drop, pass or fail.
//!
//! It needs the PostgreSQL server binaries (as scripts/ensure-postgres
//! installs them); without them these tests fail, saying so, rather than skip.

use std::{
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

/// A cluster in a temporary directory, listening on 127.0.0.1 on a free port,
/// `trust` for every local connection unless the test writes its own pg_hba.conf.
pub struct Cluster {
    pub dir: PathBuf,
    bindir: PathBuf,
    /// The OS user that owns the cluster when the tests run as root (initdb refuses root).
    owner: Option<String>,
    pub port: u16,
}

impl Cluster {
    /// Runs initdb and writes the base settings; [`Self::start`] starts it,
    /// after the test has added what it needs ([`Self::configure`]).
    pub fn init(purpose: &str) -> Self {
        let bindir = server_bindir();
        let owner = (unsafe { libc::geteuid() } == 0).then(cluster_owner);
        let dir =
            std::env::temp_dir().join(format!("commissions-{purpose}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self {
            dir,
            bindir,
            owner,
            port,
        };
        cluster.give_to_owner(&cluster.dir);
        run(
            cluster
                .as_owner("initdb")
                .arg("-D")
                .arg(cluster.data())
                .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8"])
                .args(["--no-locale", "--no-sync"]),
            "initdb",
        );
        cluster.configure(&format!(
            "\n# Written by tests/api/cluster.rs: a throwaway cluster for one test.\n\
             listen_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{dir}'\n\
             fsync = off\nmax_connections = 50\ndynamic_shared_memory_type = mmap\n",
            port = cluster.port,
            dir = cluster.dir.display(),
        ));
        cluster
    }

    /// An initialised cluster, started with the base settings.
    pub fn start_new(purpose: &str) -> Self {
        let cluster = Self::init(purpose);
        cluster.start();
        cluster
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Appends settings to postgresql.conf (read at the next start).
    pub fn configure(&self, settings: &str) {
        append(&self.data().join("postgresql.conf"), settings);
    }

    /// Makes a file the test wrote readable by the server (a TLS key of mode 0600).
    pub fn give_to_owner(&self, path: &Path) {
        if let Some(owner) = &self.owner {
            let (uid, gid) = ids(owner);
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        let log = self.dir.join("postgres.log");
        let started = self
            .pg_ctl()
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("pg_ctl start");
        assert!(
            started.status.success(),
            "the test cluster did not start: {}\n{}",
            String::from_utf8_lossy(&started.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `pg_ctl stop -m fast`: every session is ended, as in a failover or a restart.
    pub fn stop(&self) {
        run(
            self.pg_ctl().args(["-m", "fast", "-w", "stop"]),
            "pg_ctl stop",
        );
    }

    /// `pg_ctl restart -m fast`.
    pub fn restart(&self) {
        let log = self.dir.join("postgres.log");
        run(
            self.pg_ctl()
                .arg("-l")
                .arg(&log)
                .args(["-m", "fast", "-w", "-t", "60", "restart"]),
            "pg_ctl restart",
        );
    }

    fn pg_ctl(&self) -> Command {
        let mut command = self.as_owner("pg_ctl");
        command.arg("-D").arg(self.data());
        command
    }

    /// One of the server's binaries, run as the cluster's owner.
    fn as_owner(&self, binary: &str) -> Command {
        let program = self.bindir.join(binary);
        let mut command = match &self.owner {
            None => Command::new(program),
            Some(owner) => {
                let mut command = Command::new("runuser");
                command.args(["-u", owner, "--"]).arg(program);
                command
            }
        };
        // The owner may not be allowed into the working directory.
        command.current_dir(&self.dir);
        command
    }

    /// A URL to the cluster's `postgres` database with these parameters.
    pub fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .pg_ctl()
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A bin directory with initdb and pg_ctl, found as scripts/ensure-postgres finds it.
fn server_bindir() -> PathBuf {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return dir;
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, dir)| has_server(dir))
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, dir)) => dir,
        None => panic!(
            "this test starts a PostgreSQL cluster of its own and found no server binaries \
             (initdb, pg_ctl) via `pg_config --bindir` or in /usr/lib/postgresql/*/bin: \
             install PostgreSQL (scripts/ensure-postgres does it with apt-get)"
        ),
    }
}

fn run(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The user scripts/ensure-postgres runs its cluster as: `postgres` if it
/// exists, else `commissions-pg`, created if need be.
fn cluster_owner() -> String {
    let exists = |user: &str| {
        Command::new("id")
            .args(["-u", user])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if exists("postgres") {
        return "postgres".into();
    }
    let user = "commissions-pg";
    if !exists(user) {
        run(
            Command::new("useradd").args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                user,
            ]),
            "useradd commissions-pg (initdb refuses root)",
        );
    }
    user.into()
}

fn ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, user]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}
