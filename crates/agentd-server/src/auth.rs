//! Bearer tokens and tenants.
//!
//! Each token belongs to a tenant; every run records its tenant (a run label), and every
//! request about a run checks it. A run of another tenant is answered exactly like a run that
//! does not exist (404), so ids do not leak. Without tokens (allowed on loopback only) every
//! caller is the tenant [`DEFAULT_TENANT`].

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::api::AppState;
use crate::error::ApiError;

/// The tenant of every caller when no tokens are configured.
pub const DEFAULT_TENANT: &str = "default";
/// The run label holding the owning tenant.
pub const TENANT_LABEL: &str = "tenant";

/// Who is calling (put in the request's extensions by [`require_tenant`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The caller's tenant.
    pub tenant: String,
}

/// The configured tokens.
#[derive(Clone, Debug, Default)]
pub struct Tenants {
    tokens: Vec<(Vec<u8>, String)>,
}

impl Tenants {
    /// Tokens as `(token, tenant)` pairs; none: no authentication.
    pub fn new(tokens: Vec<(String, String)>) -> Self {
        Tenants {
            tokens: tokens
                .into_iter()
                .map(|(token, tenant)| (token.into_bytes(), tenant))
                .collect(),
        }
    }

    /// Whether requests must carry a token.
    pub fn required(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The caller of a request with these headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if !self.required() {
            return Ok(Caller {
                tenant: DEFAULT_TENANT.to_owned(),
            });
        }
        let unauthorized = |message: &str| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message.to_owned())
        };
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing `Authorization: Bearer <token>` header"))?;
        let value = value
            .to_str()
            .map_err(|_| unauthorized("the Authorization header is not text"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?
            .trim()
            .as_bytes();
        // Compare with every token in constant time per token, so timing tells nothing of
        // which token (or how much of one) matched.
        let mut found = None;
        for (known, tenant) in &self.tokens {
            if constant_time_eq(known, token) {
                found = Some(tenant);
            }
        }
        found
            .map(|tenant| Caller {
                tenant: tenant.clone(),
            })
            .ok_or_else(|| unauthorized("unknown token"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: authenticates the request and records its [`Caller`].
pub async fn require_tenant(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = state.tenants.authenticate(request.headers())?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_tenants() {
        let tenants = Tenants::new(vec![("a".repeat(16), "acme".into())]);
        let mut headers = HeaderMap::new();
        assert!(tenants.authenticate(&headers).is_err());
        headers.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert!(tenants.authenticate(&headers).is_err());
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {}", "a".repeat(16)).parse().unwrap(),
        );
        assert_eq!(tenants.authenticate(&headers).unwrap().tenant, "acme");
        assert_eq!(
            Tenants::default()
                .authenticate(&HeaderMap::new())
                .unwrap()
                .tenant,
            DEFAULT_TENANT
        );
    }
}
