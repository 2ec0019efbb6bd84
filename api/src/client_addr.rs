//! The client's address, for limits keyed by address.
//!
//! Behind a proxy every TCP peer is the proxy, so the address comes from the
//! source `CLIENT_IP_SOURCE` names (axum-client-ip reads and validates the
//! header). A request without a usable header did not pass through that proxy
//! (it always sets it), so it counts as from its TCP peer: a client that
//! reaches the node directly could forge the header anyway.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum_client_ip::{ClientIp, ClientIpSource};

use crate::error::ApiError;

/// The address a request counts as from.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let configured = parts.extensions.get::<ClientIpSource>().is_some();
        if configured && let Ok(ClientIp(ip)) = ClientIp::from_request_parts(parts, state).await {
            return Ok(Self(ip));
        }
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| Self(peer.ip()))
            .ok_or_else(|| ApiError::internal("the listener did not record the peer address"))
    }
}
