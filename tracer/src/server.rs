//! The admin HTTP server: `/metrics`, `/live`, `/ready`.
//!
//! Consumes a prometheus-client [`Registry`] (built by [`crate::metrics::registry`]) and a
//! readiness flag set once tracing is attached; produces HTTP/1.1 responses. [`bind`] comes
//! first, before any BPF is loaded, so a taken or foreign address is reported at once;
//! [`Bound::serve`] then runs until its shutdown future resolves.
//!
//! # Slow and idle clients never delay a scrape
//! Any local user can open connections to the port and send a partial request head, slowly or
//! never (slowloris). A server that gives each connection a slot until its head arrives, and
//! stops accepting when the slots are gone, lets them starve `/live` and `/metrics`. So:
//!
//! - **Connections waiting for a request head hold no slot that a request needs.** Every
//!   connection is in one of two sets: *waiting* (no request head yet, or kept alive between
//!   requests) or *busy* (its head has arrived; the request is being answered). Only the
//!   total is capped ([`ServerConfig::max_connections`], 1024 by default, lowered to fit the
//!   process's file-descriptor limit). When the server is full, the next accepted connection
//!   **evicts the oldest waiting one** instead of waiting for it. An attacker's connections
//!   are always the oldest waiting ones; a scraper sends its head as soon as it connects and
//!   is busy microseconds later, so it cannot be evicted by connections opened after it. The
//!   accept loop itself waits only when every connection is busy (then a response finishing
//!   frees a slot within milliseconds).
//! - **Small per-connection memory**: a waiting connection costs a task and hyper's two
//!   8 KiB buffers (the request head is limited to [`ServerConfig::max_header_bytes`]), so the
//!   cap bounds the server's memory to about 20 MiB whatever clients do.
//! - **A short header deadline** ([`ServerConfig::header_read_timeout`], 2 s, spread up to
//!   +44 % in eight steps across connections): a connection that has not sent a complete head
//!   in that time (also the idle limit between kept-alive requests) is closed even when the
//!   server is not full. The spread matters on a loaded host: 500 connections opened together
//!   that all expire and reconnect at once queue a scraper's connection behind 500 others.
//! - No per-peer limit: on the host the attacker and the scraper are both 127.0.0.1, so a
//!   per-address quota would hurt the scraper as much as the attacker. Eviction of the oldest
//!   waiting connection does not need to tell them apart.
//!
//! Besides: a huge header gets `431` and the connection is closed, a connection is asked to
//! close at its maximum age, and the scrape is encoded on the blocking pool so the runtime keeps
//! answering others meanwhile.
//!
//! Serving raises the process's soft `RLIMIT_NOFILE` to its hard limit (as the Go runtime
//! does), so the connection cap is not the 1024 descriptors of a default soft limit.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::metrics::{self, Format};
use crate::webconfig::{self, AuthCheck, WebConfig};

/// Smallest request-head buffer hyper accepts.
const MIN_HEADER_BYTES: usize = 8192;

/// Header deadlines are spread over this many steps of 1/16 of the deadline, so connections
/// opened in a burst (a slowloris attack starting) do not all expire, and come back, at once.
const DEADLINE_STEPS: u32 = 8;

/// How the admin server listens and protects itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where to listen.
    pub addr: SocketAddr,
    /// A client must send a complete request head within this time (also the idle limit of a
    /// kept-alive connection between requests); spread up to +44 % across connections.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; at least 8 KiB.
    pub max_header_bytes: usize,
    /// Connections open at once (waiting for a request head or busy with one). When full, a new
    /// connection evicts the oldest waiting one. Lowered to fit the file-descriptor limit.
    pub max_connections: usize,
    /// A connection is asked to close (after its in-flight response) when this old.
    pub max_connection_age: Duration,
    /// On shutdown, and when a connection reaches its age, time allowed for in-flight
    /// responses before the connection is dropped.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// Defaults: 2 s header timeout, 16 KiB request head, 1024 connections, 2 min connection
    /// age, 2 s grace.
    pub fn new(addr: SocketAddr) -> Self {
        ServerConfig {
            addr,
            header_read_timeout: Duration::from_secs(2),
            max_header_bytes: 16 * 1024,
            max_connections: 1024,
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
    web: Option<Arc<WebConfig>>,
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
        web: None,
    })
}

/// What a connection task shares.
struct Shared {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    /// `--web-config-file`: basic auth, extra headers, rate limit (TLS is in the acceptor).
    web: Option<Arc<WebConfig>>,
}

/// File descriptors kept for everything else the process opens (BPF objects, sock_diag,
/// /proc files while naming owners, the listener).
const RESERVED_FDS: u64 = 128;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit now in force
/// (`None` if it cannot be read).
fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// The connection cap that fits a soft file-descriptor limit of `fd_limit`.
fn connection_cap(configured: usize, fd_limit: Option<u64>) -> usize {
    let fit = fd_limit.map_or(usize::MAX, |l| {
        usize::try_from(l.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX)
    });
    configured.min(fit).max(1)
}

/// The open connections: how many, and which of them wait for a request head (the ones that
/// may be evicted), oldest first.
struct Slots {
    state: Mutex<SlotState>,
    /// Signalled when a connection ends or starts waiting: the accept loop may go on.
    changed: Notify,
    cap: usize,
}

#[derive(Default)]
struct SlotState {
    open: usize,
    next_seq: u64,
    /// Waiting connections by the time they started waiting: a sequence number → the signal
    /// that evicts it.
    waiting: BTreeMap<u64, Arc<Notify>>,
    evicted: u64,
}

impl Slots {
    fn new(cap: usize) -> Self {
        Slots {
            state: Mutex::new(SlotState::default()),
            changed: Notify::new(),
            cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether accepting one more connection keeps within the cap (possibly by eviction).
    fn can_admit(&self) -> bool {
        let st = self.lock();
        st.open < self.cap || !st.waiting.is_empty()
    }

    /// Counts a new connection in, evicting the oldest waiting one if the server is full.
    /// Returns the new connection's eviction signal and its place among the waiting.
    fn admit(&self) -> (Arc<Notify>, u64) {
        let mut st = self.lock();
        if st.open >= self.cap
            && let Some((_, victim)) = st.waiting.pop_first()
        {
            victim.notify_one();
            st.evicted += 1;
        }
        st.open += 1;
        let evict = Arc::new(Notify::new());
        let seq = st.next_seq;
        st.next_seq += 1;
        st.waiting.insert(seq, Arc::clone(&evict));
        (evict, seq)
    }

    /// The connection's request head arrived: it may no longer be evicted. Returns `false` if it
    /// was evicted already (its eviction signal is then pending).
    fn busy(&self, seq: u64) -> bool {
        self.lock().waiting.remove(&seq).is_some()
    }

    /// The connection answered its request and waits for the next one; returns its new place.
    fn waiting(&self, evict: &Arc<Notify>) -> u64 {
        let seq = {
            let mut st = self.lock();
            let seq = st.next_seq;
            st.next_seq += 1;
            st.waiting.insert(seq, Arc::clone(evict));
            seq
        };
        self.changed.notify_waiters();
        seq
    }

    /// The connection is gone.
    fn close(&self, seq: u64) {
        {
            let mut st = self.lock();
            st.open = st.open.saturating_sub(1);
            st.waiting.remove(&seq);
        }
        self.changed.notify_waiters();
    }
}

/// A connection's place in [`Slots`]; leaves them when dropped (however the task ends).
struct Slot {
    slots: Arc<Slots>,
    evict: Arc<Notify>,
    /// Its place among the waiting connections (stale while busy).
    seq: Mutex<u64>,
}

impl Slot {
    fn seq(&self) -> MutexGuard<'_, u64> {
        self.seq
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn busy(&self) {
        let seq = *self.seq();
        // Evicted just before its request arrived: the pending eviction signal ends it.
        let _ = self.slots.busy(seq);
    }

    fn waiting(&self) {
        let seq = self.slots.waiting(&self.evict);
        *self.seq() = seq;
    }
}

/// A response body that puts its connection back among the waiting ones when it is dropped
/// (written out, or the connection closed).
struct SlotBody {
    inner: Full<Bytes>,
    slot: Arc<Slot>,
}

impl hyper::body::Body for SlotBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for SlotBody {
    fn drop(&mut self) {
        self.slot.waiting();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let seq = *self.seq();
        self.slots.close(seq);
    }
}

impl Bound {
    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves with `--web-config-file`'s TLS, basic authentication, headers and rate limit.
    #[must_use]
    pub fn with_web_config(mut self, web: Arc<WebConfig>) -> Self {
        self.web = Some(web);
        self
    }

    /// Whether connections are TLS.
    pub fn tls(&self) -> bool {
        self.web.as_ref().is_some_and(|w| w.tls.is_some())
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
            web,
        } = self;
        let tls = web
            .as_ref()
            .and_then(|w| w.tls.clone())
            .map(TlsAcceptor::from);
        let shared = Arc::new(Shared {
            registry,
            ready,
            web,
        });
        // One builder per deadline step: connection n gets step n mod DEADLINE_STEPS.
        let builders: Vec<Arc<http1::Builder>> = (0..DEADLINE_STEPS)
            .map(|step| {
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(
                        config.header_read_timeout + config.header_read_timeout * step / 16,
                    )
                    .max_buf_size(config.max_header_bytes.max(MIN_HEADER_BYTES))
                    .max_header_size(config.max_header_bytes.max(MIN_HEADER_BYTES))
                    .keep_alive(true);
                Arc::new(builder)
            })
            .collect();
        let cap = connection_cap(config.max_connections, raise_fd_limit());
        let slots = Arc::new(Slots::new(cap));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        tracing::info!(addr = %local_addr, max_connections = cap, "metrics server listening");

        tokio::pin!(shutdown);
        'accept: loop {
            while connections.try_join_next().is_some() {}
            // Full of busy connections (never of waiting ones): wait for one to end or wait.
            loop {
                let changed = slots.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if slots.can_admit() {
                    break;
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => break 'accept,
                    () = changed => {}
                }
            }
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
            let (evict, seq) = slots.admit();
            let slot = Slot {
                slots: Arc::clone(&slots),
                evict,
                seq: Mutex::new(seq),
            };
            let builder = &builders[(seq % u64::from(DEADLINE_STEPS)) as usize];
            connections.spawn(connection(
                Arc::clone(builder),
                stream,
                peer,
                Arc::clone(&shared),
                stop_rx.clone(),
                slot,
                config.clone(),
                tls.clone(),
            ));
        }

        drop(listener);
        // Receivers may all be gone already; nothing to tell then.
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(config.shutdown_grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        // Connections still running when the grace ran out: each held the stop up for all of
        // it. Idle and keep-alive connections close at once on the stop signal, so this is 0
        // unless a response was still being written.
        let abandoned = connections.len();
        if drained.is_err() {
            connections.shutdown().await;
        }
        tracing::debug!(
            addr = %local_addr,
            evicted = slots.lock().evicted,
            abandoned,
            "metrics server stopped"
        );
        Ok(())
    }
}

/// Go's answer to plain HTTP on a TLS port.
const HTTP_TO_HTTPS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The TLS handshake of a new connection, bounded by the header deadline. A connection whose
/// first byte is a letter, not a TLS record, is plain HTTP: it gets a `400` saying so.
async fn handshake(
    acceptor: &TlsAcceptor,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) if first[0].is_ascii_alphabetic() => {
            tracing::debug!(%peer, "plain HTTP request on the TLS port refused");
            let _ = stream.write_all(HTTP_TO_HTTPS).await;
            let _ = stream.shutdown().await;
            return None;
        }
        Ok(1) => {}
        _ => return None,
    }
    match acceptor.accept(stream).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
    }
}

/// Serves one connection until it closes, errs, ages out, is evicted or the server stops; a
/// TLS connection first completes its handshake (evictable meanwhile, and within the header
/// deadline).
#[expect(
    clippy::too_many_arguments,
    reason = "one connection's whole context, passed once"
)]
async fn connection(
    builder: Arc<http1::Builder>,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    slot: Slot,
    config: ServerConfig,
    tls: Option<TlsAcceptor>,
) {
    let Some(acceptor) = tls else {
        return serve_io(builder, stream, peer, shared, stop, slot, config).await;
    };
    let evict = Arc::clone(&slot.evict);
    let accepted = tokio::select! {
        r = tokio::time::timeout(config.header_read_timeout, handshake(&acceptor, stream, peer)) => match r {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        () = evict.notified() => return,
        _ = stop.wait_for(|stopped| *stopped) => return,
    };
    serve_io(builder, accepted, peer, shared, stop, slot, config).await;
}

async fn serve_io<I>(
    builder: Arc<http1::Builder>,
    io: I,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    slot: Slot,
    config: ServerConfig,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slot = Arc::new(slot);
    let evict = Arc::clone(&slot.evict);
    let service = {
        let slot = Arc::clone(&slot);
        service_fn(move |req: Request<Incoming>| {
            let shared = Arc::clone(&shared);
            let slot = Arc::clone(&slot);
            async move {
                slot.busy();
                let resp = respond(&shared, &req).await;
                // Waiting again once the response is written (when hyper drops the body).
                Ok::<_, Infallible>(resp.map(|body| SlotBody {
                    inner: body,
                    slot: Arc::clone(&slot),
                }))
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
            }
            return;
        }
        () = evict.notified() => {
            tracing::debug!(%peer, "metrics connection evicted while waiting for a request");
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

/// The web configuration's gate (rate limit, basic auth), then the route, then its headers.
async fn respond<B>(shared: &Shared, req: &Request<B>) -> Response<Full<Bytes>> {
    let Some(web) = &shared.web else {
        return handle(shared, req).await;
    };
    let mut resp = match gate(web, req).await {
        Some(refused) => refused,
        None => handle(shared, req).await,
    };
    for (name, value) in &web.headers {
        resp.headers_mut().insert(name.clone(), value.clone());
    }
    resp
}

/// `Some(response)` when the request is refused: over the rate limit (`429`), or without the
/// right basic-auth credentials (`401`). `/live` and `/ready` need no credentials (module
/// docs of [`webconfig`]).
async fn gate<B>(web: &Arc<WebConfig>, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
    if let Some(bucket) = &web.rate_limit {
        let allowed = bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow(std::time::Instant::now());
        if !allowed {
            return Some(text(
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests\n".to_owned(),
            ));
        }
    }
    if !web.auth.enabled() || matches!(req.uri().path(), "/live" | "/ready") {
        return None;
    }
    let creds = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| webconfig::basic_credentials(v.as_bytes()));
    let allowed = match web.auth.check(creds.as_ref()) {
        AuthCheck::Allowed => true,
        AuthCheck::Denied => false,
        AuthCheck::Verify => {
            let web = Arc::clone(web);
            let creds = creds.unwrap_or_default();
            // bcrypt takes tens of milliseconds: off the runtime's threads.
            tokio::task::spawn_blocking(move || web.auth.verify(&creds))
                .await
                .unwrap_or(false)
        }
    };
    if allowed {
        return None;
    }
    let mut resp = text(StatusCode::UNAUTHORIZED, "Unauthorized\n".to_owned());
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
    Some(resp)
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
            web: None,
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
