//! Bearer-token authentication: each token belongs to a tenant (a bank).
//!
//! Tokens come from a JSON file or the `QUIVER_TOKENS` environment variable and are
//! kept only as SHA-256 digests. A request without a valid `authorization: Bearer`
//! header is refused with `Unauthenticated` before any handler runs.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::{Error, Result};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Tenant name; views whose `owner` is this name, or that are `shared_with` it,
    /// are readable.
    pub name: String,
    /// May run `apply` and `materialize`.
    pub admin: bool,
    /// A replica's credential: may only `follow`, fetch `blob`s and report a
    /// `rollback` of a challenger; every other call is refused (docs/replicas.md).
    pub follower: bool,
}

/// Accepted tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Tenant>,
    open: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    tenant: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    follower: bool,
}

/// Whether two secrets are equal, compared through their SHA-256 digests so the time
/// taken says nothing about where they first differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    let (x, y) = (digest(a), digest(b));
    x.iter().zip(&y).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// No tokens: every request is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accept every request as an admin tenant named `anonymous`. For local
    /// development only; `quiver serve` asks for `--insecure-no-auth` to do this.
    pub fn open() -> Self {
        Self {
            by_digest: HashMap::new(),
            open: true,
        }
    }

    /// Accept `token` for `tenant`.
    pub fn with(mut self, token: &str, tenant: &str, admin: bool) -> Result<Self> {
        if token.len() < 16 || token.len() > 4096 {
            return Err(Error::InvalidRequest(format!(
                "the token of tenant `{tenant}` must be 16 to 4096 bytes long"
            )));
        }
        if tenant.is_empty() || tenant.len() > 128 {
            return Err(Error::InvalidRequest(
                "tenant names must be 1 to 128 bytes".into(),
            ));
        }
        self.by_digest.insert(
            digest(token),
            Tenant {
                name: tenant.to_owned(),
                admin,
                follower: false,
            },
        );
        Ok(self)
    }

    /// Accept `token` as the credential of replica `name`: it may follow this
    /// server's registry and report rollbacks, nothing else.
    pub fn with_follower(self, token: &str, name: &str) -> Result<Self> {
        let mut t = self.with(token, name, false)?;
        if let Some(e) = t.by_digest.get_mut(&digest(token)) {
            e.follower = true;
        }
        Ok(t)
    }

    /// Read `{"tokens": [{"token": "...", "tenant": "bank_a", "admin": false}]}`
    /// (`"follower": true` for a replica's credential).
    pub fn from_file(path: &Path) -> Result<Self> {
        let file: TokenFile =
            quiver_registry::read_json_config(path, 1024 * 1024).map_err(|e| {
                Error::InvalidRequest(format!(
                    "{e}; write {{\"tokens\": [{{\"token\": \"...\", \"tenant\": \"bank_a\"}}]}}"
                ))
            })?;
        file.tokens.iter().try_fold(Tokens::new(), |t, e| match (e.admin, e.follower) {
            (true, true) => Err(Error::InvalidRequest(format!(
                "the token of `{}` is both admin and follower; a replica's credential is only a follower",
                e.tenant
            ))),
            (_, true) => t.with_follower(&e.token, &e.tenant),
            _ => t.with(&e.token, &e.tenant, e.admin),
        })
    }

    /// Read `TOKEN=TENANT[:admin|:follower],...` (the `QUIVER_TOKENS` format).
    pub fn from_env_value(value: &str) -> Result<Self> {
        let mut t = Tokens::new();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((token, who)) = part.split_once('=') else {
                return Err(Error::InvalidRequest(
                    "QUIVER_TOKENS entries look like TOKEN=TENANT or TOKEN=TENANT:admin".into(),
                ));
            };
            t = match who.split_once(':') {
                Some((tenant, "admin")) => t.with(token, tenant, true)?,
                Some((tenant, "follower")) => t.with_follower(token, tenant)?,
                Some((_, other)) => {
                    return Err(Error::InvalidRequest(format!(
                        "unknown token role `{other}`; the roles are `admin` and `follower`"
                    )));
                }
                None => t.with(token, who, false)?,
            };
        }
        Ok(t)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// True when no token is accepted (and the server is not open).
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty() && !self.open
    }

    /// The tenant of a request's bearer token.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Tenant, Status> {
        if self.open {
            return Ok(Tenant {
                name: "anonymous".into(),
                admin: true,
                follower: false,
            });
        }
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <token>` header")
        })?;
        let value = header
            .to_str()
            .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be `Bearer <token>`")
            })?;
        self.by_digest
            .get(&digest(token.trim()))
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_tenants() {
        let t = Tokens::from_env_value("aaaaaaaaaaaaaaaa=bank_a:admin, bbbbbbbbbbbbbbbb=bank_b")
            .unwrap();
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", "Bearer bbbbbbbbbbbbbbbb".parse().unwrap());
        assert_eq!(
            t.authenticate(&r).unwrap(),
            Tenant {
                name: "bank_b".into(),
                admin: false,
                follower: false,
            }
        );
        let mut r = Request::new(());
        r.metadata_mut().insert(
            "authorization",
            "Bearer nope-nope-nope-nope".parse().unwrap(),
        );
        assert_eq!(
            t.authenticate(&r).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            t.authenticate(&Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(Tokens::from_env_value("short=bank").is_err());
        assert!(Tokens::from_env_value("aaaaaaaaaaaaaaaa=bank:root").is_err());
    }
}
