//! The fast path and hyper agree (DESIGN, "HTTP at the edge": "tested by feeding both the same
//! heads and bodies"): random requests — methods, versions, odd paths and queries, identity
//! and routing fields in every spelling, lengths right, twice, wrong and beside a transfer
//! coding, chunked bodies with extensions and trailers, framing faults — are sent byte for
//! byte to a gateway with the fast path on and to one with it off, in front of one recording
//! upstream. Each time both answer with the same statuses, and the upstream gets the same
//! requests from both (request line, fields, body, trailers), or none from either.
//!
//! Bounded for CI: `WEAPP_AGREEMENT_CASES` cases (default 256).
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use weapp_tests::scripted::Seen;

use crate::smuggling::{Edge, credentials, exchange, statuses};

/// One request, to be written for each gateway (`{auth}` becomes its session's credentials).
#[derive(Clone, Debug)]
struct Raw {
    head: String,
    body: Vec<u8>,
}

fn method() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS",
    ])
}

fn target() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        8 => prop::sample::select(vec!["a", "b", "orders", "%41", "~u", "a%20b", "", "."]),
        1 => prop::sample::select(vec!["..", "%2e%2e", "%2E", "x;y", "%2F", "%5c", "*"]),
    ];
    let query = prop_oneof![
        8 => prop::sample::select(vec!["", "?a=1", "?X-WX-Skey=s&b=2", "?x-wx-id=i", "?q=a+b&c", "?"]),
        1 => prop::sample::select(vec!["?#x", "?a=%ZZ"]),
    ];
    (
        prop::sample::select(vec!["/pub/", "/api/", "/cr/", "/", "/me/", "/pub//"]),
        prop::collection::vec(segment, 0..4),
        query,
    )
        .prop_map(|(prefix, segments, query)| format!("{prefix}{}{query}", segments.join("/")))
}

fn field() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "X-Custom",
        "x_wx_openid",
        "X-WX-OPENID",
        "X_Weapp_Open_Id",
        "X-Weapp-User",
        "x-wx-skey",
        "Forwarded",
        "X-Forwarded-Host",
        "X-Forwarded-For",
        "X_Forwarded_Proto",
        "X-Original-URL",
        "X_Rewrite_URL",
        "X-Real-IP",
        "Accept",
        "Content-Type",
        "Cookie",
        "Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Proxy-Connection",
        "Expect",
        "Via",
    ]);
    // Fields that frame the message or name its host: a second one is often refused.
    let framing = prop::sample::select(vec!["Host", "Content-Length", "Transfer-Encoding"]);
    let value = prop::sample::select(vec![
        "1",
        "victim",
        "a, b",
        "close",
        "keep-alive",
        "x-custom",
        "100-continue",
        "chunked",
        "gzip",
        "trailers",
        "3",
        "",
        "for=1.2.3.4;proto=https",
        "text/plain; charset=utf-8",
        "y\tz",
    ]);
    let odd = prop::sample::select(vec![
        "Bad Name: 1",
        "X-Space : 1",
        " folded",
        "X-Nul: a\0b",
        "X-Bare: a\nb",
        "X-Cr: a\rb",
        "NoColon",
    ]);
    prop_oneof![
        30 => (name, value.clone()).prop_map(|(n, v)| format!("{n}: {v}")),
        2 => (framing, value).prop_map(|(n, v)| format!("{n}: {v}")),
        1 => odd.prop_map(str::to_owned),
    ]
}

/// How the body is framed, and its bytes.
#[derive(Clone, Debug)]
enum Framing {
    None,
    Length(Vec<u8>),
    LengthTwice(Vec<u8>),
    LengthWrong(Vec<u8>),
    Chunked(Vec<Vec<u8>>, bool, bool),
    ChunkedBroken(Vec<u8>),
}

fn framing() -> impl Strategy<Value = Framing> {
    let bytes = || prop::collection::vec(any::<u8>(), 0..48);
    prop_oneof![
        4 => Just(Framing::None),
        4 => bytes().prop_map(Framing::Length),
        1 => bytes().prop_map(Framing::LengthTwice),
        1 => bytes().prop_map(Framing::LengthWrong),
        3 => (prop::collection::vec(bytes(), 0..4), any::<bool>(), any::<bool>())
            .prop_map(|(c, e, t)| Framing::Chunked(c, e, t)),
        1 => bytes().prop_map(Framing::ChunkedBroken),
    ]
}

fn request() -> impl Strategy<Value = Raw> {
    (
        method(),
        target(),
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
        prop_oneof![1 => Just(0usize), 12 => Just(1), 1 => Just(2)],
        any::<bool>(),
        prop::collection::vec(field(), 0..6),
        framing(),
    )
        .prop_map(|(method, target, version, hosts, auth, fields, framing)| {
            let mut head = format!("{method} {target} {version}\r\n");
            for _ in 0..hosts {
                head.push_str("Host: gateway.example\r\n");
            }
            if auth {
                head.push_str("{auth}");
            }
            for field in fields {
                head.push_str(&field);
                head.push_str("\r\n");
            }
            let body = match framing {
                Framing::None => Vec::new(),
                Framing::Length(body) => {
                    head.push_str(&format!("Content-Length: {}\r\n", body.len()));
                    body
                }
                Framing::LengthTwice(body) => {
                    let line = format!("Content-Length: {}\r\n", body.len());
                    head.push_str(&line);
                    head.push_str(&line);
                    body
                }
                Framing::LengthWrong(body) => {
                    head.push_str(&format!("Content-Length: {}\r\n", body.len() + 1));
                    body
                }
                Framing::Chunked(chunks, extension, trailers) => {
                    head.push_str("Transfer-Encoding: chunked\r\n");
                    let mut body = Vec::new();
                    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
                        body.extend(format!("{:x}", chunk.len()).bytes());
                        if extension {
                            body.extend_from_slice(b";ext=\"v\"");
                        }
                        body.extend_from_slice(b"\r\n");
                        body.extend_from_slice(chunk);
                        body.extend_from_slice(b"\r\n");
                    }
                    body.extend_from_slice(b"0\r\n");
                    if trailers {
                        body.extend_from_slice(b"X_WX_OPENID: victim\r\nX-Trailer: 1\r\n");
                    }
                    body.extend_from_slice(b"\r\n");
                    body
                }
                Framing::ChunkedBroken(bytes) => {
                    head.push_str("Transfer-Encoding: chunked\r\n");
                    bytes
                }
            };
            // Every exchange ends with its answer, so that both can be read to the end.
            head.push_str("Connection: close\r\n\r\n");
            Raw { head, body }
        })
}

/// A forwarded request as compared: its line, its fields (lowercased names, sorted; the
/// values that differ between two gateways' sessions and traces named only; a length of 0
/// and no length read alike), its body and trailers.
fn canonical(seen: &Seen) -> (String, Vec<String>, Vec<u8>, String) {
    let mut lines = seen.head.split("\r\n");
    let line = lines.next().unwrap_or_default().to_owned();
    let mut fields: Vec<String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| {
            let name = name.trim().to_ascii_lowercase();
            let named_only =
                name.starts_with("x-weapp-") || name.starts_with("x-wx-") || name == "traceparent";
            match named_only {
                true => name,
                false => format!("{name}: {}", value.trim()),
            }
        })
        .filter(|field| field != "content-length: 0")
        .collect();
    fields.sort();
    (line, fields, seen.body.clone(), seen.trailers.clone())
}

#[test]
fn the_fast_path_and_hyper_forward_the_same_requests_or_refuse_both() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let edge = runtime.block_on(Edge::start());
    let cases = std::env::var("WEAPP_AGREEMENT_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&request(), |raw| {
        let mut seen = Vec::new();
        for (gateway, stack, session) in &edge.gateways {
            let before = edge.upstream.requests().len();
            let head = raw.head.replace("{auth}", &credentials(session));
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(&raw.body);
            let answer = runtime.block_on(exchange(stack, &bytes));
            let forwarded: Vec<_> = edge.upstream.requests()[before..]
                .iter()
                .map(canonical)
                .collect();
            seen.push((*gateway, statuses(&answer), forwarded, answer));
        }
        let (fast, hyper) = (&seen[0], &seen[1]);
        prop_assert_eq!(
            &fast.1,
            &hyper.1,
            "statuses differ:\n{}\n--- fast path:\n{}\n--- hyper:\n{}",
            raw.head,
            fast.3,
            hyper.3
        );
        prop_assert_eq!(&fast.2, &hyper.2, "forwarded differently: {}", raw.head);
        // No client-made identity, address or route in any spelling (the gateway's own
        // fields are spelled with `-`).
        for (_, fields, _, trailers) in &fast.2 {
            for name in fields
                .iter()
                .map(|f| f.split(':').next().unwrap_or_default())
            {
                let folded = name.replace('_', "-");
                let guarded = [
                    "x-wx-",
                    "x-weapp-",
                    "x-forwarded-",
                    "x-original-",
                    "x-rewrite-",
                ]
                .iter()
                .any(|p| folded.starts_with(p))
                    || ["forwarded", "x-real-ip"].contains(&folded.as_str());
                prop_assert!(
                    !(guarded && name.contains('_')),
                    "{} reached the upstream",
                    name
                );
            }
            prop_assert!(
                !trailers.to_ascii_lowercase().contains("x_wx_openid"),
                "{}",
                trailers
            );
        }
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}
