//! `POST /v1/funnels`, `GET /v1/funnels`, `DELETE /v1/funnels/NAME`: a node opens, lists and
//! closes its own funnels. Each verifies the signature before anything else; the checks (name,
//! grant, TTL, ownership) run on the mesh thread, and only the URL is made here.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use proto::api::{FunnelList, FunnelRequest, FunnelResponse};
use proto::map::FunnelRoute;

use super::{json, path_and_query, read_body, Api, Body};
use crate::error::ApiError;
use crate::service::Command;

/// Path prefix of one funnel: `/v1/funnels/NAME`.
pub(super) const PREFIX: &str = "/v1/funnels/";

/// `https://NAME.DOMAIN/`, or `https://NAME.DOMAIN:PORT/` when the edge is not on 443.
pub fn funnel_url(name: &str, domain: &str, port: u16) -> String {
    if port == 443 {
        format!("https://{name}.{domain}/")
    } else {
        format!("https://{name}.{domain}:{port}/")
    }
}

fn response(api: &Api, route: FunnelRoute) -> FunnelResponse {
    FunnelResponse {
        url: funnel_url(&route.name, &api.funnel_domain, api.funnel_port),
        route,
    }
}

pub(super) async fn open(api: &Api, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (parts, body) = read_body(req).await?;
    let node = api
        .verifier
        .verify("POST", path_and_query(&parts), &parts.headers, &body)?;
    let req: FunnelRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let key = node.key();
    let route = api
        .handle
        .call(|reply| Command::FunnelOpen { key, req, reply })
        .await?;
    Ok(json(StatusCode::OK, &response(api, route)))
}

pub(super) async fn list(api: &Api, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (parts, body) = read_body(req).await?;
    let node = api
        .verifier
        .verify("GET", path_and_query(&parts), &parts.headers, &body)?;
    let key = node.key();
    let routes = api
        .handle
        .call(|reply| Command::FunnelList { key, reply })
        .await?;
    let list = FunnelList {
        funnels: routes.into_iter().map(|r| response(api, r)).collect(),
    };
    Ok(json(StatusCode::OK, &list))
}

pub(super) async fn close(api: &Api, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (parts, body) = read_body(req).await?;
    let node = api
        .verifier
        .verify("DELETE", path_and_query(&parts), &parts.headers, &body)?;
    let name = parts
        .uri
        .path()
        .strip_prefix(PREFIX)
        .unwrap_or_default()
        .to_owned();
    let key = node.key();
    api.handle
        .call(|reply| Command::FunnelClose { key, name, reply })
        .await?;
    Ok(json(StatusCode::OK, &serde_json::json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_leave_out_443() {
        assert_eq!(
            funnel_url("demo", "funnel.localhost", 443),
            "https://demo.funnel.localhost/"
        );
        assert_eq!(
            funnel_url("demo", "funnel.example.com", 8443),
            "https://demo.funnel.example.com:8443/"
        );
    }
}
