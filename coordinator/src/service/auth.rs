//! The shared-secret bearer token that guards both services.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

#[derive(Debug, Clone)]
pub struct BearerAuth {
    expected: Option<Arc<str>>,
}

impl BearerAuth {
    /// `None` lets every request through (loopback and tests).
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| Arc::from(format!("Bearer {t}").as_str())),
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        match request.metadata().get("authorization") {
            None => Err(Status::unauthenticated(
                "missing bearer token: pass --token or set ATELIER_TOKEN",
            )),
            Some(value) if constant_time_eq(value.as_bytes(), expected.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong bearer token")),
        }
    }
}

/// Compares without stopping at the first difference, so response times do
/// not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(value: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = value {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn only_the_right_token_passes() {
        let mut auth = BearerAuth::new(Some("s3cret"));
        assert!(auth.call(with_header(Some("Bearer s3cret"))).is_ok());
        let wrong = auth.call(with_header(Some("Bearer guess"))).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let missing = auth.call(with_header(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(BearerAuth::new(None).call(with_header(None)).is_ok());
    }
}
