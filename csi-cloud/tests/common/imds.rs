//! The instance metadata service, IMDSv2, as the hypervisor serves it on
//! EC2: `PUT /latest/api/token` (with a TTL header) gives a session token;
//! `GET /latest/meta-data/<path>` answers only with that token (401
//! otherwise), 404 for what it does not have. Part of the hypervisor
//! stand-in; plain HTTP/1.1 on loopback, one request per connection.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "h5-imds-session-token";

/// A running metadata service; stops on drop.
pub struct Imds {
    addr: std::net::SocketAddr,
    tokens: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Imds {
    /// Serves `values` (path under `/latest/meta-data/` → body).
    pub async fn start(values: &[(&str, &str)]) -> Imds {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let values: Arc<HashMap<String, String>> =
            Arc::new(values.iter().map(|(k, v)| (format!("/latest/meta-data/{k}"), v.to_string())).collect());
        let (tokens, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (t, r) = (Arc::clone(&tokens), Arc::clone(&refused));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let (values, t, r) = (Arc::clone(&values), Arc::clone(&t), Arc::clone(&r));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Headers only: the client sends no body.
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let mut lines = head.lines();
                    let mut first = lines.next().unwrap_or("").split(' ');
                    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                    let header = |name: &str| {
                        head.lines().skip(1).find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                    };
                    let (status, body) = match (method, path) {
                        ("PUT", "/latest/api/token") if header("x-aws-ec2-metadata-token-ttl-seconds").is_some() => {
                            t.fetch_add(1, Ordering::Relaxed);
                            ("200 OK", TOKEN.to_string())
                        }
                        ("PUT", _) => ("400 Bad Request", String::new()),
                        ("GET", p) if header("x-aws-ec2-metadata-token").as_deref() != Some(TOKEN) => {
                            let _ = p;
                            r.fetch_add(1, Ordering::Relaxed);
                            ("401 Unauthorized", String::new())
                        }
                        ("GET", p) => match values.get(p) {
                            Some(v) => ("200 OK", v.clone()),
                            None => ("404 Not Found", String::new()),
                        },
                        _ => ("405 Method Not Allowed", String::new()),
                    };
                    let extra = if path == "/latest/api/token" {
                        "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n"
                    } else {
                        ""
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Imds { addr, tokens, refused, task }
    }

    /// `http://127.0.0.1:PORT` for `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Session tokens handed out.
    pub fn tokens_issued(&self) -> usize {
        self.tokens.load(Ordering::Relaxed)
    }

    /// Reads refused for a missing or wrong token.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.task.abort();
    }
}
