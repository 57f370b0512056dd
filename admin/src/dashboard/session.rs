//! Dashboard sessions: the admin token exchanged for a random session id in a cookie, a CSRF
//! token per session, and the rate limit on failed sign-ins.
//!
//! Every map here is fed by clients and bounded: at most [`MAX_SESSIONS`] sessions (the oldest
//! goes when a new one would not fit) and failed sign-ins tracked for at most
//! [`MAX_TRACKED_CLIENTS`] addresses per window. Ids and CSRF tokens are 32 bytes from the
//! operating system's CSPRNG (`ring::rand::SystemRandom`); a session is found by the blake3 hash
//! of its id, and CSRF tokens are compared in constant time.

use crate::connections::client_of;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie.
pub(crate) const COOKIE: &str = "spinforge_session";
/// The sign-in form's own CSRF cookie (double submit: nobody is signed in yet).
pub(crate) const LOGIN_COOKIE: &str = "spinforge_signin";
/// How long a session lasts from sign-in; then the token is asked again.
pub(crate) const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; a sign-in beyond them ends the oldest.
pub(crate) const MAX_SESSIONS: usize = 256;
/// Failed sign-ins one address (an IPv6 /64) may make per [`FAILURE_WINDOW`]…
pub(crate) const FAILURES_PER_CLIENT: u32 = 5;
/// …and all addresses together (a token is 2^128 guesses or more: this only keeps the audit
/// log and the CPU quiet).
pub(crate) const FAILURES_IN_ALL: u32 = 100;
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses with failures tracked in one window; beyond, only the total counts.
const MAX_TRACKED_CLIENTS: usize = 4096;

/// A signed-in browser.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The CSRF token every change from this session must carry.
    pub csrf: String,
    /// Who signed in, for the audit log: the token's id (`local` without a token).
    pub caller: String,
    created: Instant,
}

/// The dashboard's state, kept in the admin API's context.
#[derive(Debug)]
pub(crate) struct Sessions {
    /// By blake3 hash of the session id.
    open: Mutex<HashMap<[u8; 32], Session>>,
    failures: Mutex<Failures>,
    rng: ring::rand::SystemRandom,
}

#[derive(Debug)]
struct Failures {
    window: Instant,
    total: u32,
    per_client: HashMap<IpAddr, u32>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            open: Mutex::new(HashMap::new()),
            failures: Mutex::new(Failures {
                window: Instant::now(),
                total: 0,
                per_client: HashMap::new(),
            }),
            rng: ring::rand::SystemRandom::new(),
        }
    }
}

fn key(id: &str) -> [u8; 32] {
    *blake3::hash(id.as_bytes()).as_bytes()
}

/// Constant-time equality of two strings (their lengths are not secret).
pub(crate) fn same(a: &str, b: &str) -> bool {
    crate::auth::same_bytes(a.as_bytes(), b.as_bytes())
}

impl Sessions {
    /// 32 random bytes, hex.
    pub fn random(&self) -> String {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 32];
        // The system's CSPRNG does not fail on Linux once booted; refuse to go on if it does.
        self.rng
            .fill(&mut b)
            .expect("the operating system's random number generator failed");
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// A new session for `caller`: its id (for the cookie) and the session.
    pub fn open(&self, caller: &str) -> (String, Session) {
        let id = self.random();
        let session = Session {
            csrf: self.random(),
            caller: caller.to_string(),
            created: Instant::now(),
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, s| s.created.elapsed() < LIFETIME);
        while open.len() >= MAX_SESSIONS {
            let oldest = open.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k);
            match oldest {
                Some(k) => open.remove(&k),
                None => break,
            };
        }
        open.insert(key(&id), session.clone());
        (id, session)
    }

    /// The live session with this id.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(id);
        match open.get(&k) {
            Some(s) if s.created.elapsed() < LIFETIME => Some(s.clone()),
            Some(_) => {
                open.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Ends a session (sign-out).
    pub fn close(&self, id: &str) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&key(id));
    }

    /// Seconds a client must wait before trying to sign in again, or `None` when it may try.
    pub fn limited(&self, ip: IpAddr) -> Option<u64> {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.roll();
        let client = client_of(ip);
        let over = f.total >= FAILURES_IN_ALL
            || f.per_client.get(&client).copied().unwrap_or(0) >= FAILURES_PER_CLIENT;
        over.then(|| {
            FAILURE_WINDOW
                .saturating_sub(f.window.elapsed())
                .as_secs()
                .max(1)
        })
    }

    /// Counts a failed sign-in from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.roll();
        f.total = f.total.saturating_add(1);
        let client = client_of(ip);
        if f.per_client.len() < MAX_TRACKED_CLIENTS || f.per_client.contains_key(&client) {
            let n = f.per_client.entry(client).or_insert(0);
            *n = n.saturating_add(1);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }
}

impl Failures {
    fn roll(&mut self) {
        if self.window.elapsed() >= FAILURE_WINDOW {
            self.window = Instant::now();
            self.total = 0;
            self.per_client.clear();
        }
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Whether the browser reached us over HTTPS: directly, or through a proxy that says so. A
/// client that lies only makes its own cookie unusable over plain HTTP.
pub(crate) fn https(req: &http::request::Parts) -> bool {
    if req.uri.scheme_str() == Some("https") {
        return true;
    }
    let h = &req.headers;
    let forwarded_proto = h
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let forwarded = h
        .get(http::header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
    forwarded_proto || forwarded
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Secure over HTTPS, on `path`, lasting
/// `max_age` (0 deletes it).
pub(crate) fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: Duration,
    secure: bool,
) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_random_bounded_and_closed() {
        let s = Sessions::default();
        let (a, sa) = s.open("tok");
        let (b, _) = s.open("tok");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_ne!(sa.csrf, a);
        assert_eq!(s.get(&a).unwrap().csrf, sa.csrf);
        assert!(s.get("nope").is_none());
        s.close(&a);
        assert!(s.get(&a).is_none());
        for _ in 0..MAX_SESSIONS + 10 {
            s.open("x");
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        // The oldest went first.
        assert!(s.get(&b).is_none());
    }

    #[test]
    fn failures_are_limited_per_client_and_in_all() {
        let s = Sessions::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..FAILURES_PER_CLIENT {
            assert!(s.limited(a).is_none());
            s.failed(a);
        }
        assert!(s.limited(a).is_some_and(|w| w <= 60));
        assert!(s.limited(b).is_none());
        // One IPv6 /64 is one client.
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..FAILURES_PER_CLIENT {
            s.failed(v6);
        }
        assert!(s.limited("2001:db8::ffff".parse().unwrap()).is_some());
        for i in 0..FAILURES_IN_ALL {
            s.failed(IpAddr::from([10, 0, (i >> 8) as u8, i as u8]));
        }
        assert!(s.limited(b).is_some());
    }

    #[test]
    fn cookies_and_comparison() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; spinforge_session=abc".parse().unwrap(),
        );
        h.append(http::header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        let c = set_cookie(COOKIE, "x", "/", LIFETIME, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(!set_cookie(COOKIE, "x", "/", LIFETIME, false).contains("Secure"));
    }
}
