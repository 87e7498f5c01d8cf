//! HTTP/1.1 requests written byte for byte, for what an HTTP library would tidy up before
//! sending (`/pub/../api` and `%2e%2e` are resolved by any URL parser) or frame its own way
//! (a chunked body).
use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// An answer: its status, its header lines (lower-cased names) and its body.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawAnswer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` (request line and header lines, without the blank line; `Host` and
/// `Connection: close` are added) and `body` as they are, and reads the answer to its end.
pub async fn request(addr: SocketAddr, head: &str, body: &[u8]) -> RawAnswer {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut bytes = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n").into_bytes();
    bytes.extend_from_slice(body);
    tcp.write_all(&bytes).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = match chunked {
        true => dechunk(body),
        false => body.to_owned(),
    };
    RawAnswer {
        status,
        headers,
        body,
    }
}

/// `GET target` with `headers` (`Name: value` lines).
pub async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> RawAnswer {
    let mut head = format!("GET {target} HTTP/1.1");
    for (name, value) in headers {
        head.push_str(&format!("\r\n{name}: {value}"));
    }
    request(addr, &head, b"").await
}

/// `body` in chunks of at most `size` bytes, with the closing chunk.
pub fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
