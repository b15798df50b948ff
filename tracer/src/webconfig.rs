//! `--web-config-file`: TLS and basic authentication of the admin server, in the web
//! configuration format of the Prometheus exporter-toolkit (node_exporter's
//! `--web.config.file`), so that a file written for an official exporter works unchanged.
//!
//! [`parse`] turns the file's text into a validated [`WebConfigFile`] without touching the file
//! system (the fuzz target); [`load`] then reads the certificates and keys it names (relative
//! paths are relative to the file's directory, as in exporter-toolkit) and builds the rustls
//! server configuration. Every error is one line naming the field and the file.
//!
//! Semantics kept from exporter-toolkit (docs/metrics.md, "TLS and authentication"):
//! - TLS is on as soon as any of `cert`, `cert_file`, `key`, `key_file`, `client_ca`,
//!   `client_ca_file`, `client_auth_type` is set; then a certificate and a key are required.
//! - `client_auth_type`: `NoClientCert` (default), `RequestClientCert`, `RequireAnyClientCert`
//!   (alias `RequireClientCert`), `VerifyClientCertIfGiven`, `RequireAndVerifyClientCert`, with
//!   Go's meanings. A client CA without a client auth type is an error, as there.
//! - `min_version` defaults to TLS12, `max_version` to TLS13. TLS10 and TLS11 as a minimum are
//!   raised to TLS12 (rustls has no older protocol); as a maximum they are an error.
//! - `cipher_suites` restricts the TLS 1.2 suites (TLS 1.3's are not configurable, as in Go);
//!   `curve_preferences` orders the key-exchange groups. Names are Go's. Suites and curves Go
//!   knows but rustls does not implement (CBC and RSA key exchange, P-521) are left out with a
//!   warning; unknown names are an error.
//! - `basic_auth_users`: user → bcrypt hash; every hash is checked at start. A request needs
//!   the right user and password, else `401` with `WWW-Authenticate: Basic`. An unknown user
//!   costs the same bcrypt comparison as a known one. Successful checks are cached.
//! - `http_server_config.headers`: the same five headers and allowed values.
//! - `rate_limit`: a token bucket of `burst` requests refilled one per `interval`; `429` beyond.
//! - Unknown fields are an error (the Go side decodes strictly).
//!
//! Where tracer differs, and why:
//! - `/live` and `/ready` answer without basic authentication (still over TLS, with the client
//!   certificate the TLS settings ask for). exporter-toolkit protects every path, and a
//!   Kubernetes probe then needs the password in the pod spec (prometheus/prometheus#9166,
//!   exporter-toolkit#111, still open); the two paths return fixed words and carry no data.
//! - The file is read at start (a bad file stops tracer with one line), not on every request;
//!   the certificate and key files are re-read when they change, so a rotated Secret is picked
//!   up without a restart. Users and headers need a restart.
//! - `client_allowed_sans` is refused (not implemented; ignoring it would accept clients the
//!   file means to refuse). `http2` is accepted and has no effect: tracer serves HTTP/1.1.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject as _,
};
use tokio_rustls::rustls::{
    self, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
    SupportedCipherSuite,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, SupportedKxGroup, ring as provider},
    server::{
        ClientHello, ResolvesServerCert, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};

/// A web configuration error: one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WebConfigError(pub String);

fn err(msg: impl Into<String>) -> WebConfigError {
    WebConfigError(msg.into())
}

/// The file as written, decoded strictly (unknown fields are errors).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawFile {
    tls_server_config: RawTls,
    http_server_config: RawHttp,
    rate_limit: RawRateLimit,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRateLimit {
    interval: Option<serde_yaml_ng::Value>,
    burst: Option<u64>,
}

/// Where a PEM item comes from: inline in the file, or a file it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pem {
    Inline(String),
    File(PathBuf),
}

/// `client_auth_type`, with Go's `tls.ClientAuthType` meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate asked for.
    NoClientCert,
    /// Asked for, not required, not verified.
    RequestClientCert,
    /// Required, not verified.
    RequireAnyClientCert,
    /// Verified against the client CA when given, not required.
    VerifyClientCertIfGiven,
    /// Required and verified against the client CA.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    fn parse(s: &str) -> Result<Self, WebConfigError> {
        Ok(match s {
            "" | "NoClientCert" => ClientAuth::NoClientCert,
            "RequestClientCert" => ClientAuth::RequestClientCert,
            "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
            other => {
                return Err(err(format!(
                    "tls_server_config.client_auth_type {other:?} is not one of NoClientCert, \
                     RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, \
                     RequireAndVerifyClientCert"
                )));
            }
        })
    }

    fn verifies(self) -> bool {
        matches!(
            self,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        )
    }
}

/// A TLS protocol version (Go's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

impl TlsVersion {
    fn parse(field: &str, s: &str) -> Result<Self, WebConfigError> {
        Ok(match s {
            "TLS10" => TlsVersion::Tls10,
            "TLS11" => TlsVersion::Tls11,
            "TLS12" => TlsVersion::Tls12,
            "TLS13" => TlsVersion::Tls13,
            other => {
                return Err(err(format!(
                    "tls_server_config.{field} {other:?} is not one of TLS10, TLS11, TLS12, TLS13"
                )));
            }
        })
    }
}

/// The validated TLS settings (certificates not read yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_ca: Option<Pem>,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 suites in order (rustls names), `None`: the provider's.
    pub cipher_suites: Option<Vec<&'static str>>,
    /// Key-exchange groups in order (rustls names), `None`: the provider's.
    pub curves: Option<Vec<&'static str>>,
    /// Go's `prefer_server_cipher_suites` (default true).
    pub prefer_server_cipher_suites: bool,
}

/// `rate_limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub interval: Duration,
    pub burst: u64,
}

/// A validated web configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebConfigFile {
    pub tls: Option<TlsSettings>,
    /// User → bcrypt hash.
    pub users: BTreeMap<String, String>,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    pub rate_limit: Option<RateLimit>,
    /// What was accepted but has no effect, for a warning at start.
    pub notes: Vec<String>,
}

/// Go names of TLS 1.2 suites → rustls's, `None` for suites Go has and rustls (ring) lacks.
const TLS12_SUITES: &[(&str, Option<&str>)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        Some("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        Some("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        Some("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        Some("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        Some("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        Some("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        Some("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        Some("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
    ),
    ("TLS_RSA_WITH_RC4_128_SHA", None),
    ("TLS_RSA_WITH_3DES_EDE_CBC_SHA", None),
    ("TLS_RSA_WITH_AES_128_CBC_SHA", None),
    ("TLS_RSA_WITH_AES_256_CBC_SHA", None),
    ("TLS_RSA_WITH_AES_128_CBC_SHA256", None),
    ("TLS_RSA_WITH_AES_128_GCM_SHA256", None),
    ("TLS_RSA_WITH_AES_256_GCM_SHA384", None),
    ("TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", None),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", None),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", None),
    ("TLS_ECDHE_RSA_WITH_RC4_128_SHA", None),
    ("TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", None),
    ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", None),
    ("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", None),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", None),
    ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", None),
];

/// Go's TLS 1.3 suite names: accepted in `cipher_suites`, and (as in Go) without effect.
const TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Go curve names → rustls group names, `None` where ring has none.
const CURVES: &[(&str, Option<&str>)] = &[
    ("CurveP256", Some("secp256r1")),
    ("CurveP384", Some("secp384r1")),
    ("CurveP521", None),
    ("X25519", Some("X25519")),
];

/// The headers exporter-toolkit lets a file set, and their allowed values (empty: any).
const HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

fn set(s: Option<&String>) -> Option<&str> {
    s.map(String::as_str).filter(|s| !s.is_empty())
}

fn pem_source(
    field: &str,
    inline: Option<&String>,
    file: Option<&String>,
    dir: &Path,
) -> Result<Option<Pem>, WebConfigError> {
    match (set(inline), set(file)) {
        (Some(_), Some(_)) => Err(err(format!(
            "tls_server_config: both {field} and {field}_file are set; give one"
        ))),
        (Some(text), None) => Ok(Some(Pem::Inline(text.to_owned()))),
        (None, Some(path)) => Ok(Some(Pem::File(dir.join(path)))),
        (None, None) => Ok(None),
    }
}

/// A Go duration (`1s`, `1m30s`, `500ms`, `1.5h`) or a number of nanoseconds.
fn go_duration(v: &serde_yaml_ng::Value) -> Result<Duration, WebConfigError> {
    let bad = || err("rate_limit.interval is not a duration (e.g. 1s, 500ms, 1m30s)".to_owned());
    if let Some(n) = v.as_u64() {
        return Ok(Duration::from_nanos(n));
    }
    let s = v.as_str().ok_or_else(bad)?;
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * unit;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// Decodes and validates a web configuration file's text. `dir` is the file's directory
/// (relative certificate paths are resolved against it). Reads no file.
pub fn parse(text: &str, dir: &Path) -> Result<WebConfigFile, WebConfigError> {
    // An empty file (or one holding only comments) is an empty configuration, as in Go.
    let raw: RawFile = if text.trim().is_empty()
        || text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---"
        }) {
        RawFile::default()
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| err(one_line(&e.to_string())))?
    };
    let mut out = WebConfigFile::default();
    let t = &raw.tls_server_config;

    if t.client_allowed_sans
        .as_ref()
        .is_some_and(|v| !v.is_empty())
    {
        return Err(err(
            "tls_server_config.client_allowed_sans is not supported by tracer; \
             use a client CA that issues only the allowed clients' certificates",
        ));
    }
    let cert = pem_source("cert", t.cert.as_ref(), t.cert_file.as_ref(), dir)?;
    let key = pem_source("key", t.key.as_ref(), t.key_file.as_ref(), dir)?;
    let client_ca = pem_source(
        "client_ca",
        t.client_ca.as_ref(),
        t.client_ca_file.as_ref(),
        dir,
    )?;
    let auth_type = set(t.client_auth_type.as_ref());
    let enabled = cert.is_some() || key.is_some() || client_ca.is_some() || auth_type.is_some();
    if enabled {
        let cert =
            cert.ok_or_else(|| err("tls_server_config: missing one of cert or cert_file"))?;
        let key = key.ok_or_else(|| err("tls_server_config: missing one of key or key_file"))?;
        let client_auth = ClientAuth::parse(auth_type.unwrap_or(""))?;
        if client_ca.is_some() && client_auth == ClientAuth::NoClientCert {
            return Err(err(
                "tls_server_config: a client CA is configured without a client_auth_type \
                 (use RequireAndVerifyClientCert)",
            ));
        }
        if client_auth.verifies() && client_ca.is_none() {
            return Err(err(format!(
                "tls_server_config: client_auth_type {auth:?} needs client_ca_file (or client_ca)",
                auth = auth_type.unwrap_or_default()
            )));
        }
        let mut min_version = match set(t.min_version.as_ref()) {
            Some(v) => TlsVersion::parse("min_version", v)?,
            None => TlsVersion::Tls12,
        };
        let max_version = match set(t.max_version.as_ref()) {
            Some(v) => TlsVersion::parse("max_version", v)?,
            None => TlsVersion::Tls13,
        };
        if max_version < TlsVersion::Tls12 {
            return Err(err(
                "tls_server_config.max_version below TLS12 is not supported (tracer speaks TLS 1.2 and 1.3)",
            ));
        }
        if min_version < TlsVersion::Tls12 {
            out.notes.push(format!(
                "tls_server_config.min_version {:?} is raised to TLS12 (tracer speaks TLS 1.2 and 1.3)",
                t.min_version.as_deref().unwrap_or_default()
            ));
            min_version = TlsVersion::Tls12;
        }
        if min_version > max_version {
            return Err(err("tls_server_config: min_version is above max_version"));
        }
        let cipher_suites = match &t.cipher_suites {
            Some(names) if !names.is_empty() => {
                let mut suites = Vec::new();
                for name in names {
                    if TLS13_SUITES.contains(&name.as_str()) {
                        continue;
                    }
                    match TLS12_SUITES.iter().find(|(go, _)| go == name) {
                        Some((_, Some(ours))) => {
                            if !suites.contains(ours) {
                                suites.push(*ours);
                            }
                        }
                        Some((_, None)) => out.notes.push(format!(
                            "tls_server_config.cipher_suites: {name} is not offered (rustls does not implement it)"
                        )),
                        None => {
                            return Err(err(format!(
                                "tls_server_config.cipher_suites: unknown cipher suite {name:?}"
                            )));
                        }
                    }
                }
                if suites.is_empty() && min_version == TlsVersion::Tls12 {
                    if max_version == TlsVersion::Tls12 {
                        return Err(err(
                            "tls_server_config.cipher_suites: none of the listed TLS 1.2 suites is available",
                        ));
                    }
                    out.notes.push(
                        "tls_server_config.cipher_suites: no TLS 1.2 suite left; only TLS 1.3 is offered"
                            .to_owned(),
                    );
                }
                Some(suites)
            }
            _ => None,
        };
        let curves = match &t.curve_preferences {
            Some(names) if !names.is_empty() => {
                let mut curves = Vec::new();
                for name in names {
                    match CURVES.iter().find(|(go, _)| go == name) {
                        Some((_, Some(ours))) => {
                            if !curves.contains(ours) {
                                curves.push(*ours);
                            }
                        }
                        Some((_, None)) => out.notes.push(format!(
                            "tls_server_config.curve_preferences: {name} is not offered (not implemented)"
                        )),
                        None => {
                            return Err(err(format!(
                                "tls_server_config.curve_preferences: unknown curve {name:?}"
                            )));
                        }
                    }
                }
                if curves.is_empty() {
                    return Err(err(
                        "tls_server_config.curve_preferences: none of the listed curves is available",
                    ));
                }
                Some(curves)
            }
            _ => None,
        };
        out.tls = Some(TlsSettings {
            cert,
            key,
            client_ca,
            client_auth,
            min_version,
            max_version,
            cipher_suites,
            curves,
            prefer_server_cipher_suites: t.prefer_server_cipher_suites.unwrap_or(true),
        });
    }

    if raw.http_server_config.http2 == Some(false) {
        out.notes
            .push("http_server_config.http2 has no effect: tracer serves HTTP/1.1".to_owned());
    }
    for (name, value) in raw.http_server_config.headers.iter().flatten() {
        let Some((_, allowed)) = HEADERS.iter().find(|(h, _)| h == name) else {
            return Err(err(format!(
                "http_server_config.headers: HTTP header {name:?} can not be configured"
            )));
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(err(format!(
                "http_server_config.headers: invalid value for {name}: expected one of {allowed:?}, got {value:?}"
            )));
        }
        if hyper::header::HeaderValue::from_str(value).is_err() {
            return Err(err(format!(
                "http_server_config.headers: the value of {name} is not a valid header value"
            )));
        }
        if !value.is_empty() {
            out.headers.push((name.clone(), value.clone()));
        }
    }

    let interval = match &raw.rate_limit.interval {
        Some(v) => go_duration(v)?,
        None => Duration::ZERO,
    };
    if !interval.is_zero() {
        out.rate_limit = Some(RateLimit {
            interval,
            burst: raw.rate_limit.burst.unwrap_or(0),
        });
    }

    for (user, hash) in raw.basic_auth_users.unwrap_or_default() {
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(err(format!(
                "basic_auth_users: the password of {user:?} is not a bcrypt hash \
                 (make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')"
            )));
        }
        out.users.insert(user, hash);
    }
    Ok(out)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The admin server's web configuration, ready to serve.
pub struct WebConfig {
    /// `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub auth: BasicAuth,
    pub headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    pub rate_limit: Option<Mutex<TokenBucket>>,
    /// For the start-up log line.
    pub summary: String,
    pub notes: Vec<String>,
}

impl fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// Reads `path`, validates it, reads the certificates and keys it names.
pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
    let shown = path.display();
    let text = fs::read_to_string(path)
        .map_err(|e| err(format!("--web-config-file {shown}: {}", io_reason(&e))))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = parse(&text, dir).map_err(|e| err(format!("--web-config-file {shown}: {e}")))?;
    build(&file).map_err(|e| err(format!("--web-config-file {shown}: {e}")))
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

/// Builds the server side of a validated file.
pub fn build(file: &WebConfigFile) -> Result<WebConfig, WebConfigError> {
    let tls = file.tls.as_ref().map(tls_config).transpose()?;
    let headers = file
        .headers
        .iter()
        .map(|(n, v)| {
            let name = hyper::header::HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| err(format!("header name {n:?} is invalid")))?;
            let value = hyper::header::HeaderValue::from_str(v)
                .map_err(|_| err(format!("the value of header {n} is invalid")))?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, WebConfigError>>()?;
    let mut summary = match &file.tls {
        Some(t) => format!("TLS (client certificates: {:?})", t.client_auth),
        None => "plain HTTP".to_owned(),
    };
    if !file.users.is_empty() {
        summary.push_str(&format!(", basic auth ({} users)", file.users.len()));
    }
    Ok(WebConfig {
        tls,
        auth: BasicAuth::new(file.users.clone()),
        headers,
        rate_limit: file.rate_limit.map(|r| Mutex::new(TokenBucket::new(r))),
        summary,
        notes: file.notes.clone(),
    })
}

fn read_pem(field: &str, pem: &Pem) -> Result<Vec<u8>, WebConfigError> {
    match pem {
        Pem::Inline(s) => Ok(s.as_bytes().to_vec()),
        Pem::File(p) => fs::read(p).map_err(|e| {
            err(format!(
                "tls_server_config.{field}_file {}: {}",
                p.display(),
                io_reason(&e)
            ))
        }),
    }
}

fn certs(field: &str, pem: &Pem) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let bytes = read_pem(field, pem)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            err(format!(
                "tls_server_config.{field}: not a PEM certificate: {e}"
            ))
        })?;
    if certs.is_empty() {
        return Err(err(format!(
            "tls_server_config.{field}: no PEM certificate in it"
        )));
    }
    Ok(certs)
}

fn certified_key(
    cert: &Pem,
    key: &Pem,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, WebConfigError> {
    let chain = certs("cert", cert)?;
    let key_bytes = read_pem("key", key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| err(format!("tls_server_config.key: not a PEM private key: {e}")))?;
    let ck = CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        err(format!(
            "tls_server_config: the key does not fit the certificate: {e}"
        ))
    })?;
    Ok(Arc::new(ck))
}

fn provider(t: &TlsSettings) -> CryptoProvider {
    let base = provider::default_provider();
    let cipher_suites: Vec<SupportedCipherSuite> = match &t.cipher_suites {
        None => base.cipher_suites.clone(),
        Some(names) => {
            // TLS 1.3's suites first, in the provider's order; then the listed TLS 1.2 ones.
            let mut v: Vec<SupportedCipherSuite> = base
                .cipher_suites
                .iter()
                .copied()
                .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
                .collect();
            for name in names {
                if let Some(s) = base
                    .cipher_suites
                    .iter()
                    .find(|s| format!("{:?}", s.suite()) == *name)
                {
                    v.push(*s);
                }
            }
            v
        }
    };
    let kx_groups: Vec<&'static dyn SupportedKxGroup> = match &t.curves {
        None => base.kx_groups.clone(),
        Some(names) => names
            .iter()
            .filter_map(|name| {
                base.kx_groups
                    .iter()
                    .copied()
                    .find(|g| format!("{:?}", g.name()) == *name)
            })
            .collect(),
    };
    CryptoProvider {
        cipher_suites,
        kx_groups,
        ..base
    }
}

fn tls_config(t: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, WebConfigError> {
    let provider = Arc::new(provider(t));
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if t.min_version <= TlsVersion::Tls12 && t.max_version >= TlsVersion::Tls12 {
        versions.push(&rustls::version::TLS12);
    }
    if t.max_version >= TlsVersion::Tls13 {
        versions.push(&rustls::version::TLS13);
    }
    let resolver = ReloadingCert::new(t.cert.clone(), t.key.clone(), Arc::clone(&provider))?;
    let verifier: Arc<dyn ClientCertVerifier> = match t.client_auth {
        ClientAuth::NoClientCert => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => {
            let hints = match &t.client_ca {
                Some(ca) => roots(ca)?.subjects(),
                None => Vec::new(),
            };
            Arc::new(AnyClientCert {
                mandatory: t.client_auth == ClientAuth::RequireAnyClientCert,
                hints,
                provider: Arc::clone(&provider),
            })
        }
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let ca = t
                .client_ca
                .as_ref()
                .ok_or_else(|| err("tls_server_config: client_ca_file is required"))?;
            let builder = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                Arc::clone(&provider),
            );
            let builder = if t.client_auth == ClientAuth::VerifyClientCertIfGiven {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder
                .build()
                .map_err(|e| err(format!("tls_server_config.client_ca: {e}")))?
        }
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| err(format!("tls_server_config: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.ignore_client_order = t.prefer_server_cipher_suites;
    Ok(Arc::new(config))
}

fn roots(ca: &Pem) -> Result<RootCertStore, WebConfigError> {
    let mut store = RootCertStore::empty();
    for c in certs("client_ca", ca)? {
        store
            .add(c)
            .map_err(|e| err(format!("tls_server_config.client_ca: {e}")))?;
    }
    Ok(store)
}

/// Accepts any client certificate whose handshake signature is valid, without checking its
/// chain (Go's `RequestClientCert` and `RequireAnyClientCert`).
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What identifies a file's version: device, inode, size, modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp(u64, u64, u64, i64, i64);

fn stamp(pem: &Pem) -> Option<Stamp> {
    match pem {
        Pem::Inline(_) => Some(Stamp(0, 0, 0, 0, 0)),
        Pem::File(p) => fs::metadata(p)
            .ok()
            .map(|m| Stamp(m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec())),
    }
}

/// The server certificate, re-read when its files change (a rotated Kubernetes Secret or
/// cert-manager renewal). A change that does not load keeps the previous pair, with a warning.
#[derive(Debug)]
struct ReloadingCert {
    cert: Pem,
    key: Pem,
    provider: Arc<CryptoProvider>,
    current: Mutex<(Option<Stamp>, Option<Stamp>, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    fn new(cert: Pem, key: Pem, provider: Arc<CryptoProvider>) -> Result<Self, WebConfigError> {
        let stamps = (stamp(&cert), stamp(&key));
        let ck = certified_key(&cert, &key, &provider)?;
        Ok(ReloadingCert {
            cert,
            key,
            provider,
            current: Mutex::new((stamps.0, stamps.1, ck)),
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut cur = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stamps = (stamp(&self.cert), stamp(&self.key));
        if (stamps.0, stamps.1) != (cur.0, cur.1) {
            match certified_key(&self.cert, &self.key, &self.provider) {
                Ok(ck) => {
                    tracing::info!("web config: the TLS certificate or key changed; reloaded");
                    *cur = (stamps.0, stamps.1, ck);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "web config: the changed TLS certificate or key does not load; keeping the previous one");
                    // Warned once per change.
                    cur.0 = stamps.0;
                    cur.1 = stamps.1;
                }
            }
        }
        Some(Arc::clone(&cur.2))
    }
}

/// A bcrypt hash of a password nobody has, compared against for unknown users so that a
/// request's time does not tell whether its user exists.
const DUMMY_HASH: &str = "$2y$10$ulypxp6b5LnSQlKt6TU8gOOZ3om2MIiQq182AKulzt3C/Iq/idlte";

/// Most successful checks remembered; the cache is emptied when full.
const AUTH_CACHE: usize = 1024;

/// `basic_auth_users` and the checks already made.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// (user, password) pairs that matched. Failures are not cached: each costs a bcrypt
    /// comparison, serialised by this lock, while cached scrapers are answered at once.
    ok: Mutex<std::collections::HashSet<(String, String)>>,
    bcrypt: Mutex<()>,
}

/// The outcome of an authorisation check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthCheck {
    /// No users configured, or the credentials match.
    Allowed,
    /// A known answer, no bcrypt needed.
    Denied,
    /// Needs a bcrypt comparison ([`BasicAuth::verify`], on a blocking thread).
    Verify,
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> Self {
        BasicAuth {
            users,
            ok: Mutex::new(std::collections::HashSet::new()),
            bcrypt: Mutex::new(()),
        }
    }

    /// Whether any user is configured (authentication is on).
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// The cheap part: no users, no or malformed credentials, or a cached success.
    pub fn check(&self, creds: Option<&(String, String)>) -> AuthCheck {
        if self.users.is_empty() {
            return AuthCheck::Allowed;
        }
        let Some(creds) = creds else {
            return AuthCheck::Denied;
        };
        let ok = self
            .ok
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ok.contains(creds) {
            AuthCheck::Allowed
        } else {
            AuthCheck::Verify
        }
    }

    /// The bcrypt comparison (tens of milliseconds at cost 10): call on a blocking thread.
    pub fn verify(&self, creds: &(String, String)) -> bool {
        let (user, pass) = creds;
        let known = self.users.get(user);
        let hash = known.map_or(DUMMY_HASH, String::as_str);
        let matched = {
            let _one = self
                .bcrypt
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            bcrypt::verify(pass.as_bytes(), hash).unwrap_or(false)
        };
        let allowed = known.is_some() && matched;
        if allowed {
            let mut ok = self
                .ok
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if ok.len() >= AUTH_CACHE {
                ok.clear();
            }
            ok.insert(creds.clone());
        }
        allowed
    }
}

/// The user and password of an `Authorization: Basic …` header value.
pub fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    use base64::Engine as _;
    let s = std::str::from_utf8(value).ok()?.trim();
    let (scheme, b64) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

/// Go's `rate.Limiter` with `Allow`: `burst` tokens, one more every `interval`.
#[derive(Debug)]
pub struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub fn new(limit: RateLimit) -> Self {
        TokenBucket {
            limit,
            #[expect(
                clippy::cast_precision_loss,
                reason = "a burst beyond 2^52 is unbounded anyway"
            )]
            tokens: limit.burst as f64,
            last: None,
        }
    }

    /// Takes a token if there is one at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        #[expect(
            clippy::cast_precision_loss,
            reason = "a burst beyond 2^52 is unbounded anyway"
        )]
        let burst = self.limit.burst as f64;
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64()
                / self.limit.interval.as_secs_f64();
            self.tokens = (self.tokens + refill).min(burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<WebConfigFile, WebConfigError> {
        parse(text, Path::new("/etc/tracer"))
    }

    #[test]
    fn empty_and_plain() {
        assert_eq!(p("").unwrap(), WebConfigFile::default());
        assert_eq!(p("# nothing\n---\n").unwrap(), WebConfigFile::default());
        let f = p("basic_auth_users:\n  alice: $2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG\n")
            .unwrap();
        assert!(f.tls.is_none());
        assert_eq!(f.users.len(), 1);
    }

    #[test]
    fn tls_fields() {
        let f = p("tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS13\n")
            .unwrap();
        let t = f.tls.unwrap();
        assert_eq!(t.cert, Pem::File("/etc/tracer/server.crt".into()));
        assert_eq!(t.key, Pem::File("/abs/server.key".into()));
        assert_eq!(t.client_ca, Some(Pem::File("/etc/tracer/ca.crt".into())));
        assert_eq!(t.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(
            (t.min_version, t.max_version),
            (TlsVersion::Tls13, TlsVersion::Tls13)
        );
        assert!(t.prefer_server_cipher_suites);
    }

    #[test]
    fn errors_are_one_line_and_name_the_field() {
        for (text, want) in [
            (
                "tls_server_config:\n  key_file: k\n",
                "missing one of cert or cert_file",
            ),
            (
                "tls_server_config:\n  cert_file: c\n",
                "missing one of key or key_file",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n",
                "without a client_auth_type",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: Sometimes\n",
                "client_auth_type \"Sometimes\"",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS14\n",
                "min_version \"TLS14\"",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  max_version: TLS11\n",
                "max_version below TLS12",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  cipher_suites: [TLS_FAKE]\n",
                "unknown cipher suite",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  curve_preferences: [CurveP999]\n",
                "unknown curve",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_allowed_sans: [a]\n",
                "client_allowed_sans is not supported",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  cert: inline\n  key_file: k\n",
                "both cert and cert_file",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: VerifyClientCertIfGiven\n",
                "needs client_ca_file",
            ),
            ("basic_auth_users:\n  bob: hunter2\n", "not a bcrypt hash"),
            (
                "http_server_config:\n  headers:\n    X-Evil: 1\n",
                "can not be configured",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
                "invalid value for X-Frame-Options",
            ),
            ("tls_server_configg:\n  cert_file: c\n", "unknown field"),
            ("rate_limit:\n  interval: fast\n", "rate_limit.interval"),
            ("basic_auth_users: [a, b]\n", "basic_auth_users"),
            (":\n  - [\n", ""),
        ] {
            let e = p(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{text:?}: {e}");
        }
    }

    #[test]
    fn go_names_map_to_rustls() {
        let f = p("tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS10\n  cipher_suites: [TLS_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_RSA_WITH_AES_128_CBC_SHA]\n  curve_preferences: [X25519, CurveP521, CurveP256]\n")
            .unwrap();
        let t = f.tls.unwrap();
        assert_eq!(t.min_version, TlsVersion::Tls12);
        assert_eq!(
            t.cipher_suites.as_deref(),
            Some(&["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"][..])
        );
        assert_eq!(t.curves.as_deref(), Some(&["X25519", "secp256r1"][..]));
        assert_eq!(f.notes.len(), 3, "{:?}", f.notes);
        // Every name the table maps to exists in the provider, so nothing is silently lost.
        let base = provider::default_provider();
        for (_, ours) in TLS12_SUITES {
            if let Some(ours) = ours {
                assert!(
                    base.cipher_suites
                        .iter()
                        .any(|s| format!("{:?}", s.suite()) == *ours),
                    "{ours}"
                );
            }
        }
        for (_, ours) in CURVES {
            if let Some(ours) = ours {
                assert!(
                    base.kx_groups
                        .iter()
                        .any(|g| format!("{:?}", g.name()) == *ours),
                    "{ours}"
                );
            }
        }
    }

    #[test]
    fn durations() {
        let d = |s: &str| go_duration(&serde_yaml_ng::Value::String(s.into()));
        assert_eq!(d("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(d("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(d("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(d("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(d("0").unwrap(), Duration::ZERO);
        for bad in ["", "1", "s", "1x", "1..5s", "-1s"] {
            assert!(d(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials() {
        assert_eq!(
            basic_credentials(b"Basic YWxpY2U6cGE6c3M="),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(
            basic_credentials(b"basic  YWxpY2U6"),
            Some(("alice".into(), String::new()))
        );
        assert_eq!(basic_credentials(b"Bearer abc"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
        assert_eq!(basic_credentials(b"Basic YWxpY2U="), None);
        assert_eq!(basic_credentials(b"\xff"), None);
    }

    #[test]
    fn basic_auth_checks_and_caches() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = BasicAuth::new(BTreeMap::from([("alice".to_owned(), hash)]));
        let good = ("alice".to_owned(), "s3cret".to_owned());
        let wrong = ("alice".to_owned(), "nope".to_owned());
        let stranger = ("mallory".to_owned(), "s3cret".to_owned());
        assert_eq!(auth.check(None), AuthCheck::Denied);
        assert_eq!(auth.check(Some(&good)), AuthCheck::Verify);
        assert!(auth.verify(&good));
        assert_eq!(auth.check(Some(&good)), AuthCheck::Allowed);
        assert!(!auth.verify(&wrong));
        assert_eq!(auth.check(Some(&wrong)), AuthCheck::Verify);
        assert!(!auth.verify(&stranger));
        assert!(
            bcrypt::verify("x", DUMMY_HASH).is_ok(),
            "the dummy hash must parse"
        );
        assert_eq!(
            BasicAuth::new(BTreeMap::new()).check(None),
            AuthCheck::Allowed
        );
    }

    #[test]
    fn token_bucket() {
        let mut b = TokenBucket::new(RateLimit {
            interval: Duration::from_secs(1),
            burst: 2,
        });
        let t = Instant::now();
        assert!(b.allow(t));
        assert!(b.allow(t));
        assert!(!b.allow(t));
        assert!(!b.allow(t + Duration::from_millis(500)));
        assert!(b.allow(t + Duration::from_millis(1100)));
        let mut none = TokenBucket::new(RateLimit {
            interval: Duration::from_secs(1),
            burst: 0,
        });
        assert!(!none.allow(t));
    }
}
