//! The Debian package: `scripts/package` packs the binary under test, lintian finds nothing to
//! warn about, and the package installs into a scratch root — an overlay over the host's `/` in
//! a private mount and PID namespace, so dpkg and the maintainer scripts run for real and
//! nothing reaches the host. There the shipped config passes `spinforge check`, `spinforge up`
//! (as the package's `spinforge` user, with the shipped config moved to free ports) serves its
//! welcome page through the edge, and `dpkg -r` and `dpkg --purge` clean up.

mod schema_check;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::spinforge::{Http, Workspace, binary, port_block, repo};

/// What every command in the scratch root starts from.
const PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs as the package's user, as the unit's `User=spinforge` does.
const AS_SPINFORGE: [&str; 4] = [
    "setpriv",
    "--reuid=spinforge",
    "--regid=spinforge",
    "--init-groups",
];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

#[track_caller]
fn succeeded(what: &str, out: Output) -> Output {
    assert!(out.status.success(), "{}", show(what, &out));
    out
}

/// The pids whose parent is `parent` (from /proc/<pid>/stat).
fn children(parent: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(p.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

fn kill(pid: u32, sig: nix::sys::signal::Signal) {
    support::spinforge::signal(pid, sig);
}

/// A scratch root: the host's `/` as the lower layer of an overlay whose upper layer is a
/// folder of the test, mounted in a mount and PID namespace of its own with fresh /proc, /run
/// and /tmp, and the host's /dev and /sys. The namespace's first process sits chrooted in it;
/// commands join it with `nsenter`. Dropping it kills the namespace, which takes every process
/// and mount in it along.
struct ScratchRoot {
    /// `unshare`, outside the namespace.
    unshare: Child,
    /// The namespace's pid 1 (a chrooted `sleep`), as the host sees it.
    init: u32,
}

/// Run by `unshare` inside the new namespaces: $1 is the folder holding upper/, work/, merged/.
const SETUP: &str = r#"set -e
d=$1
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=/,upperdir=$d/upper,workdir=$d/work" "$d/merged"
mount --rbind /dev "$d/merged/dev"
mount --rbind /sys "$d/merged/sys"
mount -t proc proc "$d/merged/proc"
# A /run of its own: no host systemd for the maintainer scripts to reach.
mount -t tmpfs tmpfs "$d/merged/run"
mount -t tmpfs tmpfs "$d/merged/tmp"
echo ready
exec chroot "$d/merged" sleep infinity
"#;

impl ScratchRoot {
    /// Makes the root in `dir`, with `files` (path in the root, content) put in before.
    fn new(dir: &Path, files: &[(&str, &[u8])]) -> ScratchRoot {
        let upper = dir.join("upper");
        for sub in ["upper", "work", "merged"] {
            std::fs::create_dir_all(dir.join(sub)).expect("make the overlay's folders");
        }
        for (path, content) in files {
            let at = upper.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(at.parent().expect("a parent")).expect("mkdir in upper");
            std::fs::write(&at, content).expect("put a file into the root");
        }
        // setpriv's parent-death signal: if this test dies, unshare dies, and with it
        // (--kill-child) the namespace.
        let mut unshare = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .args([
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--",
            ])
            .args(["sh", "-c", SETUP, "sh"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run unshare (util-linux)");
        let mut line = String::new();
        let read = BufReader::new(unshare.stdout.take().expect("piped")).read_line(&mut line);
        if read.is_err() || line.trim() != "ready" {
            let out = unshare.wait_with_output().expect("wait for unshare");
            panic!(
                "cannot make the scratch root (an overlay over / in a mount namespace; needs root \
                 and overlayfs): {}",
                show("unshare", &out)
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let init = loop {
            if let [pid] = children(unshare.id())[..] {
                break pid;
            }
            assert!(Instant::now() < deadline, "unshare's child never showed");
            std::thread::sleep(Duration::from_millis(10));
        };
        ScratchRoot { unshare, init }
    }

    /// A command in the root, as root, with an empty environment but PATH (and `env`).
    fn command(&self, env: &[&str], args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &self.init.to_string(),
            "--mount",
            "--pid",
            "--root",
            "--wd",
        ])
        .args(["env", "-i", PATH])
        .args(env)
        .args(args)
        .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(&[], args)
            .output()
            .expect("run nsenter (util-linux)")
    }

    /// Whether `path` exists in the root (`test -e`, or `-L` for a symbolic link).
    fn exists(&self, path: &str) -> bool {
        self.run(&["sh", "-c", "test -e \"$1\" || test -L \"$1\"", "sh", path])
            .status
            .success()
    }

    /// Writes `content` at `path` in the root (through the overlay: its layers are not to be
    /// written while mounted).
    fn write(&self, path: &str, content: &str) {
        let mut child = self
            .command(&[], &["sh", "-c", "cat > \"$1\"", "sh", path])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run nsenter");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(content.as_bytes())
            .expect("write into the root");
        assert!(child.wait().expect("wait").success(), "cannot write {path}");
    }

    fn read(&self, path: &str) -> String {
        text(&succeeded(&format!("cat {path}"), self.run(&["cat", path])).stdout)
    }
}

impl Drop for ScratchRoot {
    fn drop(&mut self) {
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        kill(self.init, nix::sys::signal::Signal::SIGKILL);
        // The namespace (its processes, then its mounts) goes once its pid 1 is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while support::spinforge::alive(self.init) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `spinforge up` in the root; SIGTERM on drop (the namespace's end kills what is left).
struct Up {
    /// nsenter, which waits for its child (the spinforge process) and exits with its status.
    nsenter: Child,
    log: PathBuf,
}

impl Up {
    /// The spinforge process, as the host sees it.
    fn pid(&self) -> Option<u32> {
        children(self.nsenter.id()).first().copied()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self.nsenter.try_wait().expect("poll nsenter") {
                panic!(
                    "spinforge up exited ({status}) before listening on {addr}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "spinforge up not listening on {addr} after 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status (within 15 s).
    fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.pid().expect("spinforge runs under nsenter");
        kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.nsenter.try_wait().expect("poll nsenter") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "spinforge up did not exit within 15 s of SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.nsenter.try_wait().ok().flatten().is_none() {
            if let Some(pid) = self.pid() {
                kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = self.nsenter.kill();
        }
        let _ = self.nsenter.wait();
        if std::thread::panicking() {
            eprintln!("--- spinforge up's log ---\n{}", self.log_text());
        }
    }
}

/// The spinforge user's line in the root's /etc/passwd.
fn passwd_entry(root: &ScratchRoot) -> Option<String> {
    root.read("/etc/passwd")
        .lines()
        .find(|l| l.starts_with("spinforge:"))
        .map(str::to_string)
}

/// A helper process that is killed if the test ends before it is waited for.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn wait(mut self) -> Output {
        let child = self.0.take().expect("not waited for yet");
        child.wait_with_output().expect("wait")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The shipped config with every listening address moved to a free port on 127.0.0.1 and the
/// spinlets' ports to a block of this test's; returns it and the edge's address.
fn on_free_ports(config: &str) -> (String, SocketAddr) {
    let mut edge = None;
    let mut lines = Vec::new();
    for line in config.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let entry = line.trim_start();
        let key = ["listen_http", "listen_https", "metrics", "admin_listen"]
            .into_iter()
            .find(|k| entry.strip_prefix(k).is_some_and(|r| r.starts_with(':')));
        let Some(key) = key else {
            lines.push(line.to_string());
            if line == "supervisor:" {
                lines.push(format!("  port_range: {}", port_block()));
            }
            continue;
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
        if key == "listen_http" {
            edge = Some(addr);
        }
        let comment = entry.find(" #").map_or("", |i| &entry[i..]);
        lines.push(format!("{indent}{key}: {addr}{comment}"));
    }
    let config = lines.join("\n") + "\n";
    assert!(
        config.contains("  port_range: "),
        "the shipped config has no top-level `supervisor:` section:\n{config}"
    );
    (
        config,
        edge.expect("the shipped config sets edge.listen_http"),
    )
}

#[test]
fn the_package_passes_lintian_installs_serves_its_config_and_purges() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: installing into a scratch root needs root (mount namespaces)");
        return;
    }
    let started = Instant::now();
    let ws = Workspace::new();
    let passwd_before = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let host_had_binary = Path::new("/usr/bin/spinforge").exists();

    let out = ws.path().join("out");
    let packaged = Command::new(repo().join("scripts/package"))
        .arg("-o")
        .arg(&out)
        .args(["-z", "1"])
        .arg(binary())
        .output()
        .expect("run scripts/package");
    let packaged = succeeded("scripts/package", packaged);
    let deb = PathBuf::from(text(&packaged.stdout).trim());
    assert!(deb.is_file(), "scripts/package printed {}", deb.display());

    // lintian takes a while: it runs while the package is installed.
    let lintian = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
        .arg(&deb)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lintian is missing: run ./scripts/setup (apt-get install lintian)");
    let lintian = KillOnDrop(Some(lintian));

    // What the package holds, and its version is the binary's.
    let listing = text(
        &succeeded(
            "dpkg-deb -c",
            Command::new("dpkg-deb")
                .arg("-c")
                .arg(&deb)
                .output()
                .expect("dpkg-deb"),
        )
        .stdout,
    );
    for path in [
        "./usr/bin/spinforge",
        "./usr/lib/systemd/system/spinforge.service",
        "./etc/spinforge/spinforge.yaml",
        "./usr/lib/sysusers.d/spinforge.conf",
        "./usr/lib/tmpfiles.d/spinforge.conf",
        "./usr/share/bash-completion/completions/spinforge",
        "./usr/share/zsh/vendor-completions/_spinforge",
        "./usr/share/fish/vendor_completions.d/spinforge.fish",
        "./usr/share/man/man1/spinforge.1.gz",
        "./usr/share/man/man1/spinforge-up.1.gz",
        "./usr/share/man/man1/spinforge-check.1.gz",
        "./usr/share/doc/spinforge/copyright",
        "./usr/share/doc/spinforge/changelog.gz",
        "./usr/share/spinforge/welcome/index.html",
        "./usr/share/spinforge/spinforge.schema.json",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "the package lacks {path}:\n{listing}"
        );
    }
    let field = |name: &str| {
        let out = Command::new("dpkg-deb")
            .arg("-f")
            .arg(&deb)
            .arg(name)
            .output();
        text(&succeeded("dpkg-deb -f", out.expect("dpkg-deb")).stdout)
            .trim()
            .to_string()
    };
    let version = text(
        &Command::new(binary())
            .arg("--version")
            .output()
            .expect("--version")
            .stdout,
    );
    assert_eq!(
        Some(field("Version").as_str()),
        version.split_whitespace().nth(1)
    );
    assert!(
        field("Depends").contains("libc6"),
        "Depends: {}",
        field("Depends")
    );
    let conffiles = Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles")
        .output();
    let conffiles = text(&succeeded("dpkg-deb -I conffiles", conffiles.expect("dpkg-deb")).stdout);
    assert_eq!(conffiles.trim(), "/etc/spinforge/spinforge.yaml");

    // The default config names the schema the package ships, and matches it (as an editor
    // would check it).
    let shipped = repo().join("packaging/debian/spinforge.yaml");
    let first = std::fs::read_to_string(&shipped).expect("read the default config");
    assert_eq!(
        first.lines().next(),
        Some("# yaml-language-server: $schema=/usr/share/spinforge/spinforge.schema.json")
    );
    schema_check::assert_valid(&shipped);

    let deb_bytes = std::fs::read(&deb).expect("read the package");
    let root = ScratchRoot::new(
        &ws.path().join("root"),
        &[("/root/spinforge.deb", &deb_bytes)],
    );
    assert!(!root.exists("/usr/bin/spinforge") || host_had_binary);

    // man-db's trigger would rebuild the whole manual's index after each dpkg run (seconds
    // each); container images turn it off the same way.
    succeeded(
        "rm man-db/auto-update",
        root.run(&["rm", "-f", "/var/lib/man-db/auto-update"]),
    );

    // Install, maintainer scripts and all.
    succeeded("dpkg -i", root.run(&["dpkg", "-i", "/root/spinforge.deb"]));
    assert!(root.exists("/usr/bin/spinforge"));
    let user = passwd_entry(&root).expect("no spinforge user in the root's /etc/passwd");
    assert!(
        user.ends_with(":/var/lib/spinforge:/usr/sbin/nologin"),
        "{user}"
    );
    let data = root.run(&["stat", "-c", "%U:%G %a", "/var/lib/spinforge"]);
    assert_eq!(
        text(&succeeded("stat /var/lib/spinforge", data).stdout).trim(),
        "spinforge:spinforge 750"
    );
    assert!(
        root.exists("/etc/systemd/system/multi-user.target.wants/spinforge.service"),
        "postinst did not enable the unit"
    );
    // The unit as systemd reads it: keys, the binary it runs, the man page it names.
    succeeded(
        "systemd-analyze verify",
        root.run(&[
            "systemd-analyze",
            "verify",
            "/usr/lib/systemd/system/spinforge.service",
        ]),
    );
    succeeded(
        "bash -n (the bash completions)",
        root.run(&[
            "bash",
            "-n",
            "/usr/share/bash-completion/completions/spinforge",
        ]),
    );
    let man = root.run(&["man", "-P", "cat", "spinforge-up"]);
    let man = succeeded("man spinforge-up", man);
    assert!(
        text(&man.stdout).contains("spinforge-up"),
        "{}",
        text(&man.stdout)
    );

    // The shipped config, checked as the unit's ExecStartPre does.
    let mut check = AS_SPINFORGE.to_vec();
    check.extend(["spinforge", "check"]);
    let checked = succeeded("spinforge check", root.run(&check));
    assert!(
        text(&checked.stdout).starts_with("/etc/spinforge/spinforge.yaml: ok"),
        "{}",
        text(&checked.stdout)
    );

    // Served as shipped, on free ports, as the spinforge user.
    let (config, edge) = on_free_ports(&root.read("/etc/spinforge/spinforge.yaml"));
    root.write("/run/spinforge-test.yaml", &config);
    let log = ws.path().join("up.log");
    let log_file = std::fs::File::create(&log).expect("create the log");
    let mut up_args = AS_SPINFORGE.to_vec();
    up_args.extend(["spinforge", "up", "--config", "/run/spinforge-test.yaml"]);
    let nsenter = root
        .command(&["HOME=/var/lib/spinforge", "RUST_LOG=info"], &up_args)
        .stdout(log_file.try_clone().expect("clone the log"))
        .stderr(log_file)
        .spawn()
        .expect("run nsenter");
    let mut up = Up { nsenter, log };
    up.wait_listening(edge);
    let reply = tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(Http::new(edge).fetch("localhost", "/"));
    let page = std::fs::read_to_string(repo().join("packaging/debian/welcome/index.html"))
        .expect("read the welcome page");
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, up.log_text());
    assert_eq!(reply.body, page);
    assert!(
        reply
            .header("server-timing")
            .is_some_and(|t| t.contains("cold-start"))
    );
    let status = up.stop();
    assert!(
        status.success(),
        "spinforge up exited with {status}:\n{}",
        up.log_text()
    );
    assert!(
        root.exists("/var/lib/spinforge/apps/welcome"),
        "{}",
        up.log_text()
    );

    // Installed again over itself (an upgrade, as far as the scripts know): an edit of the
    // config is kept, the unit stays enabled, the user is the same.
    let edited = root.read("/etc/spinforge/spinforge.yaml") + "# edited by the administrator\n";
    root.write("/etc/spinforge/spinforge.yaml", &edited);
    succeeded(
        "dpkg -i (again)",
        root.run(&["dpkg", "-i", "/root/spinforge.deb"]),
    );
    assert_eq!(root.read("/etc/spinforge/spinforge.yaml"), edited);
    assert!(root.exists("/etc/systemd/system/multi-user.target.wants/spinforge.service"));
    assert_eq!(passwd_entry(&root), Some(user));

    // Remove: the program goes, the config and the data stay.
    succeeded("dpkg -r", root.run(&["dpkg", "-r", "spinforge"]));
    assert!(!root.exists("/usr/bin/spinforge"));
    assert!(!root.exists("/usr/lib/systemd/system/spinforge.service"));
    assert!(root.exists("/etc/spinforge/spinforge.yaml"));
    assert!(root.exists("/var/lib/spinforge/apps/welcome"));

    // Purge: the config, the data and the unit's links go too.
    succeeded("dpkg --purge", root.run(&["dpkg", "--purge", "spinforge"]));
    for gone in [
        "/etc/spinforge",
        "/var/lib/spinforge",
        "/etc/systemd/system/multi-user.target.wants/spinforge.service",
        "/etc/systemd/system/spinforge.service",
    ] {
        assert!(!root.exists(gone), "{gone} is left after purge");
    }
    assert!(!root.run(&["dpkg", "-s", "spinforge"]).status.success());

    // Where systemd's tools are missing (a container image), postinst falls back to useradd
    // and install -d, and skips the unit's enabling.
    succeeded("userdel", root.run(&["userdel", "spinforge"]));
    let hide = "for t in systemd-sysusers systemd-tmpfiles deb-systemd-helper deb-systemd-invoke; do \
                p=$(command -v $t) && mv \"$p\" \"$p.hidden\"; done; true";
    succeeded("hide systemd's tools", root.run(&["sh", "-c", hide]));
    assert!(
        !root
            .run(&["sh", "-c", "command -v systemd-sysusers"])
            .status
            .success()
    );
    succeeded(
        "dpkg -i (no systemd tools)",
        root.run(&["dpkg", "-i", "/root/spinforge.deb"]),
    );
    let user = passwd_entry(&root).expect("useradd made no spinforge user");
    assert!(
        user.ends_with(":/var/lib/spinforge:/usr/sbin/nologin"),
        "{user}"
    );
    let data = root.run(&["stat", "-c", "%U:%G %a", "/var/lib/spinforge"]);
    assert_eq!(
        text(&succeeded("stat /var/lib/spinforge", data).stdout).trim(),
        "spinforge:spinforge 750"
    );
    assert!(!root.exists("/etc/systemd/system/multi-user.target.wants/spinforge.service"));
    succeeded("spinforge check (no systemd tools)", root.run(&check));
    succeeded(
        "dpkg --purge (no systemd tools)",
        root.run(&["dpkg", "--purge", "spinforge"]),
    );
    assert!(!root.exists("/var/lib/spinforge"));
    assert!(!root.exists("/etc/spinforge"));
    drop(up);
    drop(root);

    let lint = lintian.wait();
    assert!(lint.status.success(), "{}", show("lintian", &lint));

    // Nothing reached the host.
    assert_eq!(
        std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd"),
        passwd_before
    );
    assert_eq!(Path::new("/usr/bin/spinforge").exists(), host_had_binary);
    eprintln!("package test took {:?}", started.elapsed());
}
