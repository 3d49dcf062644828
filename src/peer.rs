//! How one Tollgate target proves to another that it is a peer: a shared internal token (from the
//! environment variable `[services] internal_token_env` names) sent as `x-tollgate-peer-token`
//! metadata on every call, and checked by the server as SHA-256 digests compared in constant time.
//! Internal services (Metering) refuse calls without it with UNAUTHENTICATED. In-process calls (the
//! monolith) pass no token and are not checked: they never cross a socket.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};
use tower::ServiceExt;

use crate::transport::GrpcTransport;

/// The metadata (HTTP/2 header) that carries the peer token.
pub const PEER_TOKEN: &str = "x-tollgate-peer-token";

/// The shared internal token. `Debug` never prints it.
#[derive(Clone)]
pub struct PeerToken {
    token: http::HeaderValue,
    /// SHA-256 of the token: fixed-length digests compared in constant time leak neither the
    /// token's bytes nor its length.
    digest: [u8; 32],
}

impl PeerToken {
    /// Fewest characters a peer token may have.
    pub const MIN_LEN: usize = 32;

    /// The token, or why it is unfit (shorter than [`MIN_LEN`](Self::MIN_LEN), or not printable
    /// ASCII, which a header cannot carry).
    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.chars().count() < Self::MIN_LEN {
            return Err(format!(
                "the internal token must have at least {} characters",
                Self::MIN_LEN
            ));
        }
        let value = http::HeaderValue::from_str(token)
            .ok()
            .filter(|_| token.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| "the internal token must be printable ASCII".to_owned())?;
        Ok(Self {
            token: value,
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `presented` is this token, in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        self.digest.ct_eq(&digest).into()
    }

    /// The server side: lets `request` through when it carries this token, else UNAUTHENTICATED
    /// (a tonic interceptor: `MeteringServer::with_interceptor(svc, move |r| token.check(r))`).
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        match request.metadata().get(PEER_TOKEN) {
            Some(presented) if self.matches(presented.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("the peer token is not valid")),
            None => Err(Status::unauthenticated(format!(
                "an internal service: calls must carry the peer token ({PEER_TOKEN})"
            ))),
        }
    }

    /// The client side: `transport` with this token on every call it carries.
    pub fn attach(&self, transport: GrpcTransport) -> GrpcTransport {
        let token = self.token.clone();
        GrpcTransport::new(transport.map_request(
            move |mut request: http::Request<tonic::body::Body>| {
                request.headers_mut().insert(PEER_TOKEN, token.clone());
                request
            },
        ))
    }
}

impl fmt::Debug for PeerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerToken(***)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn short_or_unprintable_tokens_are_refused() {
        assert!(PeerToken::new("short").is_err());
        assert!(PeerToken::new(&format!("{TOKEN}\u{7f}")).is_err());
        assert!(format!("{:?}", PeerToken::new(TOKEN).unwrap()).contains("***"));
    }

    #[test]
    fn the_check_wants_the_exact_token() {
        let token = PeerToken::new(TOKEN).unwrap();
        let with = |value: Option<&str>| {
            let mut request = Request::new(());
            if let Some(value) = value {
                request
                    .metadata_mut()
                    .insert(PEER_TOKEN, value.parse().unwrap());
            }
            token.check(request).map(|_| ()).map_err(|s| s.code())
        };
        assert_eq!(with(Some(TOKEN)), Ok(()));
        assert_eq!(
            with(Some(&TOKEN.replace('0', "1"))),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(with(None), Err(tonic::Code::Unauthenticated));
    }
}
