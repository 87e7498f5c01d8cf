//! Where a reconnecting WebSocket client was in its user's stream: `since=EPOCH:OFFSET` on
//! `/ws` (or the `X-Weapp-Since` header). `since=` empty asks for the stream's position with
//! no history; no `since` at all is the tutorial's socket, unchanged.
use http::HeaderMap;

pub const HEADER_SINCE: &str = "x-weapp-since";
pub const QUERY_SINCE: &str = "since";

/// Longest epoch read (weapp's are 8 characters).
const MAX_EPOCH: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Since {
    /// `since=` empty: where the stream is now, nothing missed.
    Now,
    At {
        epoch: String,
        offset: u64,
    },
    /// Not `EPOCH:OFFSET`: read as a position of a lost stream (`recovered:false`).
    Malformed,
}

/// The socket's `since`, if it asked to resume.
pub fn since(headers: &HeaderMap, query: Option<&str>) -> Option<Since> {
    let value = match headers.get(HEADER_SINCE) {
        Some(value) => value
            .to_str()
            .map(str::to_owned)
            .unwrap_or_else(|_| "\u{0}".into()),
        None => url::form_urlencoded::parse(query?.as_bytes())
            .find(|(k, _)| k.eq_ignore_ascii_case(QUERY_SINCE))?
            .1
            .into_owned(),
    };
    Some(parse(value.trim()))
}

fn parse(value: &str) -> Since {
    if value.is_empty() {
        return Since::Now;
    }
    let Some((epoch, offset)) = value.rsplit_once(':') else {
        return Since::Malformed;
    };
    let epoch_ok = !epoch.is_empty()
        && epoch.len() <= MAX_EPOCH
        && epoch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    // Digits only, no sign, no leading zero: one spelling per offset.
    let canonical =
        offset.bytes().all(|b| b.is_ascii_digit()) && (offset == "0" || !offset.starts_with('0'));
    match (epoch_ok && canonical, offset.parse::<u64>()) {
        (true, Ok(offset)) => Since::At {
            epoch: epoch.to_owned(),
            offset,
        },
        _ => Since::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(query: &str) -> Option<Since> {
        since(&HeaderMap::new(), Some(query))
    }

    #[test]
    fn since_reads_epoch_and_offset_or_says_it_cannot() {
        assert_eq!(of("X-WX-Id=a"), None, "no since: the tutorial's socket");
        assert_eq!(of("since="), Some(Since::Now));
        assert_eq!(
            of("since=kJ3q9w-_:3"),
            Some(Since::At {
                epoch: "kJ3q9w-_".into(),
                offset: 3
            })
        );
        assert_eq!(
            of("SINCE=e%3A0"),
            Some(Since::At {
                epoch: "e".into(),
                offset: 0
            })
        );
        for bad in [
            "since=3",
            "since=:3",
            "since=e:",
            "since=e:x",
            "since=e:-1",
            "since=e:+3",
            "since=e:03",
            "since=e f:3",
            "since=e:18446744073709551616",
        ] {
            assert_eq!(of(bad), Some(Since::Malformed), "{bad}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_SINCE, "h:7".parse().unwrap());
        assert_eq!(
            since(&headers, Some("since=q:1")),
            Some(Since::At {
                epoch: "h".into(),
                offset: 7
            }),
            "the header first"
        );
    }
}
