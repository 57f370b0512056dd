//! The uploader boundary end to end: a corpus of hostile trees driven through every way a tree
//! reaches SpinForge — the admin API's upload, the deploy folder (a folder and a `.tar.gz`) and
//! a git source — against a real `spinforge up`. Each is refused (or, for the controls, kept
//! whole and contained), and canary files outside `data_dir` keep their content, mode, owner and
//! link count. Under `supervisor.run_as` (when the test runs as root, as in CI) the canaries must
//! also stay root's: issue #13's archive made one the app's.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::spinforge::{ADMIN_TOKEN, Spinforge, Workspace, fixture, port_block};
use support::{eventually, free_port};

/// What a canary file holds; a leak shows it.
const CANARY: &str = "canary: this must never be served, replaced or given away";

/// Files outside `data_dir`, in the test's own folder, that no tree may reach.
struct Canaries {
    dir: PathBuf,
    seen: Vec<(String, Vec<u8>, u32, u32, u32)>,
}

impl Canaries {
    fn new(ws: &Workspace) -> Canaries {
        let dir = ws.path().join("outside");
        std::fs::create_dir(&dir).unwrap();
        let mut seen = Vec::new();
        for name in ["existing.txt", "secret.txt"] {
            let p = dir.join(name);
            std::fs::write(&p, CANARY).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
            let m = std::fs::metadata(&p).unwrap();
            seen.push((name.to_string(), CANARY.into(), m.mode(), m.uid(), m.gid()));
        }
        Canaries { dir, seen }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Nothing added next to them; each keeps its content, mode, owner, and has no other name.
    fn assert_intact(&self, after: &str) {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["existing.txt", "secret.txt"], "after {after}");
        for (name, content, mode, uid, gid) in &self.seen {
            let p = self.dir.join(name);
            let m = std::fs::metadata(&p).unwrap();
            assert_eq!(&std::fs::read(&p).unwrap(), content, "{name} after {after}");
            assert_eq!(
                (m.mode(), m.uid(), m.gid()),
                (*mode, *uid, *gid),
                "{name}'s mode and owner after {after}"
            );
            assert_eq!(m.nlink(), 1, "{name} got another name after {after}");
        }
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `supervisor.run_as: nobody` when the test runs as root (per-app users then own the
/// releases); the workspace is opened so that those users reach `data_dir`.
fn run_as(ws: &Workspace) -> &'static str {
    if !is_root() {
        return "";
    }
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    "  run_as: nobody\n"
}

/// `up` on ephemeral ports. Requests for an app without a release (a refused deploy) wait
/// `wake_timeout` for one: kept short.
fn up(ws: &Workspace, supervisor_extra: &str, apps: &str) -> Spinforge {
    let port = free_port();
    let yaml = format!(
        "edge:\n  listen_http: 127.0.0.1:{port}\n  grace: 2s\n  wake_timeout: 2s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\n{supervisor_extra}apps:\n{apps}",
        port_block()
    );
    let path = ws.write("spinforge.yaml", &yaml);
    Spinforge::start(ws, "up", &path, Some(([127, 0, 0, 1], port).into()))
}

/// A `.tar.gz` written entry by entry, with raw names and link targets: the tar crate's own
/// helpers refuse `..` and absolute names, and an attacker does not use them.
struct Tar {
    b: tar::Builder<flate2::write::GzEncoder<Vec<u8>>>,
}

impl Tar {
    fn new() -> Tar {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        Tar {
            b: tar::Builder::new(gz),
        }
    }

    fn header(kind: tar::EntryType, name: &str, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name = [0; 100];
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h
    }

    fn entry(mut self, kind: tar::EntryType, name: &str, link: &str, data: &[u8]) -> Tar {
        let mut h = Tar::header(kind, name, data.len() as u64);
        if kind == tar::EntryType::Directory {
            h.set_mode(0o755);
        }
        let gnu = h.as_gnu_mut().unwrap();
        gnu.linkname = [0; 100];
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn file(self, name: &str, body: &str) -> Tar {
        self.entry(tar::EntryType::Regular, name, "", body.as_bytes())
    }

    fn dir(self, name: &str) -> Tar {
        self.entry(tar::EntryType::Directory, name, "", b"")
    }

    fn symlink(self, name: &str, to: &str) -> Tar {
        self.entry(tar::EntryType::Symlink, name, to, b"")
    }

    fn hard_link(self, name: &str, to: &str) -> Tar {
        self.entry(tar::EntryType::Link, name, to, b"")
    }

    /// An entry of `kind` declaring `size` bytes of zeros.
    fn zeros(mut self, kind: tar::EntryType, name: &str, size: u64) -> Tar {
        let mut h = Tar::header(kind, name, size);
        h.set_cksum();
        self.b.append(&h, std::io::repeat(0).take(size)).unwrap();
        self
    }

    /// A GNU long-name record of `size` bytes (the tar reader holds it in memory), then a file.
    fn long_name(mut self, size: u64) -> Tar {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(size);
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_cksum();
        self.b.append(&h, std::io::repeat(b'a').take(size)).unwrap();
        self.file("x", "x")
    }

    fn gz(self) -> Vec<u8> {
        self.b.into_inner().unwrap().finish().unwrap()
    }
}

fn deep() -> String {
    (1..=14)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/")
}

/// Issue #13's archive, as a static site: folders d1/…/d14, `up` → 14 × `../` (the archive's
/// root), `up/out` → 15 × `../` + the canaries' folder, then hard links written through them:
/// `new.txt` and `existing.txt` outside, and `leak.txt` inside naming the outside secret.
fn the_chain(canaries: &Canaries, app_file: Option<&str>) -> Tar {
    let deep = deep();
    let mut t = Tar::new().file("index.html", "<h1>chain</h1>");
    if let Some(section) = app_file {
        t = t.file("spinforge.yaml", section);
    }
    let mut path = String::new();
    for i in 1..=14 {
        if i > 1 {
            path.push('/');
        }
        path.push_str(&format!("d{i}"));
        t = t.dir(&path);
    }
    t.file("payload.txt", "payload")
        .symlink(&format!("{deep}/up"), &"../".repeat(14))
        .symlink(
            &format!("{deep}/up/out"),
            &format!("{}{}", "../".repeat(15), canaries.dir.display()),
        )
        .hard_link(&format!("{deep}/up/out/new.txt"), "payload.txt")
        .hard_link(&format!("{deep}/up/out/existing.txt"), "payload.txt")
        .hard_link("leak.txt", &format!("{deep}/up/out/secret.txt"))
}

/// The hostile corpus for archives: (what, archive, status over the API, what the refusal says).
fn corpus(canaries: &Canaries) -> Vec<(&'static str, Vec<u8>, u16, &'static str)> {
    use tar::EntryType as T;
    let secret = canaries.path("secret.txt").display().to_string();
    let outside = canaries.dir.display().to_string();
    let site = || Tar::new().file("index.html", "<h1>x</h1>");
    vec![
        (
            "issue #13's chain",
            the_chain(canaries, None).gz(),
            400,
            "beneath the link",
        ),
        (
            "hard link out, by name",
            site().hard_link("leak.txt", &secret).gz(),
            400,
            "points outside",
        ),
        (
            "hard link out, by ..",
            site().hard_link("leak.txt", "../../x").gz(),
            400,
            "points outside",
        ),
        (
            "hard link over an existing file outside",
            site()
                .file("payload.txt", "payload")
                .dir("d")
                .symlink("d/up", "..")
                // Read as text from d/up/, this stays inside: `../..` + the path.
                .symlink("d/up/out", &format!("../..{outside}"))
                .hard_link("d/up/out/existing.txt", "payload.txt")
                .gz(),
            400,
            "beneath the link",
        ),
        (
            "symlink out",
            site().symlink("leak.txt", &secret).gz(),
            400,
            "points outside",
        ),
        (
            "symlink, then a file written through it",
            site()
                .dir("a")
                .symlink("a/up", "..")
                .file("a/up/written.txt", "x")
                .gz(),
            400,
            "beneath the link",
        ),
        (
            "links that leave only together",
            site()
                .dir("a/b")
                .symlink("a/b/up", "../..")
                .symlink("a/leak", "b/up/..")
                .gz(),
            400,
            "points outside",
        ),
        (
            "absolute name",
            site().file(&format!("{outside}/new.txt"), "x").gz(),
            400,
            "outside the archive's root",
        ),
        (
            "dot-dot name",
            site().file("a/../../new.txt", "x").gz(),
            400,
            "outside the archive's root",
        ),
        (
            "character device",
            site().entry(T::Char, "null", "", b"").gz(),
            400,
            "device",
        ),
        (
            "block device",
            site().entry(T::Block, "sda", "", b"").gz(),
            400,
            "device",
        ),
        (
            "FIFO",
            site().entry(T::Fifo, "pipe", "", b"").gz(),
            400,
            "FIFO",
        ),
        (
            "bomb: a file declared over the limit",
            site().zeros(T::Regular, "big.bin", 100 << 20).gz(),
            413,
            "unpacks to more than 64 MiB",
        ),
        (
            "bomb: data hidden in a folder entry",
            site().zeros(T::Directory, "d", 100 << 20).gz(),
            413,
            "unpacks to more than 64 MiB",
        ),
        (
            "bomb: zeros within the limit, far over the ratio",
            site().zeros(T::Regular, "zeros.bin", 48 << 20).gz(),
            413,
            "times its compressed size",
        ),
        (
            "bomb: a 1 MiB long name",
            site().long_name(1 << 20).gz(),
            413,
            "unpacks to more than 64 KiB of headers",
        ),
    ]
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn new(addr: SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    async fn upload(&self, app: &str, body: Vec<u8>) -> support::spinforge::Reply {
        let r = self
            .client
            .post(format!("{}/api/v1/apps/{app}/deploy", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/gzip")
            .body(body)
            .send()
            .await
            .expect("the admin API answers");
        support::spinforge::Reply::read(r).await
    }

    async fn get(&self, path: &str) -> support::spinforge::Reply {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("the admin API answers");
        support::spinforge::Reply::read(r).await
    }
}

/// Files anywhere under `dir` named `name`.
fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name() == name {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(find(&p, name));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_through_the_admin_api_are_refused_or_contained() {
    let ws = Workspace::new();
    let canaries = Canaries::new(&ws);
    let extra = format!("{}  builds:\n    max_archive_size: 64M\n", run_as(&ws));
    let apps = format!(
        "  site:\n    domains: [site.test]\n    source: {}\n",
        fixture("build").join("static-html").display()
    );
    let sf = up(&ws, &extra, &apps);
    let api = Api::new(sf.admin.unwrap());

    for (what, body, status, needle) in corpus(&canaries) {
        let r = api.upload("site", body).await;
        assert_eq!(r.status, status, "{what}: {}", r.body);
        let detail = r.json()["detail"].as_str().unwrap_or("").to_string();
        assert!(
            detail.contains(needle),
            "{what}: `{detail}` lacks `{needle}`"
        );
        canaries.assert_intact(what);
        let left: Vec<_> = std::fs::read_dir(ws.data_dir().join("uploads"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{what} left {left:?}");
    }

    // A control: links that stay inside are kept, and the site serves through them.
    let good = Tar::new()
        .file("index.html", "<h1>good</h1>")
        .symlink("alias.html", "index.html")
        .hard_link("copy.html", "index.html")
        .gz();
    let r = api.upload("site", good).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let build = r.json()["build"].as_str().unwrap().to_string();
    let log = api
        .get(&format!("/api/v1/builds/{build}/log?follow=1"))
        .await;
    assert!(log.body.contains("\"state\":\"succeeded\""), "{}", log.body);
    let http = sf.client();
    for page in ["/alias.html", "/copy.html"] {
        let body = eventually(Duration::from_secs(30), format!("{page} serves"), || {
            let http = http.clone();
            async move {
                let r = http.fetch("site.test", page).await;
                (r.status == 200).then_some(r.body)
            }
        })
        .await;
        assert!(body.contains("good"), "{page}: {body}");
    }
    let leak = http.fetch("site.test", "/leak.txt").await;
    assert!(!leak.body.contains(CANARY), "the secret was served");
    assert!(find(&ws.data_dir(), "new.txt").is_empty());
    canaries.assert_intact("the control");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_folder_refuses_hostile_folders_and_archives() {
    let ws = Workspace::new();
    let canaries = Canaries::new(&ws);
    let deploy = ws.path().join("deploy");
    std::fs::create_dir(&deploy).unwrap();
    let extra = format!(
        "{}  deploy_dir: {}\n  builds:\n    max_archive_size: 64M\n",
        run_as(&ws),
        deploy.display()
    );
    let sf = up(&ws, &extra, "");
    let section = |name: &str| format!("domains: [{name}.test]\nidle_timeout: 0\n");
    // Folders are made aside and moved in whole, as users should.
    let staging = ws.path().join("staging");
    let folder = |name: &str, build: &dyn Fn(&Path)| {
        let dir = staging.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("spinforge.yaml"), section(name)).unwrap();
        std::fs::write(dir.join("index.html"), format!("<h1>{name}</h1>")).unwrap();
        build(&dir);
        std::fs::rename(&dir, deploy.join(name)).unwrap();
    };
    let archive = |name: &str, tar: Tar| {
        let tmp = staging.join(format!("{name}.tar.gz"));
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(&tmp, tar.gz()).unwrap();
        std::fs::rename(&tmp, deploy.join(format!("{name}.tar.gz"))).unwrap();
    };

    // A link dropped in the deploy folder, to an archive its dropper may not be able to read.
    let elsewhere = ws.path().join("root-only.tar.gz");
    std::fs::write(
        &elsewhere,
        Tar::new()
            .file("spinforge.yaml", &section("sneaky"))
            .file("index.html", CANARY)
            .gz(),
    )
    .unwrap();
    std::os::unix::fs::symlink(&elsewhere, deploy.join("sneaky.tar.gz")).unwrap();
    let secret = canaries.path("secret.txt");
    folder("linked", &|d| {
        std::os::unix::fs::symlink(&secret, d.join("leak.txt")).unwrap();
    });
    folder("relative", &|d| {
        // From deploy/relative/: up two is the workspace, where `outside/` is.
        std::os::unix::fs::symlink("../../outside/secret.txt", d.join("leak.txt")).unwrap();
    });
    folder("piped", &|d| {
        let ok = std::process::Command::new("mkfifo")
            .arg(d.join("pipe"))
            .status()
            .unwrap();
        assert!(ok.success());
    });
    folder("fine", &|d| {
        std::os::unix::fs::symlink("index.html", d.join("alias.html")).unwrap();
    });
    archive("chain", the_chain(&canaries, Some(&section("chain"))));
    archive(
        "bomb",
        Tar::new().file("spinforge.yaml", &section("bomb")).zeros(
            tar::EntryType::Regular,
            "zeros.bin",
            48 << 20,
        ),
    );

    let marker = |name: &str| {
        let deploy = deploy.clone();
        let name = name.to_string();
        async move {
            eventually(
                Duration::from_secs(120),
                format!("a marker for {name}"),
                || {
                    let (deploy, name) = (deploy.clone(), name.clone());
                    async move {
                        ["deployed", "failed"].iter().find_map(|kind| {
                            std::fs::read_to_string(deploy.join(format!("{name}.{kind}")))
                                .ok()
                                .map(|t| (*kind, t))
                        })
                    }
                },
            )
            .await
        }
    };
    for (name, needle) in [
        ("linked", "points outside the source folder"),
        ("relative", "points outside the source folder"),
        ("piped", "FIFO"),
        ("chain", "beneath the link"),
        ("bomb", "times its compressed size"),
    ] {
        let (kind, text) = marker(name).await;
        assert_eq!(kind, "failed", "{name}: {text}");
        assert!(text.contains(needle), "{name}: {text}");
        canaries.assert_intact(name);
    }
    let (kind, text) = marker("fine").await;
    assert_eq!(kind, "deployed", "the control: {text}");
    let http = sf.client();
    let alias = http.fetch("fine.test", "/alias.html").await;
    assert_eq!(alias.status, 200, "{}", alias.body);
    assert!(alias.body.contains("fine"), "{}", alias.body);
    for host in ["linked.test", "relative.test", "chain.test"] {
        let r = http.fetch(host, "/leak.txt").await;
        assert!(!r.body.contains(CANARY), "{host} served the secret");
    }
    for kind in ["deployed", "failed"] {
        assert!(
            !deploy.join(format!("sneaky.{kind}")).exists(),
            "a link in the deploy folder is not followed"
        );
    }
    let sneaky = http.fetch("sneaky.test", "/").await;
    assert!(!sneaky.body.contains(CANARY), "{}", sneaky.body);
    assert!(find(&ws.data_dir(), "new.txt").is_empty());
    canaries.assert_intact("the deploy folder");
}

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bare repository `<name>.git` holding one commit of an index.html and what `add` puts next
/// to it.
fn bare_repo(ws: &Workspace, name: &str, add: &dyn Fn(&Path)) -> PathBuf {
    let work = ws.path().join(format!("{name}-work"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("index.html"), format!("<h1>{name}</h1>")).unwrap();
    add(&work);
    git(&work, &["init", "-q"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "one"]);
    let bare = ws.path().join(format!("{name}.git"));
    git(
        ws.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    bare
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_source_committing_a_link_out_is_refused() {
    let ws = Workspace::new();
    let canaries = Canaries::new(&ws);
    let secret = canaries.path("secret.txt");
    let leaky = bare_repo(&ws, "leaky", &|d| {
        std::os::unix::fs::symlink(&secret, d.join("leak.txt")).unwrap();
    });
    let climbing = bare_repo(&ws, "climbing", &|d| {
        std::os::unix::fs::symlink("../../../../../../../../../../etc/passwd", d.join("passwd"))
            .unwrap();
    });
    let fine = bare_repo(&ws, "fine", &|d| {
        std::os::unix::fs::symlink("index.html", d.join("alias.html")).unwrap();
    });
    let apps: String = [("leaky", &leaky), ("climbing", &climbing), ("fine", &fine)]
        .iter()
        .map(|(name, repo)| {
            format!(
                "  {name}:\n    domains: [{name}.test]\n    source: file://{}\n",
                repo.display()
            )
        })
        .collect();
    let sf = up(&ws, "", &apps);
    let logs = |app: &str| {
        let mut out = String::new();
        for e in std::fs::read_dir(ws.data_dir().join("logs/builds"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{app}-"))
            {
                out += &std::fs::read_to_string(e.path()).unwrap_or_default();
            }
        }
        out
    };
    for app in ["leaky", "climbing"] {
        assert_eventually!(
            timeout = Duration::from_secs(60),
            logs(app).contains("points outside the checkout"),
            "{app}'s checkout is refused with a clear error:\n{}",
            logs(app)
        );
        let releases = ws.data_dir().join("apps").join(app).join("releases");
        let kept = std::fs::read_dir(&releases).map(|r| r.count()).unwrap_or(0);
        assert_eq!(kept, 0, "nothing of {app}'s checkout is kept");
    }
    let http = sf.client();
    let alias = eventually(Duration::from_secs(60), "the control serves", || {
        let http = http.clone();
        async move {
            let r = http.fetch("fine.test", "/alias.html").await;
            (r.status == 200).then_some(r.body)
        }
    })
    .await;
    assert!(alias.contains("fine"), "{alias}");
    let leak = http.fetch("leaky.test", "/leak.txt").await;
    assert!(!leak.body.contains(CANARY), "the secret was served");
    canaries.assert_intact("the git sources");
}
