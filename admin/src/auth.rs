//! The bearer token: kept only as a hash, compared in constant time, and named in logs by a
//! short id that cannot be turned back into the token.

/// The configured token.
pub(crate) struct Token {
    hash: [u8; 32],
    pub id: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("id", &self.id).finish()
    }
}

/// A token's id for the audit log: the start of a hash of it, never the token itself.
pub fn token_id(token: &str) -> String {
    let hash = blake3::derive_key("spinforge admin token id v1", token.as_bytes());
    hash[..6].iter().map(|b| format!("{b:02x}")).collect()
}

impl Token {
    pub fn new(token: &str) -> Token {
        Token {
            hash: *blake3::hash(token.as_bytes()).as_bytes(),
            id: token_id(token),
        }
    }

    /// Whether `given` is the token. Both sides are hashed first, so the comparison takes the
    /// same time whatever the length or content of `given`.
    pub fn matches(&self, given: &str) -> bool {
        let given = blake3::hash(given.as_bytes());
        // blake3::Hash's PartialEq is constant-time too; spelled out so that stays true.
        let mut diff = 0u8;
        for (a, b) in self.hash.iter().zip(given.as_bytes()) {
            diff |= a ^ b;
        }
        diff == 0
    }
}

/// Who is asking, once the token checked out.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// The token matched: its id.
    Token(String),
    /// No token is configured (loopback only).
    Local,
}

impl Caller {
    pub fn id(&self) -> &str {
        match self {
            Caller::Token(id) => id,
            Caller::Local => "local",
        }
    }
}

/// Checks the `Authorization` header against `token`.
pub(crate) fn check(
    token: Option<&Token>,
    header: Option<&http::HeaderValue>,
) -> Result<Caller, &'static str> {
    let Some(token) = token else {
        return Ok(Caller::Local);
    };
    let Some(value) = header else {
        return Err("this endpoint needs `Authorization: Bearer <token>`");
    };
    let value = value.to_str().unwrap_or("");
    let Some(given) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Err("the Authorization header must be `Bearer <token>`");
    };
    if token.matches(given.trim()) {
        Ok(Caller::Token(token.id.clone()))
    } else {
        Err("the token is not valid")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_token() {
        let t = Token::new("s3cret");
        assert!(t.matches("s3cret"));
        assert!(!t.matches("s3cret "));
        assert!(!t.matches(""));
        assert!(!t.matches("s3cre"));
        assert_ne!(t.id, "s3cret");
        assert_eq!(t.id.len(), 12);
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn header_forms() {
        let t = Token::new("abc");
        let h = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert!(check(Some(&t), Some(&h("Bearer abc"))).is_ok());
        assert!(check(Some(&t), Some(&h("Bearer abd"))).is_err());
        assert!(check(Some(&t), Some(&h("Basic abc"))).is_err());
        assert!(check(Some(&t), None).is_err());
        assert!(check(None, None).is_ok());
    }
}
