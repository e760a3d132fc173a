//! Request metrics, recorded by the gRPC handlers on the hot path.
//!
//! Every handle a handler touches is created once, when the server starts: a request that
//! succeeds costs one atomic increment per counter and one short uncontended lock for the
//! latency histogram (prometheus-client's histogram), and allocates nothing. Error counters are
//! looked up by their (static) label set when an error happens, which is off the hot path.
//! Per-partition state is not recorded here at all: `http` reads it from the replicas when
//! `/metrics` is scraped.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tonic::Code;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    rpc: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
}

/// The latency histograms, one per RPC, all with the same buckets.
type LatencyFamily = Family<RpcLabels, Histogram, fn() -> Histogram>;

/// Latency buckets: 0.5 ms doubling up to 32 s (a fetch long poll may wait 30 s).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// The counters and histogram of one RPC.
#[derive(Debug)]
pub(crate) struct RpcMetrics {
    rpc: &'static str,
    ok: Counter,
    /// Requests answered with an error, by gRPC code (created on the first error of a code).
    requests: Family<RequestLabels, Counter>,
    /// `None` for FetchStream, whose streams last as long as the client wants.
    latency: Option<Histogram>,
}

impl RpcMetrics {
    fn new(rpc: &'static str, requests: &Family<RequestLabels, Counter>, latency: Option<&LatencyFamily>) -> Self {
        Self {
            rpc,
            ok: requests.get_or_create(&RequestLabels { rpc, code: "ok" }).clone(),
            requests: requests.clone(),
            latency: latency.map(|family| family.get_or_create(&RpcLabels { rpc }).clone()),
        }
    }

    /// Counts one request answered with `code`, and its latency from `started`.
    pub(crate) fn record(&self, started: Instant, code: Code) {
        if let Some(latency) = &self.latency {
            latency.observe(started.elapsed().as_secs_f64());
        }
        self.count(code);
    }

    /// Counts one request answered with `code` (no latency: a stream's open).
    pub(crate) fn count(&self, code: Code) {
        if code == Code::Ok {
            self.ok.inc();
        } else {
            self.requests
                .get_or_create(&RequestLabels {
                    rpc: self.rpc,
                    code: code_name(code),
                })
                .inc();
        }
    }
}

/// Everything the data handlers record, and the registry that holds it.
#[derive(Debug)]
pub struct RequestMetrics {
    registry: Registry,
    pub(crate) produce: RpcMetrics,
    pub(crate) fetch: RpcMetrics,
    pub(crate) fetch_stream: RpcMetrics,
    /// Bytes of record batches acknowledged to producers (bytes in).
    pub(crate) produce_bytes: Counter,
    pub(crate) produce_records: Counter,
    /// Bytes of record batches sent to consumers by Fetch and FetchStream (bytes out).
    pub(crate) fetch_bytes: Counter,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = LatencyFamily::new_with_constructor(latency_histogram);
        registry.register(
            "weir_requests",
            "Produce, Fetch and FetchStream requests answered, by RPC and gRPC code (ok or the error's code; a FetchStream counts once, when it opens)",
            requests.clone(),
        );
        registry.register(
            "weir_request_duration_seconds",
            "Time from a Produce or Fetch request's arrival to its answer (a produce waits for its commit, a fetch at the high watermark for new records)",
            latency.clone(),
        );
        let produce_bytes = Counter::default();
        let produce_records = Counter::default();
        let fetch_bytes = Counter::default();
        registry.register(
            "weir_produce_bytes",
            "Bytes of record batches acknowledged to producers",
            produce_bytes.clone(),
        );
        registry.register(
            "weir_produce_records",
            "Records acknowledged to producers",
            produce_records.clone(),
        );
        registry.register(
            "weir_fetch_bytes",
            "Bytes of record batches sent to consumers (Fetch and FetchStream)",
            fetch_bytes.clone(),
        );
        Self {
            produce: RpcMetrics::new("produce", &requests, Some(&latency)),
            fetch: RpcMetrics::new("fetch", &requests, Some(&latency)),
            fetch_stream: RpcMetrics::new("fetch_stream", &requests, None),
            produce_bytes,
            produce_records,
            fetch_bytes,
            registry,
        }
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The gRPC code as Prometheus label value (snake case, as in the gRPC spec's names).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_rpc_and_code() {
        let metrics = RequestMetrics::new();
        let started = Instant::now();
        metrics.produce.record(started, Code::Ok);
        metrics.produce.record(started, Code::Ok);
        metrics.produce.record(started, Code::Unavailable);
        metrics.fetch.record(started, Code::OutOfRange);
        metrics.produce_bytes.inc_by(100);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, metrics.registry()).unwrap();
        for line in [
            "weir_requests_total{rpc=\"produce\",code=\"ok\"} 2",
            "weir_requests_total{rpc=\"produce\",code=\"unavailable\"} 1",
            "weir_requests_total{rpc=\"fetch\",code=\"out_of_range\"} 1",
            "weir_request_duration_seconds_count{rpc=\"produce\"} 3",
            "weir_produce_bytes_total 100",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }
}
