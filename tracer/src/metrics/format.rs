//! Exposition formats: [`Format`] negotiation from `Accept`, [`encode`] of a registry, and the
//! rewrite of OpenMetrics 1.0 into the Prometheus text format 0.0.4.

use std::collections::HashMap;
use std::fmt;

use prometheus_client::registry::Registry;

/// Exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Text,
}

impl Format {
    pub const OPENMETRICS_CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";
    pub const TEXT_CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => Self::OPENMETRICS_CONTENT_TYPE,
            Format::Text => Self::TEXT_CONTENT_TYPE,
        }
    }

    /// Picks the format from an `Accept` header: OpenMetrics when the client names
    /// `application/openmetrics-text` (version 1.0.0, 0.0.1 or none) with a quality at least as
    /// high as any range that covers `text/plain`; the 0.0.4 text format otherwise (no header,
    /// `*/*`, `text/plain`, anything unparsable).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let mut q_openmetrics = 0.0_f64;
        let mut q_text = 0.0_f64;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q = 1.0_f64;
            let mut version = None;
            for param in parts {
                let Some((k, v)) = param.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.parse().unwrap_or(0.0),
                    "version" => version = Some(v.to_owned()),
                    _ => {}
                }
            }
            if !(0.0..=1.0).contains(&q) {
                continue;
            }
            match media.as_str() {
                "application/openmetrics-text"
                    if matches!(version.as_deref(), None | Some("1.0.0" | "0.0.1")) =>
                {
                    q_openmetrics = q_openmetrics.max(q);
                }
                "text/plain" if matches!(version.as_deref(), None | Some("0.0.4")) => {
                    q_text = q_text.max(q);
                }
                "text/*" | "*/*" => q_text = q_text.max(q),
                _ => {}
            }
        }
        if q_openmetrics > 0.0 && q_openmetrics >= q_text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// Encoding the exposition failed (a metric value could not be written).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the metrics exposition")]
pub struct EncodeError(#[source] fmt::Error);

/// Encodes everything in `registry` in `format`; takes one snapshot.
pub fn encode(registry: &Registry, format: Format) -> Result<String, EncodeError> {
    let mut openmetrics = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut openmetrics, registry).map_err(EncodeError)?;
    Ok(match format {
        Format::OpenMetrics => openmetrics,
        Format::Text => openmetrics_to_text(&openmetrics),
    })
}

/// Rewrites an OpenMetrics exposition (as prometheus-client writes it) into the Prometheus
/// text format 0.0.4: drops `# UNIT` and `# EOF`; names counter families after their `_total`
/// samples and info families after their `_info` samples (typed `gauge`); `unknown` becomes
/// `untyped`; undoes the OpenMetrics-only `\"` escape in help text. Sample lines are the same
/// in both formats (no exemplars or timestamps are written here).
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut renames: HashMap<&str, (&str, &str)> = HashMap::new();
    for line in openmetrics.lines() {
        if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')) {
            let rename = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "unknown" => ("", "untyped"),
                _ => continue,
            };
            renames.insert(name, rename);
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = renames.get(name).map_or("", |r| r.0);
            out.push_str("# HELP ");
            out.push_str(name);
            out.push_str(suffix);
            out.push(' ');
            push_text_help(&mut out, help);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (suffix, kind) = renames.get(name).copied().unwrap_or(("", kind));
            out.push_str("# TYPE ");
            out.push_str(name);
            out.push_str(suffix);
            out.push(' ');
            out.push_str(kind);
        } else if line.starts_with('#') || line.is_empty() {
            // `# UNIT`, `# EOF`: not part of the 0.0.4 format.
            continue;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// OpenMetrics escapes `\`, newline and `"` in help text; 0.0.4 only `\` and newline.
fn push_text_help(out: &mut String, help: &str) {
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('"') => out.push('"'),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push_str("\\\\"),
            }
        } else {
            out.push(c);
        }
    }
}
