//! The admin HTTP server: `/metrics`, `/live`, `/ready`.
//!
//! Consumes a prometheus-client [`Registry`] (built by [`crate::metrics::registry`]) and a
//! readiness flag set once tracing is attached; produces HTTP/1.1 responses. [`bind`] comes
//! first, before any BPF is loaded, so a taken or foreign address is reported at once;
//! [`Bound::serve`] then runs until its shutdown future resolves.
//!
//! Hardened for a host daemon: one task per connection, at most
//! [`ServerConfig::max_connections`] at once (beyond that the server stops accepting until one
//! ends; the kernel backlog holds the rest), a header read timeout (so a client that connects
//! and sends nothing, or sends slowly, is dropped), a small request-head buffer (a huge header
//! gets `431` and the connection is closed), a maximum connection age, and the scrape encoded
//! on the blocking pool so the runtime keeps answering others meanwhile.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::metrics::{self, Format};

/// Smallest request-head buffer hyper accepts.
const MIN_HEADER_BYTES: usize = 8192;

/// How the admin server listens and protects itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where to listen.
    pub addr: SocketAddr,
    /// A client must send a complete request head within this time (also the idle limit of a
    /// kept-alive connection between requests).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; at least 8 KiB.
    pub max_header_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// A connection is asked to close (after its in-flight response) when this old.
    pub max_connection_age: Duration,
    /// On shutdown, and when a connection reaches its age, time allowed for in-flight
    /// responses before the connection is dropped.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// Defaults: 5 s header timeout, 16 KiB request head, 64 connections, 2 min connection
    /// age, 2 s grace.
    pub fn new(addr: SocketAddr) -> Self {
        ServerConfig {
            addr,
            header_read_timeout: Duration::from_secs(5),
            max_header_bytes: 16 * 1024,
            max_connections: 64,
            max_connection_age: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Something already listens on the address.
    #[error(
        "cannot listen on {addr}: address already in use (another tracer or exporter running?)"
    )]
    AddrInUse {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The address is not one of this host's.
    #[error("cannot listen on {addr}: no local interface has this address")]
    AddrNotAvailable {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Not allowed to bind the address.
    #[error(
        "cannot listen on {addr}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"
    )]
    PermissionDenied {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Any other failure to bind.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The bound socket's address could not be read.
    #[error("cannot read the local address of the listener for {addr}")]
    LocalAddr {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl ServerError {
    fn bind(addr: SocketAddr, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::AddrInUse => ServerError::AddrInUse { addr, source },
            io::ErrorKind::AddrNotAvailable => ServerError::AddrNotAvailable { addr, source },
            io::ErrorKind::PermissionDenied => ServerError::PermissionDenied { addr, source },
            _ => ServerError::Bind { addr, source },
        }
    }
}

/// A listening socket, not yet serving.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: ServerConfig,
}

/// Binds `addr` with the default [`ServerConfig`].
pub async fn bind(addr: SocketAddr) -> Result<Bound, ServerError> {
    bind_with(ServerConfig::new(addr)).await
}

/// Binds `config.addr`. Serving starts with [`Bound::serve`].
pub async fn bind_with(config: ServerConfig) -> Result<Bound, ServerError> {
    let addr = config.addr;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::bind(addr, source))?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ServerError::LocalAddr { addr, source })?;
    Ok(Bound {
        listener,
        local_addr,
        config,
    })
}

/// What a connection task shares.
struct Shared {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
}

impl Bound {
    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight responses finish
    /// for [`ServerConfig::shutdown_grace`], and drops what is left.
    ///
    /// `ready` is read on every `/ready` request: 503 while false, 200 once true.
    pub async fn serve(
        self,
        registry: Arc<Registry>,
        ready: Arc<AtomicBool>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let Bound {
            listener,
            local_addr,
            config,
        } = self;
        let shared = Arc::new(Shared { registry, ready });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_bytes.max(MIN_HEADER_BYTES))
            .max_header_size(config.max_header_bytes.max(MIN_HEADER_BYTES))
            .keep_alive(true);
        let builder = Arc::new(builder);
        let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        tracing::info!(addr = %local_addr, "metrics server listening");

        tokio::pin!(shutdown);
        loop {
            while connections.try_join_next().is_some() {}
            let permit = tokio::select! {
                biased;
                () = &mut shutdown => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break, // the semaphore is never closed
                },
            };
            let (stream, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of fds or memory, or the peer gave up before accept: wait a
                        // little and go on; never a reason to stop serving.
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            connections.spawn(connection(
                Arc::clone(&builder),
                stream,
                peer,
                Arc::clone(&shared),
                stop_rx.clone(),
                permit,
                config.clone(),
            ));
        }

        drop(listener);
        // Receivers may all be gone already; nothing to tell then.
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(config.shutdown_grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            connections.shutdown().await;
        }
        tracing::debug!(addr = %local_addr, "metrics server stopped");
        Ok(())
    }
}

/// Serves one connection until it closes, errs, ages out or the server stops.
async fn connection(
    builder: Arc<http1::Builder>,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
    config: ServerConfig,
) {
    let _permit = permit;
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(&shared, &req).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
            }
            return;
        }
        _ = stop.wait_for(|stopped| *stopped) => {}
        () = tokio::time::sleep(config.max_connection_age) => {}
    }
    conn.as_mut().graceful_shutdown();
    match tokio::time::timeout(config.shutdown_grace, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics connection ended with an error"),
        Err(_) => tracing::debug!(%peer, "metrics connection dropped after the grace period"),
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Live,
    Ready,
    NotFound,
    MethodNotAllowed,
}

fn route(method: &Method, path: &str) -> Route {
    let route = match path {
        "/metrics" => Route::Metrics,
        "/live" => Route::Live,
        "/ready" => Route::Ready,
        _ => return Route::NotFound,
    };
    if method == Method::GET || method == Method::HEAD {
        route
    } else {
        Route::MethodNotAllowed
    }
}

async fn handle<B>(shared: &Shared, req: &Request<B>) -> Response<Full<Bytes>> {
    match route(req.method(), req.uri().path()) {
        Route::Metrics => {
            let accept = req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",");
            let format = Format::negotiate((!accept.is_empty()).then_some(accept.as_str()));
            let registry = Arc::clone(&shared.registry);
            // The snapshot may wait on the engine's lock: keep it off the runtime's threads.
            match tokio::task::spawn_blocking(move || metrics::encode(&registry, format)).await {
                Ok(Ok(body)) => {
                    let mut resp = text(StatusCode::OK, body);
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(format.content_type()),
                    );
                    resp
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "metrics scrape failed");
                    text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics snapshot panicked");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "metrics snapshot failed\n".to_owned(),
                    )
                }
            }
        }
        Route::Live => text(StatusCode::OK, "live\n".to_owned()),
        Route::Ready => {
            if shared.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n".to_owned())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: tracing is not attached yet\n".to_owned(),
                )
            }
        }
        Route::NotFound => text(
            StatusCode::NOT_FOUND,
            "not found; endpoints: /metrics /live /ready\n".to_owned(),
        ),
        Route::MethodNotAllowed => {
            let mut resp = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed; use GET\n".to_owned(),
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            resp
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn shared(ready: bool) -> Shared {
        let source: Arc<dyn metrics::SnapshotSource> = Arc::new(metrics::MetricsSnapshot::default);
        Shared {
            registry: Arc::new(metrics::registry(source, 10)),
            ready: Arc::new(AtomicBool::new(ready)),
        }
    }

    async fn call(
        shared: &Shared,
        method: Method,
        uri: &str,
        accept: Option<&str>,
    ) -> (StatusCode, String, String) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        let resp = handle(shared, &req.body(()).unwrap()).await;
        let status = resp.status();
        let ctype = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn routes() {
        assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::HEAD, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::GET, "/live"), Route::Live);
        assert_eq!(route(&Method::GET, "/ready"), Route::Ready);
        assert_eq!(route(&Method::POST, "/metrics"), Route::MethodNotAllowed);
        assert_eq!(route(&Method::DELETE, "/ready"), Route::MethodNotAllowed);
        assert_eq!(route(&Method::GET, "/"), Route::NotFound);
        assert_eq!(route(&Method::POST, "/nope"), Route::NotFound);
        assert_eq!(route(&Method::GET, "/metrics/"), Route::NotFound);
    }

    #[tokio::test]
    async fn responses() {
        let s = shared(false);
        let (st, ct, body) = call(&s, Method::GET, "/metrics", None).await;
        assert_eq!(
            (st, ct.as_str()),
            (StatusCode::OK, Format::TEXT_CONTENT_TYPE)
        );
        assert!(
            body.contains("tracer_tcp_closes_total{kind=\"active\"} 0"),
            "{body}"
        );
        let om = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5";
        let (st, ct, body) = call(&s, Method::GET, "/metrics?x=1", Some(om)).await;
        assert_eq!(
            (st, ct.as_str()),
            (StatusCode::OK, Format::OPENMETRICS_CONTENT_TYPE)
        );
        assert!(body.ends_with("# EOF\n"));
        assert_eq!(
            call(&s, Method::GET, "/ready", None).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        s.ready.store(true, Ordering::Release);
        assert_eq!(
            call(&s, Method::GET, "/ready", None).await.0,
            StatusCode::OK
        );
        assert_eq!(call(&s, Method::GET, "/live", None).await.0, StatusCode::OK);
        assert_eq!(
            call(&s, Method::GET, "/x", None).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&s, Method::PUT, "/live", None).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn bind_errors_name_the_address() {
        let first = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = first.local_addr();
        let err = bind(addr).await.unwrap_err();
        assert!(matches!(err, ServerError::AddrInUse { .. }), "{err:?}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        // TEST-NET-1 is never a local address.
        let foreign: SocketAddr = "192.0.2.1:0".parse().unwrap();
        let err = bind(foreign).await.unwrap_err();
        assert!(
            matches!(err, ServerError::AddrNotAvailable { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("192.0.2.1:0"), "{err}");
    }
}
