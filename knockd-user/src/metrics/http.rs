//! `GET /metrics` over HTTP/1, on the address `options.metrics_listen`
//! names. Each connection is a task of its own: a slow scraper never holds
//! up the event loop, which only answers a snapshot request.

use std::{convert::Infallible, future::Future, time::Duration};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{ACCEPT, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{render, Format, State};

/// A scraper that stops reading is dropped after this.
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);

/// Serves until the listener fails; `state` takes a snapshot per scrape
/// (`None`: the daemon did not answer, 503).
pub async fn serve<F, Fut>(listener: TcpListener, state: F)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Option<State>> + Send,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends pass; back off instead of spinning.
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, state.clone()));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIMIT, conn).await {
                log::debug!("metrics: connection: {e}");
            }
        });
    }
}

async fn answer<F, Fut>(req: Request<Incoming>, state: F) -> Result<Response<Full<Bytes>>, Infallible>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<State>>,
{
    if req.uri().path() != "/metrics" {
        return Ok(plain(StatusCode::NOT_FOUND, "try /metrics\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"));
    }
    let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    let Some(state) = state().await else {
        return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "the daemon did not answer\n"));
    };
    let body = render(&state, format);
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(CONTENT_TYPE, format.content_type().parse().expect("a valid header value"));
    Ok(resp)
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp
}
