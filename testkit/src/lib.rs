//! What the suites, benchmarks, demo and the plugins' own integration tests
//! share: unique names, network namespaces, test networks, running a CNI
//! plugin as a process, check results, and the multi-host lab.
//!
//! Every resource is named `cft-<pid>-<n>` (links `cf<pid36>-<n36>`) and
//! removed by Drop guards, even when a test fails; [`net::sweep_dead_runs`]
//! reclaims what a killed run left behind.
//!
//! * [`util`]: host tools, unique names, the error alias.
//! * [`netns`]: a network namespace that is deleted on drop.
//! * [`node`]: a node in a namespace, plugin chains (conflists) attaching containers to it.
//! * [`net`]: test networks, subnet claims, leftovers of dead runs.
//! * [`plugin`]: executing a CNI plugin with the spec's environment and stdin.
//! * [`probe`]: TCP, UDP, ICMP probes and a long-lived stream, sent from inside namespaces.
//! * [`report`]: a check's verdict, tables and JSON.
//! * [`bgp`]: BIRD, GoBGP and FRR as BGP peers in a namespace (docs/testing-bgp.md).
//! * [`lab`]: hosts as namespaces on L2 segments, a router, etcd, captures (docs/lab.md).
//! * [`moto`]: the AWS API emulator for csi-cloud's tests, one server per fixture.
//! * [`service`]: a server (a CSI driver) run as a process on a unix socket of its own.
//!
//! Errors: every function returns [`util::R`], a `Result<T, String>` whose
//! message says what failed and why; tests and the CLI print it as is.
//! Build it with [`bail!`] / [`ensure!`] and add context with [`util::Context`].

pub mod bgp;
pub mod lab;
pub mod moto;
pub mod net;
pub mod netns;
pub mod node;
pub mod plugin;
pub mod probe;
pub mod report;
pub mod rng;
pub mod service;
pub mod util;
