//! A business upstream whose answers are written byte for byte by a script, and which records
//! every request it read — head and body, as bytes — in order: to see exactly what the gateway
//! forwarded (smuggled requests show up as requests), and to answer in framings no HTTP
//! library would write (two lengths, a length beside a transfer coding, stray bytes after an
//! answer, an unasked 101, an answer before the body was read).
//!
//! It reads requests as a strict origin server would: `Content-Length` or chunked (chunk
//! extensions skipped, trailers kept in the recorded body). A path ending in `/answers-early`
//! is answered as soon as its head is read, without reading its body, and the connection is
//! closed (as a server that refuses a large upload does).
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

/// An answer's bytes, and whether the upstream closes the connection after it, by request
/// line and the length of the body that came with it.
pub type Script = fn(&str, usize) -> (Vec<u8>, bool);

/// A `200` whose body is `text`, the connection kept open: a script's plain answer.
pub fn ok(text: &str) -> (Vec<u8>, bool) {
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    );
    (answer.into_bytes(), false)
}

/// A request as the upstream read it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Request line and fields, up to and with the blank line.
    pub head: String,
    /// The body's bytes (a chunked body's data, its trailer lines after).
    pub body: Vec<u8>,
    /// The chunked body's trailer section (empty without).
    pub trailers: String,
}

pub struct Scripted {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    pub async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (log, count) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(tcp, log.clone(), script));
            }
        });
        Self {
            addr,
            seen,
            connections,
            task,
        }
    }

    /// A routes file sending `/api/` to this upstream, a session required.
    pub fn routes(&self) -> String {
        format!(
            "[[route]]\nprefix = \"/api/\"\nupstream = \"http://{}\"\nsession = \"required\"\n",
            self.addr
        )
    }

    /// Every request head it read, in order.
    pub fn seen(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.head).collect()
    }

    /// Every request it read, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// TCP connections it accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads what `tcp` has next onto `buf`; `false` once it is closed.
async fn read_more(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match tcp.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// The index just past the next CRLF at or after `at`, reading more as needed.
async fn line_end(tcp: &mut TcpStream, buf: &mut Vec<u8>, at: usize) -> Option<usize> {
    loop {
        if let Some(i) = buf[at..].windows(2).position(|w| w == b"\r\n") {
            return Some(at + i + 2);
        }
        if !read_more(tcp, buf).await {
            return None;
        }
    }
}

async fn serve(mut tcp: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, script: Script) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if !read_more(&mut tcp, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let line = head.lines().next().unwrap_or_default().to_owned();
        if line.contains("/answers-early") {
            seen.lock().expect("lock").push(Seen {
                head,
                body: Vec::new(),
                trailers: String::new(),
            });
            let (answer, _) = script(&line, 0);
            let _ = tcp.write_all(&answer).await;
            return;
        }
        let field = |wanted: &str| {
            head.lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
                .map(|(_, value)| value.trim().to_ascii_lowercase())
        };
        let chunked = field("transfer-encoding").is_some_and(|v| v.ends_with("chunked"));
        let (mut body, mut trailers) = (Vec::new(), String::new());
        let rest = if chunked {
            let mut at = end;
            loop {
                let Some(size_end) = line_end(&mut tcp, &mut buf, at).await else {
                    return;
                };
                let size_line = String::from_utf8_lossy(&buf[at..size_end - 2]).into_owned();
                let digits = size_line.split(';').next().unwrap_or_default().trim();
                let Ok(size) = usize::from_str_radix(digits, 16) else {
                    return;
                };
                if size == 0 {
                    // Trailer lines, to the blank line.
                    let mut at_line = size_end;
                    loop {
                        let Some(next) = line_end(&mut tcp, &mut buf, at_line).await else {
                            return;
                        };
                        if next - at_line == 2 {
                            at_line = next;
                            break;
                        }
                        trailers.push_str(&String::from_utf8_lossy(&buf[at_line..next]));
                        at_line = next;
                    }
                    break at_line;
                }
                while buf.len() < size_end + size + 2 {
                    if !read_more(&mut tcp, &mut buf).await {
                        return;
                    }
                }
                body.extend_from_slice(&buf[size_end..size_end + size]);
                at = size_end + size + 2;
            }
        } else {
            let length = field("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < end + length {
                if !read_more(&mut tcp, &mut buf).await {
                    return;
                }
            }
            body.extend_from_slice(&buf[end..end + length]);
            end + length
        };
        buf.drain(..rest);
        let length = body.len();
        seen.lock().expect("lock").push(Seen {
            head,
            body,
            trailers,
        });
        if line.contains("/api/slow") {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let (answer, close) = script(&line, length);
        if tcp.write_all(&answer).await.is_err() || close {
            return;
        }
    }
}
