//! Bearer tokens: who may read or write which accounts.
//!
//! The tokens file is read once at start and checked whole (every problem names the entry at
//! fault). A presented token is compared with every known token in constant time: the same
//! work whatever the secret holds, no early exit, so the time taken tells nothing about how
//! much of a secret was guessed. Tokens are never logged: an entry is known in logs by its
//! place in the file (`tokens[2]`).

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// The longest token accepted; every comparison runs over this many bytes.
pub const MAX_TOKEN_LEN: usize = 256;
/// The shortest token accepted in a tokens file: a short secret can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// Which accounts a token may see (and, with read-write access, act for).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accounts {
    /// Every account, and the platform-wide commands (`set_price`, `set_policy`, advance).
    All,
    Only(BTreeSet<String>),
}

impl Accounts {
    pub fn allows(&self, account: &str) -> bool {
        match self {
            Accounts::All => true,
            Accounts::Only(set) => set.contains(account),
        }
    }
}

/// The caller a valid token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The entry's place in the tokens file, for logs (never the token itself).
    pub entry: usize,
    pub accounts: Accounts,
    pub access: Access,
}

struct Entry {
    /// The secret, zero-padded to the comparison width.
    secret: [u8; MAX_TOKEN_LEN],
    len: usize,
    grant: Grant,
}

/// The known tokens.
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    // Never the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("count", &self.entries.len()).finish()
    }
}

/// What is wrong with a tokens file, and where (`tokens[1].access`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TokensError {
    pub path: String,
    pub message: String,
}

fn fail<T>(path: impl Into<String>, message: impl Into<String>) -> Result<T, TokensError> {
    Err(TokensError { path: path.into(), message: message.into() })
}

impl Tokens {
    /// Read and check a tokens file.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).or_else(|e| fail(path.display().to_string(), format!("cannot read it: {e}")))?;
        Tokens::parse(&text)
    }

    /// `{"tokens": [{"token": "…", "accounts": "*" | ["acct-1", …], "access": "read" | "read-write"}]}`.
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let value: Value = serde_json::from_str(text).or_else(|e| fail("(file)", format!("not valid JSON: {e}")))?;
        let Some(top) = value.as_object() else { return fail("(file)", "not a JSON object") };
        if let Some(other) = top.keys().find(|k| *k != "tokens") {
            return fail(other.as_str(), "unknown field (only \"tokens\" is read)");
        }
        let Some(list) = top.get("tokens").and_then(Value::as_array) else { return fail("tokens", "a list of tokens is needed") };
        if list.is_empty() {
            return fail("tokens", "the list is empty: nobody could call the API");
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let entry = entry(item, i)?;
            if entries.iter().any(|e| e.len == entry.len && e.secret == entry.secret) {
                return fail(format!("tokens[{i}].token"), "the same token is listed twice");
            }
            entries.push(entry);
        }
        Ok(Tokens { entries })
    }

    /// The grant of `presented`, if it is a known token. Every entry is compared, in full.
    pub fn find(&self, presented: &str) -> Option<&Grant> {
        let presented = presented.as_bytes();
        if presented.len() > MAX_TOKEN_LEN {
            return None;
        }
        let mut padded = [0u8; MAX_TOKEN_LEN];
        padded[..presented.len()].copy_from_slice(presented);
        // Tokens are unique, so at most one entry matches: its place + 1, or 0.
        let mut found = 0usize;
        for (i, entry) in self.entries.iter().enumerate() {
            let same = same_secret(&padded, presented.len(), &entry.secret, entry.len);
            found |= usize::from(same) * (i + 1);
        }
        found.checked_sub(1).map(|i| &self.entries[i].grant)
    }
}

fn entry(item: &Value, i: usize) -> Result<Entry, TokensError> {
    let path = format!("tokens[{i}]");
    let Some(obj) = item.as_object() else { return fail(path, "an object is needed") };
    if let Some(other) = obj.keys().find(|k| !["token", "accounts", "access"].contains(&k.as_str())) {
        return fail(format!("{path}.{other}"), "unknown field (token, accounts and access are read)");
    }
    let token = match obj.get("token").and_then(Value::as_str) {
        Some(t) if t.len() < MIN_TOKEN_LEN || t.len() > MAX_TOKEN_LEN => {
            return fail(format!("{path}.token"), format!("{} bytes long; a token has {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN}", t.len()))
        }
        // What a client can send in an Authorization header: visible ASCII.
        Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => return fail(format!("{path}.token"), "only visible ASCII characters (no spaces)"),
        Some(t) => t,
        None => return fail(format!("{path}.token"), "a string is needed"),
    };
    let accounts = match obj.get("accounts") {
        Some(Value::String(s)) if s == "*" => Accounts::All,
        Some(Value::Array(ids)) => {
            let mut set = BTreeSet::new();
            for (k, id) in ids.iter().enumerate() {
                match id.as_str() {
                    Some(id) if !id.is_empty() && id != "*" => set.insert(id.to_string()),
                    _ => return fail(format!("{path}.accounts[{k}]"), "an account id is needed"),
                };
            }
            if set.is_empty() {
                return fail(format!("{path}.accounts"), "no accounts: the token could do nothing");
            }
            Accounts::Only(set)
        }
        _ => return fail(format!("{path}.accounts"), "\"*\" or a list of account ids is needed"),
    };
    let access = match obj.get("access").and_then(Value::as_str) {
        Some("read") => Access::Read,
        Some("read-write") => Access::ReadWrite,
        _ => return fail(format!("{path}.access"), "\"read\" or \"read-write\" is needed"),
    };
    let mut secret = [0u8; MAX_TOKEN_LEN];
    secret[..token.len()].copy_from_slice(token.as_bytes());
    Ok(Entry { secret, len: token.len(), grant: Grant { entry: i, accounts, access } })
}

/// Whether two zero-padded secrets are equal, in time that does not depend on their contents:
/// every byte is compared, the differences are folded together, there is no early exit.
fn same_secret(a: &[u8; MAX_TOKEN_LEN], a_len: usize, b: &[u8; MAX_TOKEN_LEN], b_len: usize) -> bool {
    let mut diff = (a_len ^ b_len) as u64;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= u64::from(x ^ y);
    }
    // Keep the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer …` header value (the scheme is case-insensitive).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{"tokens": [
        {"token": "admin-0123456789abcdef", "accounts": "*", "access": "read-write"},
        {"token": "reader-0123456789abcdef", "accounts": ["acct-1", "acct-2"], "access": "read"}
    ]}"#;

    #[test]
    fn a_known_token_finds_its_grant_and_nothing_else_does() {
        let tokens = Tokens::parse(FILE).unwrap();
        let admin = tokens.find("admin-0123456789abcdef").unwrap();
        assert_eq!((admin.entry, &admin.accounts, admin.access), (0, &Accounts::All, Access::ReadWrite));
        let reader = tokens.find("reader-0123456789abcdef").unwrap();
        assert_eq!(reader.access, Access::Read);
        assert!(reader.accounts.allows("acct-2") && !reader.accounts.allows("acct-3"));
        // A prefix, an extension, one byte off, and an overlong token find nothing.
        for wrong in ["admin-0123456789abcde", "admin-0123456789abcdef0", "admin-0123456789abcdeF", "", &"x".repeat(300)] {
            assert!(tokens.find(wrong).is_none(), "{wrong:?}");
        }
    }

    #[test]
    fn a_bad_tokens_file_names_the_entry_at_fault() {
        let cases = [
            (r#"{"tokens": []}"#, "tokens"),
            (r#"{"tokens": [{"token": "short", "accounts": "*", "access": "read"}]}"#, "tokens[0].token"),
            (r#"{"tokens": [{"token": "0123456789abcdefg", "accounts": "all", "access": "read"}]}"#, "tokens[0].accounts"),
            (r#"{"tokens": [{"token": "0123456789abcdefg", "accounts": ["a", 3], "access": "read"}]}"#, "tokens[0].accounts[1]"),
            (r#"{"tokens": [{"token": "0123456789abcdefg", "accounts": "*", "access": "write"}]}"#, "tokens[0].access"),
            (r#"{"tokens": [{"token": "0123456789abcdefg", "accounts": "*", "access": "read", "x": 1}]}"#, "tokens[0].x"),
            (
                r#"{"tokens": [{"token": "0123456789abcdefg", "accounts": "*", "access": "read"}, {"token": "0123456789abcdefg", "accounts": "*", "access": "read"}]}"#,
                "tokens[1].token",
            ),
            ("[1]", "(file)"),
        ];
        for (text, path) in cases {
            let e = Tokens::parse(text).unwrap_err();
            assert_eq!(e.path, path, "{text}: {e}");
        }
    }

    #[test]
    fn the_debug_form_shows_no_secret() {
        let tokens = Tokens::parse(FILE).unwrap();
        assert!(!format!("{tokens:?}").contains("0123456789"));
    }

    #[test]
    fn bearer_reads_the_scheme_case_insensitively() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
