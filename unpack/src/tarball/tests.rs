use super::*;
use std::io::Write;
use std::os::unix::fs::MetadataExt;

/// Builds hostile archives byte by byte: the tar crate's own helpers refuse `..` and absolute
/// names, and an attacker does not use them.
struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Tar {
    fn new() -> Tar {
        Tar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, name: &str, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        let gnu = h.as_gnu_mut().expect("gnu");
        gnu.name = [0; 100];
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h
    }

    fn raw(mut self, mut h: tar::Header, link: Option<&str>, data: &[u8]) -> Tar {
        if let Some(link) = link {
            let gnu = h.as_gnu_mut().expect("gnu");
            gnu.linkname = [0; 100];
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        self.b.append(&h, data).expect("append");
        self
    }

    fn file(self, name: &str, body: &str) -> Tar {
        let h = Tar::header(tar::EntryType::Regular, name, body.len() as u64);
        self.raw(h, None, body.as_bytes())
    }

    fn dir(self, name: &str) -> Tar {
        let h = Tar::header(tar::EntryType::Directory, name, 0);
        self.raw(h, None, &[])
    }

    fn symlink(self, name: &str, to: &str) -> Tar {
        let h = Tar::header(tar::EntryType::Symlink, name, 0);
        self.raw(h, Some(to), &[])
    }

    fn hard_link(self, name: &str, to: &str) -> Tar {
        let h = Tar::header(tar::EntryType::Link, name, 0);
        self.raw(h, Some(to), &[])
    }

    fn special(self, kind: tar::EntryType, name: &str) -> Tar {
        let h = Tar::header(kind, name, 0);
        self.raw(h, None, &[])
    }

    fn gz(self) -> Vec<u8> {
        gzip(&self.b.into_inner().expect("tar"))
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// A test folder: `archive.tar.gz`, `out/` (where it unpacks) and `outside/` with a canary.
struct Case {
    dir: tempfile::TempDir,
}

const CANARY: &str = "the canary's own content";

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("outside")).expect("mkdir");
        for f in ["existing.txt", "secret.txt"] {
            std::fs::write(dir.path().join("outside").join(f), CANARY).expect("write");
        }
        Case { dir }
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn unpack(&self, archive: Vec<u8>, limits: Limits) -> Result<(), Error> {
        let path = self.dir.path().join("archive.tar.gz");
        std::fs::write(&path, archive).expect("write archive");
        unpack_tar_gz(&path, &self.out(), &limits)
    }

    /// Refused with `want` in the message, and nothing written anywhere.
    fn refused(&self, archive: Vec<u8>, want: &str) -> String {
        let err = self
            .unpack(archive, Limits::new(1 << 20))
            .expect_err(want)
            .to_string();
        assert!(err.contains(want), "`{err}` does not say `{want}`");
        self.assert_untouched();
        err
    }

    fn assert_untouched(&self) {
        assert!(!self.out().exists(), "a refused archive leaves nothing");
        let mut names: Vec<String> = std::fs::read_dir(self.outside())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["existing.txt", "secret.txt"]);
        for f in ["existing.txt", "secret.txt"] {
            let p = self.outside().join(f);
            assert_eq!(std::fs::read_to_string(&p).expect("read"), CANARY);
            assert_eq!(
                std::fs::metadata(&p).expect("stat").nlink(),
                1,
                "{f} got a hard link"
            );
        }
    }
}

fn deep() -> String {
    (1..=14)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/")
}

/// The archive of issue #13: a link back to the root from 14 folders down, a link through it to
/// an absolute folder outside, then hard links written through both.
fn the_chain(outside: &Path) -> Vec<u8> {
    let deep = deep();
    let mut t = Tar::new();
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
            &format!("{}{}", "../".repeat(15), outside.display()),
        )
        .hard_link(&format!("{deep}/up/out/new.txt"), "payload.txt")
        .hard_link(&format!("{deep}/up/out/existing.txt"), "payload.txt")
        .hard_link("leak.txt", &format!("{deep}/up/out/secret.txt"))
        .gz()
}

#[test]
fn unpacks_and_unwraps_one_top_folder() {
    let c = Case::new();
    let archive = Tar::new()
        .dir("app")
        .file("app/package.json", "{}")
        .file("app/src/a.js", "1")
        .symlink("app/src/b.js", "a.js")
        .symlink("app/up", "src/../package.json")
        .hard_link("app/src/c.js", "app/src/a.js")
        .gz();
    c.unpack(archive, Limits::new(1 << 20)).expect("unpack");
    let out = c.out();
    assert_eq!(
        std::fs::read_to_string(out.join("package.json")).expect("read"),
        "{}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("src/b.js")).expect("read"),
        "1"
    );
    assert_eq!(std::fs::read_to_string(out.join("up")).expect("read"), "{}");
    let (a, h) = (
        std::fs::metadata(out.join("src/a.js")).expect("stat"),
        std::fs::metadata(out.join("src/c.js")).expect("stat"),
    );
    assert_eq!(a.ino(), h.ino(), "an in-archive hard link stays one");
    assert!(!out.join("app").exists());
}

#[test]
fn the_issue_chain_is_refused_before_anything_is_written() {
    let c = Case::new();
    let err = c.refused(the_chain(&c.outside()), "beneath the link");
    assert!(err.contains(&format!("{}/up", deep())), "{err}");
}

#[test]
fn writes_through_links_are_refused_even_to_inside() {
    let c = Case::new();
    c.refused(
        Tar::new()
            .dir("real")
            .symlink("alias", "real")
            .file("alias/x.js", "x")
            .gz(),
        "beneath the link `alias`",
    );
    c.refused(
        Tar::new()
            .dir("a/b")
            .symlink("a/b/up", "../..")
            .file("a/b/up/escaped.txt", "x")
            .gz(),
        "beneath the link",
    );
}

#[test]
fn links_out_are_refused_by_name_and_by_resolution() {
    let c = Case::new();
    let secret = c.outside().join("secret.txt");
    for (name, to) in [
        ("link", "../../etc"),
        ("abs", "/etc/passwd"),
        ("leak", secret.to_str().expect("utf-8")),
        ("a/b/c", "../../../x"),
    ] {
        c.refused(
            Tar::new().symlink(name, to).gz(),
            "points outside the archive's root",
        );
    }
    // Read alone, each link stays inside; resolved where they are, the second one leaves:
    // `a/b/up` is the root, and `..` from there is outside. Only the kernel's resolution sees it.
    c.refused(
        Tar::new()
            .file("f", "1")
            .dir("a/b")
            .symlink("a/b/up", "../..")
            .symlink("a/leak", "b/up/..")
            .gz(),
        "link `a/leak` points outside the archive's root",
    );
    // Unwrapping the top folder moves the root: `app/x -> ../y` then leaves it.
    c.refused(
        Tar::new()
            .dir("app")
            .symlink("app/x", "../y")
            .file("app/f", "1")
            .gz(),
        "points outside",
    );
}

#[test]
fn hard_links_reach_only_files_already_inside() {
    let c = Case::new();
    c.refused(Tar::new().hard_link("hl", "../x").gz(), "points outside");
    let secret = c.outside().join("secret.txt");
    c.refused(
        Tar::new()
            .hard_link("hl", secret.to_str().expect("utf-8"))
            .gz(),
        "points outside",
    );
    c.refused(
        Tar::new()
            .hard_link("hl", "later.txt")
            .file("later.txt", "x")
            .gz(),
        "not a file earlier",
    );
    c.refused(
        Tar::new()
            .dir("a/b")
            .symlink("a/b/up", "../..")
            .hard_link("leak", "a/b/up/x")
            .gz(),
        "not a file earlier",
    );
    c.refused(
        Tar::new().dir("d").hard_link("hl", "d").gz(),
        "not a file earlier",
    );
}

#[test]
fn a_hard_link_over_an_existing_file_replaces_the_name_not_the_content() {
    let c = Case::new();
    let archive = Tar::new()
        .file("a.txt", "A")
        .hard_link("b.txt", "a.txt")
        .file("c.txt", "C")
        .hard_link("b.txt", "c.txt")
        .file("a.txt", "A2")
        .gz();
    c.unpack(archive, Limits::new(1 << 20)).expect("unpack");
    let read = |f: &str| std::fs::read_to_string(c.out().join(f)).expect("read");
    assert_eq!(read("b.txt"), "C", "b.txt now names c.txt's file");
    assert_eq!(read("c.txt"), "C");
    assert_eq!(read("a.txt"), "A2");
    let (b, c_meta) = (
        std::fs::metadata(c.out().join("b.txt")).expect("stat"),
        std::fs::metadata(c.out().join("c.txt")).expect("stat"),
    );
    assert_eq!(b.ino(), c_meta.ino());
}

#[test]
fn folders_are_never_replaced() {
    let c = Case::new();
    c.refused(
        Tar::new().file("d/x", "1").symlink("d", ".").gz(),
        "would replace a folder",
    );
}

#[test]
fn absolute_and_dot_dot_names_are_refused() {
    let c = Case::new();
    for name in ["../evil.js", "/etc/evil", "a/../../evil.js"] {
        c.refused(
            Tar::new().file(name, "x").gz(),
            "points outside the archive's root",
        );
    }
    assert!(!c.dir.path().join("evil.js").exists());
}

#[test]
fn devices_and_fifos_are_refused() {
    let c = Case::new();
    for kind in [
        tar::EntryType::Char,
        tar::EntryType::Block,
        tar::EntryType::Fifo,
    ] {
        let err = c.refused(Tar::new().special(kind, "dev").gz(), "device");
        assert!(err.contains("FIFO"), "{err}");
    }
}

#[test]
fn sizes_declared_in_headers_are_bounded_before_the_data_is_read() {
    let c = Case::new();
    c.refused(
        Tar::new().file("big.bin", &"x".repeat(2 << 20)).gz(),
        "unpacks to more than 1 MiB",
    );
    // Data carried by a folder entry counts too (the tar reader skips it, but inflates it).
    let mut h = Tar::header(tar::EntryType::Directory, "d", 4 << 20);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, std::io::repeat(0).take(4 << 20))
        .expect("append");
    c.refused(
        gzip(&b.into_inner().expect("tar")),
        "unpacks to more than 1 MiB",
    );
}

#[test]
fn a_decompression_bomb_stops_early() {
    let c = Case::new();
    // 256 MiB of zeros in one file, about 256 KiB compressed: within the size limit, far over
    // the ratio.
    let mut h = Tar::header(tar::EntryType::Regular, "zeros.bin", 256 << 20);
    h.set_cksum();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    {
        let mut b = tar::Builder::new(&mut e);
        b.append(&h, std::io::repeat(0).take(256 << 20))
            .expect("append");
        b.finish().expect("tar");
    }
    let bomb = e.finish().expect("gzip");
    let path = c.dir.path().join("bomb.tar.gz");
    std::fs::write(&path, bomb).expect("write");
    let started = std::time::Instant::now();
    let err = unpack_tar_gz(&path, &c.out(), &Limits::new(1 << 30))
        .expect_err("bomb")
        .to_string();
    assert!(err.contains("times its compressed size"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    c.assert_untouched();
}

#[test]
fn a_bomb_in_a_long_name_stops_at_the_header_allowance() {
    let c = Case::new();
    // A GNU long name of 1 MiB: the tar reader would hold it all in memory.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(1 << 20);
    h.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"././@LongLink");
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, std::io::repeat(b'a').take(1 << 20))
        .expect("append");
    let file = Tar::header(tar::EntryType::Regular, "x", 0);
    let mut file = file;
    file.set_cksum();
    b.append(&file, &[][..]).expect("append");
    c.refused(
        gzip(&b.into_inner().expect("tar")),
        "unpacks to more than 64 KiB of headers",
    );
}

#[test]
fn entries_are_counted() {
    let c = Case::new();
    let archive = Tar::new()
        .file("a", "1")
        .file("b", "2")
        .file("c", "3")
        .file("d", "4")
        .gz();
    let err = c
        .unpack(
            archive,
            Limits {
                max_bytes: 1 << 20,
                max_entries: 3,
            },
        )
        .expect_err("too many")
        .to_string();
    assert!(err.contains("more than 3 entries"), "{err}");
}

#[test]
fn the_target_must_be_empty_and_a_refusal_removes_it() {
    let c = Case::new();
    std::fs::create_dir(c.out()).expect("mkdir");
    std::fs::write(c.out().join("old"), "x").expect("write");
    assert!(
        c.unpack(Tar::new().file("a", "1").gz(), Limits::new(1 << 20))
            .is_err()
    );
    assert!(
        c.out().join("old").exists(),
        "a folder in use is not touched"
    );
}

#[test]
fn garbage_is_an_unreadable_archive() {
    let c = Case::new();
    c.refused(b"just some text".to_vec(), "gzip");
    c.refused(gzip(&[7u8; 3000]), "unreadable archive");
}

#[test]
fn the_writer_links_only_regular_files_whatever_the_plan_says() {
    let c = Case::new();
    let root = Root::create(&c.out()).expect("root");
    std::fs::write(c.out().join("file"), "f").expect("write");
    std::fs::create_dir(c.out().join("dir")).expect("mkdir");
    std::os::unix::fs::symlink(c.outside().join("secret.txt"), c.out().join("link")).expect("ln");
    hard_link(&root, Path::new("file"), Path::new("ok")).expect("a file");
    for target in ["link", "dir", "missing"] {
        let refused = hard_link(&root, Path::new(target), Path::new("h"));
        assert!(refused.is_err(), "{target}");
        assert!(!c.out().join("h").exists(), "{target}");
    }
    assert_eq!(
        std::fs::read_to_string(c.outside().join("secret.txt")).expect("read"),
        CANARY
    );
}
