//! What `cni-overlay agent --metrics-address` reports (docs/cni-overlay.md,
//! "Metrics"): the lease, its renewals, etcd errors, watch resyncs, what is
//! programmed in the kernel and how long a reconcile pass takes.
//!
//! The values are kept whether or not the endpoint is on (a few atomics);
//! the endpoint only serves them.

use std::time::Duration;

use prom_endpoint::prometheus_client::metrics::counter::Counter;
use prom_endpoint::prometheus_client::metrics::family::Family;
use prom_endpoint::prometheus_client::metrics::gauge::Gauge;
use prom_endpoint::prometheus_client::metrics::histogram::Histogram;
use prom_endpoint::Registry;

type Label = [(&'static str, &'static str); 1];

/// Which etcd call failed (`op` label of `cni_overlay_etcd_errors_total`).
#[derive(Clone, Copy, Debug)]
pub enum EtcdOp {
    /// Connecting the client at start.
    Connect,
    /// Reading the network config.
    Config,
    /// Acquiring (or re-taking) the host's lease.
    Acquire,
    /// Listing every lease (start).
    List,
    /// Renewing the lease.
    Renew,
}

impl EtcdOp {
    fn label(self) -> &'static str {
        match self {
            EtcdOp::Connect => "connect",
            EtcdOp::Config => "config",
            EtcdOp::Acquire => "acquire",
            EtcdOp::List => "list",
            EtcdOp::Renew => "renew",
        }
    }
}

/// One plane's counts of kernel entries the agent programmed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    /// Routes to remote subnets.
    pub routes: i64,
    /// FDB entries (VTEP MAC -> peer's underlay address).
    pub fdb: i64,
    /// Neighbour entries (peer's VTEP address -> VTEP MAC).
    pub neighbours: i64,
}

/// The agent's metrics; cheap to clone (every field is shared).
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    lease_held: Family<[(&'static str, String); 1], Gauge>,
    renewals: Family<Label, Counter>,
    etcd_errors: Family<Label, Counter>,
    resyncs: Counter,
    remote_subnets: Gauge,
    routes: Family<Label, Gauge>,
    fdb: Family<Label, Gauge>,
    neighbours: Family<Label, Gauge>,
    reconcile: Histogram,
}

impl AgentMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> AgentMetrics {
        let m = AgentMetrics {
            lease_held: Family::default(),
            renewals: Family::default(),
            etcd_errors: Family::default(),
            resyncs: Counter::default(),
            remote_subnets: Gauge::default(),
            routes: Family::default(),
            fdb: Family::default(),
            neighbours: Family::default(),
            reconcile: Histogram::new(prom_endpoint::LATENCY_BUCKETS),
        };
        let r = registry.sub_registry_with_prefix("cni_overlay");
        r.register(
            "lease_held",
            "1 while this host holds the lease of the subnet, 0 once it is lost",
            m.lease_held.clone(),
        );
        r.register("lease_renewals", "Lease renewals, by result (ok, error)", m.renewals.clone());
        r.register(
            "etcd_errors",
            "Failed etcd calls, by operation (connect, config, acquire, list, renew)",
            m.etcd_errors.clone(),
        );
        r.register(
            "watch_resyncs",
            "Full re-reads of every lease after the lease watch broke (etcd restart, lost connection, compaction)",
            m.resyncs.clone(),
        );
        r.register("remote_subnets", "Other hosts' subnets known from etcd", m.remote_subnets.clone());
        r.register("routes", "Routes to other hosts' subnets programmed, by family", m.routes.clone());
        r.register("fdb_entries", "VXLAN FDB entries programmed, by family", m.fdb.clone());
        r.register("neighbour_entries", "VTEP neighbour entries programmed, by family", m.neighbours.clone());
        r.register(
            "reconcile_duration_seconds",
            "Time of a full reconcile pass (at start and after each watch resync)",
            m.reconcile.clone(),
        );
        m
    }

    /// The lease of `subnet` (an IPv4 or IPv6 subnet) is held or lost.
    pub fn lease(&self, subnet: &str, held: bool) {
        self.lease_held.get_or_create(&[("subnet", subnet.to_string())]).set(i64::from(held));
    }

    /// One renewal, ok or not.
    pub fn renewal(&self, ok: bool) {
        self.renewals.get_or_create(&[("result", if ok { "ok" } else { "error" })]).inc();
    }

    /// A failed etcd call.
    pub fn etcd_error(&self, op: EtcdOp) {
        self.etcd_errors.get_or_create(&[("op", op.label())]).inc();
    }

    /// The watch broke and every lease was read again.
    pub fn resync(&self) {
        self.resyncs.inc();
    }

    /// A reconcile pass took `d`.
    pub fn reconciled(&self, d: Duration) {
        self.reconcile.observe(d.as_secs_f64());
    }

    /// What is known and programmed now: `remote` other hosts' subnets, and
    /// per family (`ipv4`, `ipv6`) the kernel entries.
    pub fn dataplane(&self, remote: usize, planes: &[(&'static str, Programmed)]) {
        self.remote_subnets.set(remote as i64);
        for (family, p) in planes {
            self.routes.get_or_create(&[("family", family)]).set(p.routes);
            self.fdb.get_or_create(&[("family", family)]).set(p.fdb);
            self.neighbours.get_or_create(&[("family", family)]).set(p.neighbours);
        }
    }
}
