//! A minimal HTTP/1.1 client for the relay's API (tests and benchmarks):
//! one request per connection, chunked bodies decoded, server-sent events
//! split.
#![allow(dead_code)] // each includer uses part of it

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct HttpResponse {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `data:` payloads of a server-sent event stream.
    pub fn events(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter_map(|e| {
                e.lines()
                    .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
            })
            .map(str::to_string)
            .collect()
    }
}

pub fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = raw.split_once("\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        raw = &rest[n + 2..];
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    extra: &[(&str, &str)],
) -> HttpResponse {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    // A server that refuses a body early (413) answers and closes while the
    // body is still being written: the write then fails (reset or broken
    // pipe) but the answer is already here to read, as real clients do.
    let refused_early = match body {
        Some(b) => s
            .write_all(b.as_bytes())
            .await
            .map_err(|e| {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    ),
                    "write body: {e}"
                )
            })
            .is_err(),
        None => false,
    };
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(300), s.read_to_end(&mut raw))
        .await
        .expect("response in time");
    // After an early refusal the connection ends in a reset, after the answer.
    if let Err(e) = read {
        assert!(
            refused_early && e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty(),
            "read: {e}"
        );
    }
    let raw = String::from_utf8(raw).expect("utf-8");
    let (head, rest) = raw.split_once("\r\n\r\n").expect("headers");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v == "chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// The tokens credited to `peer` in a `/api/ledger` answer.
pub fn tokens_of(ledger: &Value, peer: &str) -> u64 {
    ledger["balances"]
        .as_array()
        .expect("balances")
        .iter()
        .find(|b| b["peer_id"] == peer)
        .map_or(0, |b| b["tokens"].as_u64().expect("tokens"))
}

/// The requests (or embedding batches) credited to `peer` in a
/// `/api/ledger` answer.
pub fn requests_of(ledger: &Value, peer: &str) -> u64 {
    ledger["balances"]
        .as_array()
        .expect("balances")
        .iter()
        .find(|b| b["peer_id"] == peer)
        .map_or(0, |b| b["requests"].as_u64().expect("requests"))
}

/// A JSON request: the status and the body as JSON (`null` when it is not).
pub async fn json_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let body = body.map(Value::to_string);
    let r = http(
        addr,
        method,
        path,
        body.as_deref(),
        &[("content-type", "application/json")],
    )
    .await;
    let v = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

/// A server-sent event stream read as it comes: POSTs `body` to `path` and
/// hands out each `data:` event as JSON once whole.
pub struct EventStream {
    conn: tokio::net::TcpStream,
    raw: Vec<u8>,
    /// Where the chunked body starts in `raw` (after the headers).
    body_at: Option<usize>,
    /// The body decoded so far, whole events taken from its front.
    body: String,
    pub status: u16,
    /// The id in the `run` event, once read.
    pub run_id: Option<String>,
}

impl EventStream {
    pub async fn post(addr: std::net::SocketAddr, path: &str, body: &Value) -> Self {
        let body = body.to_string();
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(req.as_bytes()).await.expect("write");
        Self {
            conn,
            raw: Vec::new(),
            body_at: None,
            body: String::new(),
            status: 0,
            run_id: None,
        }
    }

    /// Moves whole chunks from `raw` into `body`.
    fn decode(&mut self) {
        if self.body_at.is_none() {
            let text = String::from_utf8_lossy(&self.raw);
            if let Some(end) = text.find("\r\n\r\n") {
                self.status = text[9..12].parse().expect("status");
                self.body_at = Some(end + 4);
            }
        }
        let Some(mut at) = self.body_at else { return };
        loop {
            let rest = &self.raw[at..];
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let size = std::str::from_utf8(&rest[..eol]).expect("chunk size line");
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if rest.len() < eol + 2 + n + 2 {
                break;
            }
            self.body
                .push_str(std::str::from_utf8(&rest[eol + 2..eol + 2 + n]).expect("utf-8 chunk"));
            at += eol + 2 + n + 2;
            if n == 0 {
                break;
            }
        }
        self.body_at = Some(at);
    }

    /// The next event, or `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            self.decode();
            if let Some(end) = self.body.find("\n\n") {
                let event: String = self.body.drain(..end + 2).collect();
                if let Some(d) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                    let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
                    if v["type"] == "run" {
                        self.run_id = v["id"].as_str().map(str::to_owned);
                    }
                    return Some(v);
                }
                continue;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(60), self.conn.read(&mut chunk))
                .await
                .expect("the stream goes on in time")
                .expect("read");
            if n == 0 {
                return None;
            }
            self.raw.extend_from_slice(&chunk[..n]);
        }
    }

    /// Events until one `what` says true (returned last).
    pub async fn until(&mut self, what: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        while let Some(e) = self.next().await {
            let stop = what(&e);
            seen.push(e);
            if stop {
                return seen;
            }
        }
        panic!("the stream ended first: {seen:?}");
    }
}
