//! Every way an API request can fail, and the one place that maps each to an HTTP status and a
//! stable error code.

use http::StatusCode;
use proto::api::{ErrorBody, ErrorDetail};

use crate::mesh::FunnelError;
use crate::store::{RegisterError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON for this endpoint: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("protocol version {0} is not supported (this coord speaks {ours})", ours = proto::PROTOCOL_VERSION)]
    UnsupportedVersion(u32),
    #[error("request body is larger than {} bytes", proto::api::MAX_BODY_BYTES)]
    BodyTooLarge,
    #[error("request is not signed: {0}")]
    Unsigned(String),
    #[error("request signature does not verify")]
    BadSignature,
    #[error("request timestamp is too far from the coordinator's clock")]
    StaleTimestamp,
    #[error("request was replayed (nonce already seen)")]
    Replayed,
    #[error("node key is not registered: register first")]
    UnknownNode,
    #[error("an auth key is required to register a new node")]
    AuthKeyRequired,
    #[error("auth key is not valid")]
    AuthKeyInvalid,
    #[error("auth key was revoked")]
    AuthKeyRevoked,
    #[error("auth key expired")]
    AuthKeyExpired,
    #[error("auth key was already used (it is single-use)")]
    AuthKeyUsed,
    #[error("node key expired: register again with a new auth key")]
    NodeExpired,
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the mesh has no free address left")]
    MeshFull,
    #[error("coordinator is shutting down")]
    Unavailable,
    #[error(transparent)]
    Funnel(#[from] FunnelError),
    /// Our failure. The detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            MalformedJson(_) | BadRequest(_) | UnsupportedVersion(_) => StatusCode::BAD_REQUEST,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Unsigned(_) | BadSignature | StaleTimestamp | Replayed | UnknownNode => {
                StatusCode::UNAUTHORIZED
            }
            AuthKeyRequired | AuthKeyInvalid | AuthKeyRevoked | AuthKeyExpired | AuthKeyUsed
            | NodeExpired => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            MeshFull | Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Funnel(f) => match f {
                FunnelError::InvalidName(_)
                | FunnelError::InvalidPort
                | FunnelError::TtlTooShort
                | FunnelError::TtlTooLong { .. } => StatusCode::BAD_REQUEST,
                FunnelError::NotGranted(_) | FunnelError::NotOwner(_) => StatusCode::FORBIDDEN,
                FunnelError::NameTaken(_) => StatusCode::CONFLICT,
                FunnelError::NotFound(_) => StatusCode::NOT_FOUND,
            },
        }
    }

    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            MalformedJson(_) => "malformed_json",
            BadRequest(_) => "bad_request",
            UnsupportedVersion(_) => "unsupported_protocol_version",
            BodyTooLarge => "body_too_large",
            Unsigned(_) => "unsigned_request",
            BadSignature => "bad_signature",
            StaleTimestamp => "stale_timestamp",
            Replayed => "replayed_request",
            UnknownNode => "unknown_node",
            AuthKeyRequired => "auth_key_required",
            AuthKeyInvalid => "auth_key_invalid",
            AuthKeyRevoked => "auth_key_revoked",
            AuthKeyExpired => "auth_key_expired",
            AuthKeyUsed => "auth_key_used",
            NodeExpired => "node_expired",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            MeshFull => "mesh_full",
            Unavailable => "unavailable",
            Internal(_) => "internal",
            Funnel(f) => match f {
                FunnelError::InvalidName(_) => "invalid_funnel_name",
                FunnelError::InvalidPort => "invalid_funnel_port",
                FunnelError::TtlTooShort => "funnel_ttl_too_short",
                FunnelError::TtlTooLong { .. } => "funnel_ttl_too_long",
                FunnelError::NotGranted(_) => "funnel_not_granted",
                FunnelError::NameTaken(_) => "funnel_name_taken",
                FunnelError::NotFound(_) => "funnel_not_found",
                FunnelError::NotOwner(_) => "funnel_not_owned",
            },
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<RegisterError> for ApiError {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::Invalid => ApiError::AuthKeyInvalid,
            RegisterError::Revoked => ApiError::AuthKeyRevoked,
            RegisterError::Expired => ApiError::AuthKeyExpired,
            RegisterError::Used => ApiError::AuthKeyUsed,
            RegisterError::Store(e) => e.into(),
        }
    }
}
