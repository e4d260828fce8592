//! What every CSI driver reports on `--metrics-address` (docs/csi-core.md,
//! "Metrics"): each gRPC call by method and status code, and its latency.
//!
//! The server runner ([`crate::server::run_with_metrics`]) counts every
//! call in the same tower layer that logs it, so the counts are what a
//! client saw: the status code of the response, an error from a handler
//! or from validation alike. A driver adds its own metrics to the
//! [`Registry`] it hands to the runner.

use prom_endpoint::prometheus_client::metrics::counter::Counter;
use prom_endpoint::prometheus_client::metrics::family::Family;
use prom_endpoint::prometheus_client::metrics::histogram::Histogram;
use prom_endpoint::Registry;

/// `{method, code}`.
type OpLabels = [(&'static str, String); 2];
/// `{method}`.
type MethodLabels = [(&'static str, String); 1];

/// The per-call metrics: `csi_operations_total` and
/// `csi_operation_duration_seconds`.
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    ops: Family<OpLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(prom_endpoint::LATENCY_BUCKETS)
}

impl RpcMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> RpcMetrics {
        let m = RpcMetrics {
            ops: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        };
        registry.register("csi_operations", "CSI gRPC calls answered, by method and gRPC status code", m.ops.clone());
        registry.register(
            "csi_operation_duration_seconds",
            "Time from a CSI call's arrival to its response, by method",
            m.latency.clone(),
        );
        m
    }

    /// Records one call of `path` (`/csi.v1.Controller/CreateVolume`) that
    /// ended with `code` after `seconds`.
    pub fn observe(&self, path: &str, code: tonic::Code, seconds: f64) {
        let method = method_label(path);
        self.ops.get_or_create(&[("method", method.clone()), ("code", code_name(code).to_string())]).inc();
        self.latency.get_or_create(&[("method", method)]).observe(seconds);
    }
}

/// The `method` label: the gRPC path of a CSI method, or `other` for any
/// path outside `csi.v1` (so a client sending made-up paths cannot make
/// the series grow without bound).
pub fn method_label(path: &str) -> String {
    let csi = path.strip_prefix("/csi.v1.").and_then(|r| r.split_once('/')).is_some_and(|(svc, m)| {
        matches!(svc, "Identity" | "Controller" | "Node" | "GroupController" | "SnapshotMetadata")
            && !m.is_empty()
            && m.chars().all(|c| c.is_ascii_alphanumeric())
    });
    if csi {
        path.to_string()
    } else {
        "other".to_string()
    }
}

/// The `code` label: the gRPC code's canonical name as gRPC-Go prints it
/// (`OK`, `InvalidArgument`, `NotFound`...), the same strings the
/// Kubernetes CSI sidecars' metrics use.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "Canceled",
        C::Unknown => "Unknown",
        C::InvalidArgument => "InvalidArgument",
        C::DeadlineExceeded => "DeadlineExceeded",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::ResourceExhausted => "ResourceExhausted",
        C::FailedPrecondition => "FailedPrecondition",
        C::Aborted => "Aborted",
        C::OutOfRange => "OutOfRange",
        C::Unimplemented => "Unimplemented",
        C::Internal => "Internal",
        C::Unavailable => "Unavailable",
        C::DataLoss => "DataLoss",
        C::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_named_like_grpc_go() {
        assert_eq!(method_label("/csi.v1.Controller/CreateVolume"), "/csi.v1.Controller/CreateVolume");
        assert_eq!(method_label("/csi.v1.Node/NodeStageVolume"), "/csi.v1.Node/NodeStageVolume");
        for odd in ["/x.y/Z", "/csi.v1.Controller/", "/csi.v1.Evil/Do", "/csi.v1.Node/a/b", "", "/"] {
            assert_eq!(method_label(odd), "other", "{odd}");
        }
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::Cancelled), "Canceled");
        assert_eq!(code_name(tonic::Code::InvalidArgument), "InvalidArgument");
    }

    #[test]
    fn calls_are_counted_by_method_and_code() {
        let mut reg = Registry::default();
        let m = RpcMetrics::register(&mut reg);
        m.observe("/csi.v1.Controller/CreateVolume", tonic::Code::Ok, 0.002);
        m.observe("/csi.v1.Controller/CreateVolume", tonic::Code::Ok, 0.003);
        m.observe("/csi.v1.Controller/CreateVolume", tonic::Code::InvalidArgument, 0.0001);
        let s = prom_endpoint::parse_text(&prom_endpoint::encode(&reg, false).unwrap()).unwrap();
        let v = |name, labels: &[(&str, &str)]| prom_endpoint::value(&s, name, labels);
        let cv = "/csi.v1.Controller/CreateVolume";
        assert_eq!(v("csi_operations_total", &[("method", cv), ("code", "OK")]), Some(2.0));
        assert_eq!(v("csi_operations_total", &[("method", cv), ("code", "InvalidArgument")]), Some(1.0));
        assert_eq!(v("csi_operation_duration_seconds_count", &[("method", cv)]), Some(3.0));
        assert_eq!(v("csi_operation_duration_seconds_bucket", &[("method", cv), ("le", "0.001")]), Some(1.0));
        assert_eq!(v("csi_operation_duration_seconds_bucket", &[("method", cv), ("le", "0.0025")]), Some(2.0));
    }
}
