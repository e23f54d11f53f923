//! Prometheus metrics, exposed at `/metrics` in the text exposition format (version 0.0.4).
//!
//! Request counters and latency histograms are labelled by route *template* (never the raw
//! path, which holds user IDs and transaction IDs), method and status. The mailbox depth comes
//! from the database on a timer (`metrics.refresh_secs`), so scrapes never query the database.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ratelimit::LimitKind;

/// Upper bounds (seconds) of the latency histogram buckets.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Content type of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum_secs: f64,
}

/// Callback that reports how many `/sync` requests are waiting right now.
pub type Gauge = Box<dyn Fn() -> usize + Send + Sync>;

/// All metrics of one process.
pub struct Metrics {
    start_secs: f64,
    /// Route template -> method -> stats (nested so that recording a request allocates
    /// nothing once its route and method have been seen).
    routes: Mutex<BTreeMap<String, BTreeMap<String, RouteStats>>>,
    rate_limited: [AtomicU64; 4],
    mailbox_depth: AtomicI64,
    mailbox_refreshed_ms: AtomicI64,
    mailbox_refresh_errors: AtomicU64,
    waiting_syncs: OnceLock<Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Empty metrics; the start time is now.
    pub fn new() -> Metrics {
        Metrics {
            start_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            routes: Mutex::new(BTreeMap::new()),
            rate_limited: Default::default(),
            mailbox_depth: AtomicI64::new(0),
            mailbox_refreshed_ms: AtomicI64::new(0),
            mailbox_refresh_errors: AtomicU64::new(0),
            waiting_syncs: OnceLock::new(),
        }
    }

    /// Records one finished request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, latency: Duration) {
        let secs = latency.as_secs_f64();
        let mut routes = match self.routes.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        let by_method = match routes.get_mut(route) {
            Some(by_method) => by_method,
            None => routes.entry(route.to_owned()).or_default(),
        };
        let stats = match by_method.get_mut(method) {
            Some(stats) => stats,
            None => by_method.entry(method.to_owned()).or_default(),
        };
        *stats.by_status.entry(status).or_insert(0) += 1;
        stats.count += 1;
        stats.sum_secs += secs;
        if let Some(i) = LATENCY_BUCKETS.iter().position(|le| secs <= *le) {
            stats.buckets[i] += 1;
        }
    }

    /// Counts a request refused by a rate limit.
    pub fn rate_limited(&self, kind: LimitKind) {
        let i = LimitKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.rate_limited[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the number of queued to-device messages (from the store).
    pub fn set_mailbox_depth(&self, depth: i64) {
        self.mailbox_depth.store(depth, Ordering::Relaxed);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.mailbox_refreshed_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Counts a failed mailbox depth refresh.
    pub fn mailbox_refresh_failed(&self) {
        self.mailbox_refresh_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Installs the waiting-syncs gauge (once).
    pub fn set_waiting_syncs(&self, gauge: Gauge) {
        let _ = self.waiting_syncs.set(gauge);
    }

    /// The whole exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let routes = match self.routes.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        header(
            &mut out,
            "hushd_http_requests_total",
            "counter",
            "HTTP requests answered, by route template, method and status.",
        );
        let flat = || {
            routes
                .iter()
                .flat_map(|(route, m)| m.iter().map(move |(method, stats)| (route, method, stats)))
        };
        for (route, method, stats) in flat() {
            for (status, n) in &stats.by_status {
                let _ = writeln!(
                    out,
                    "hushd_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                    escape(route),
                    escape(method)
                );
            }
        }
        header(
            &mut out,
            "hushd_http_request_duration_seconds",
            "histogram",
            "Time from request received to response headers, by route template and method.",
        );
        for (route, method, stats) in flat() {
            let labels = format!("route=\"{}\",method=\"{}\"", escape(route), escape(method));
            let mut cumulative = 0;
            for (le, n) in LATENCY_BUCKETS.iter().zip(stats.buckets.iter()) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "hushd_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "hushd_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                stats.count
            );
            let _ = writeln!(
                out,
                "hushd_http_request_duration_seconds_sum{{{labels}}} {}",
                stats.sum_secs
            );
            let _ = writeln!(
                out,
                "hushd_http_request_duration_seconds_count{{{labels}}} {}",
                stats.count
            );
        }
        drop(routes);
        header(
            &mut out,
            "hushd_rate_limited_total",
            "counter",
            "Requests refused with 429 M_LIMIT_EXCEEDED, by limit.",
        );
        for (kind, n) in LimitKind::ALL.iter().zip(self.rate_limited.iter()) {
            let _ = writeln!(
                out,
                "hushd_rate_limited_total{{limit=\"{}\"}} {}",
                kind.name(),
                n.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "hushd_mailbox_queued_messages",
            "gauge",
            "Undelivered to-device messages in all mailboxes (refreshed every metrics.refresh_secs).",
        );
        let _ = writeln!(
            out,
            "hushd_mailbox_queued_messages {}",
            self.mailbox_depth.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "hushd_mailbox_refreshed_timestamp_seconds",
            "gauge",
            "When hushd_mailbox_queued_messages was last read from the database.",
        );
        let _ = writeln!(
            out,
            "hushd_mailbox_refreshed_timestamp_seconds {}",
            self.mailbox_refreshed_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        header(
            &mut out,
            "hushd_mailbox_refresh_errors_total",
            "counter",
            "Failed reads of the mailbox depth.",
        );
        let _ = writeln!(
            out,
            "hushd_mailbox_refresh_errors_total {}",
            self.mailbox_refresh_errors.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "hushd_sync_waiting",
            "gauge",
            "/sync requests currently long-polling.",
        );
        let waiting = self.waiting_syncs.get().map(|g| g()).unwrap_or(0);
        let _ = writeln!(out, "hushd_sync_waiting {waiting}");
        header(
            &mut out,
            "hushd_build_info",
            "gauge",
            "Build information; the value is always 1.",
        );
        let _ = writeln!(
            out,
            "hushd_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        header(
            &mut out,
            "hushd_start_time_seconds",
            "gauge",
            "Process start time (Unix seconds).",
        );
        let _ = writeln!(out, "hushd_start_time_seconds {}", self.start_secs);
        if let Some(rss) = resident_bytes() {
            header(
                &mut out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
            );
            let _ = writeln!(out, "process_resident_memory_bytes {rss}");
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `VmRSS` of this process from `/proc/self/status` (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::new();
        m.observe_request(
            "/_matrix/client/v3/sync",
            "GET",
            200,
            Duration::from_millis(3),
        );
        m.observe_request(
            "/_matrix/client/v3/sync",
            "GET",
            200,
            Duration::from_millis(30),
        );
        m.observe_request("unmatched", "GET", 404, Duration::from_micros(100));
        m.rate_limited(LimitKind::Login);
        m.set_mailbox_depth(42);
        m.set_waiting_syncs(Box::new(|| 7));
        let text = m.render();
        assert!(text.contains(
            "hushd_http_requests_total{route=\"/_matrix/client/v3/sync\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "hushd_http_request_duration_seconds_bucket{route=\"/_matrix/client/v3/sync\",method=\"GET\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "hushd_http_request_duration_seconds_bucket{route=\"/_matrix/client/v3/sync\",method=\"GET\",le=\"+Inf\"} 2"
        ));
        assert!(text.contains("hushd_rate_limited_total{limit=\"login\"} 1"));
        assert!(text.contains("hushd_mailbox_queued_messages 42"));
        assert!(text.contains("hushd_sync_waiting 7"));
        assert!(text.contains("hushd_build_info{version="));
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "undeclared {name}"
            );
        }
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
