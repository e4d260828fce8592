//! The endpoint over real TCP: what a Prometheus server scraping it sees.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prom_endpoint::prometheus_client::metrics::counter::Counter;
use prom_endpoint::prometheus_client::metrics::family::Family;
use prom_endpoint::{parse_address, parse_text, scrape, serve, value, FnGauge, Registry};

const T: Duration = Duration::from_secs(5);

/// A raw HTTP/1.1 exchange: the status line and the body.
fn raw(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect_timeout(&addr, T).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[tokio::test(flavor = "current_thread")]
async fn serves_the_registry_and_nothing_else() {
    let mut reg = Registry::default();
    let ops = Family::<Vec<(String, String)>, Counter>::default();
    reg.register("demo_operations", "operations by code", ops.clone());
    let level = Arc::new(AtomicI64::new(7));
    let l = level.clone();
    FnGauge::register(&mut reg, "demo_level", "a level read at scrape time", move || l.load(Ordering::Relaxed));
    for _ in 0..3 {
        ops.get_or_create(&vec![("code".into(), "OK".into())]).inc();
    }
    ops.get_or_create(&vec![("code".into(), "InvalidArgument".into())]).inc();

    let ep = serve("127.0.0.1:0".parse().unwrap(), reg).await.unwrap();
    let addr = ep.local_addr();
    assert_ne!(addr.port(), 0);

    let body = tokio::task::spawn_blocking(move || scrape(addr, T)).await.unwrap().unwrap();
    let s = parse_text(&body).unwrap();
    assert_eq!(value(&s, "demo_operations_total", &[("code", "OK")]), Some(3.0), "{body}");
    assert_eq!(value(&s, "demo_operations_total", &[("code", "InvalidArgument")]), Some(1.0), "{body}");
    assert_eq!(value(&s, "demo_level", &[]), Some(7.0), "{body}");
    assert!(body.contains("# TYPE demo_operations_total counter"), "{body}");
    assert!(body.contains("# TYPE demo_level gauge"), "{body}");

    // Read at every scrape.
    level.store(-2, Ordering::Relaxed);
    let body = tokio::task::spawn_blocking(move || scrape(addr, T)).await.unwrap().unwrap();
    assert_eq!(value(&parse_text(&body).unwrap(), "demo_level", &[]), Some(-2.0), "{body}");

    let (head, body) = tokio::task::spawn_blocking(move || {
        raw(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");

    let (head, _) =
        tokio::task::spawn_blocking(move || raw(addr, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
            .await
            .unwrap();
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = tokio::task::spawn_blocking(move || {
        raw(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    })
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");

    // Dropping the endpoint closes the listener.
    drop(ep);
    tokio::task::yield_now().await;
    let gone = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + T;
        loop {
            match std::net::TcpStream::connect_timeout(&addr, T) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
                _ if std::time::Instant::now() > deadline => return false,
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    // The accept task must get to run to be aborted: keep the runtime turning.
    let gone = loop {
        if gone.is_finished() {
            break gone.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(gone, "the listener stayed open after the endpoint was dropped");
}

#[tokio::test(flavor = "current_thread")]
async fn a_busy_or_bad_address_is_an_error_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let e = serve(addr, Registry::default()).await.unwrap_err().to_string();
    assert!(e.contains("--metrics-address") && e.contains(&addr.to_string()) && e.contains("in use"), "{e}");

    for bad in ["localhost:9100", "9100", "127.0.0.1", "1.2.3.4:70000", ""] {
        let e = parse_address(bad).unwrap_err();
        assert!(e.contains("IP:PORT"), "{bad}: {e}");
    }
    assert_eq!(parse_address("[::1]:9101").unwrap(), "[::1]:9101".parse::<SocketAddr>().unwrap());
}
