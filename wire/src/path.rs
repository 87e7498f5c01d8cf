//! Request paths, normalized before the gateway routes anything on them, as nginx and Envoy do: the
//! path a route is chosen by is the path the upstream is sent, and no spelling of it can mean
//! something else to a framework that decodes it. Otherwise `/pub/../api/orders` is taken by
//! an optional `/pub/` route and forwarded as sent, and the upstream — behind its own nginx,
//! or on PHP or Tomcat — resolves it to `/api/orders`, which the gateway promised only
//! sessions would reach.
//!
//! Normalized (RFC 3986 §6.2.2, §5.2.4): percent-encoded unreserved characters are decoded
//! (`%2e` is `.`, `%61` is `a`), other percent-encodings get upper-case hex, `.` and `..`
//! segments are removed, and repeated slashes are merged. Refused (400), because no one
//! rewriting can be right for every upstream: an encoded `/` or `\` in a segment (one
//! framework splits there, another does not), a `\` itself (a separator on Windows and to
//! some servlet containers), `;` literal or encoded (Tomcat and Spring drop `;…` path
//! parameters, so `..;` is `..` to them; Spring Security's strict firewall refuses `;` for
//! that reason), an encoded `%` that encodes something again (`%252e`: a framework that
//! decodes twice sees `.`), a broken or NUL percent-encoding.
use std::borrow::Cow;

/// Why a path is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("an encoded / or \\ inside a path segment")]
    EncodedSeparator,
    #[error("a \\ in the path")]
    Backslash,
    #[error("a ; in the path (path parameters are not accepted)")]
    PathParameter,
    #[error("a percent-encoding that encodes another one")]
    DoubleEncoding,
    #[error("a broken percent-encoding")]
    BadEncoding,
    #[error("an encoded NUL")]
    Nul,
}

/// `path` normalized, borrowed when it already is (the common case costs one scan).
/// A path that does not start with `/` (`OPTIONS *`) is left as it is: nothing routes on it.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, Refused> {
    if !path.starts_with('/') || is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let mut segments: Vec<String> = Vec::new();
    let mut raw = path[1..].split('/').peekable();
    // Whether the result ends with a slash: a last segment that is empty, `.` or `..` leaves
    // its directory (RFC 3986 §5.2.4: `/a/b/..` is `/a/`).
    let mut trailing = false;
    while let Some(segment) = raw.next() {
        let last = raw.peek().is_none();
        let segment = decode(segment)?;
        match segment.as_str() {
            "" | "." => trailing = last,
            ".." => {
                segments.pop();
                trailing = last;
            }
            _ => {
                segments.push(segment);
                trailing = false;
            }
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing || segments.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// Whether `path` (starting with `/`) has nothing to normalize or refuse: no `%`, `\`, `;`,
/// no empty segment and no segment that starts with a dot.
fn is_normal(path: &[u8]) -> bool {
    let mut previous = b'/';
    for &byte in &path[1..] {
        match byte {
            b'%' | b'\\' | b';' => return false,
            b'/' | b'.' if previous == b'/' => return false,
            _ => {}
        }
        previous = byte;
    }
    true
}

/// One segment with its unreserved characters decoded and its other encodings in upper case.
fn decode(segment: &str) -> Result<String, Refused> {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        match byte {
            b'\\' => return Err(Refused::Backslash),
            b';' => return Err(Refused::PathParameter),
            b'%' => {
                let value = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
                    .ok_or(Refused::BadEncoding)?;
                match value {
                    b'/' | b'\\' => return Err(Refused::EncodedSeparator),
                    b';' => return Err(Refused::PathParameter),
                    0 => return Err(Refused::Nul),
                    v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                        out.push(char::from(v));
                    }
                    v => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        out.push('%');
                        out.push(char::from(HEX[usize::from(v >> 4)]));
                        out.push(char::from(HEX[usize::from(v & 0xf)]));
                    }
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        // Multi-byte characters are copied whole (a path is a str; only ASCII is special).
        let width = segment[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&segment[i..i + width]);
        i += width;
    }
    // `%25` before two hex digits, however it was spelled (`%252e`, `%25%32%65`): decoded
    // twice, it is something else again.
    let doubly = out.match_indices("%25").any(|(at, _)| {
        out.as_bytes()
            .get(at + 3..at + 5)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if doubly {
        return Err(Refused::DoubleEncoding);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(path: &str) -> String {
        normalize(path).unwrap().into_owned()
    }

    #[test]
    fn dot_segments_and_repeated_slashes_go() {
        for (path, expected) in [
            ("/", "/"),
            ("/api/orders", "/api/orders"),
            ("/api/", "/api/"),
            ("/pub/../api/orders", "/api/orders"),
            ("/pub/%2e%2e/api/orders", "/api/orders"),
            ("/pub/%2E%2E/api/orders", "/api/orders"),
            ("/pub/.%2e/api/orders", "/api/orders"),
            ("/pub/./../api/orders", "/api/orders"),
            ("/../../api/orders", "/api/orders"),
            ("//api//orders", "/api/orders"),
            ("/pub//..//api/orders", "/api/orders"),
            ("/pub/..", "/"),
            ("/pub/.", "/pub/"),
            ("/pub/x/..", "/pub/"),
            ("/api/orders/", "/api/orders/"),
            ("/api/orders//", "/api/orders/"),
            ("/%61pi/orders", "/api/orders"),
            ("/api/a%20b", "/api/a%20b"),
            ("/api/a%3fb", "/api/a%3Fb"),
            ("/api/.hidden", "/api/.hidden"),
            ("/api/...", "/api/..."),
            ("/api/..x", "/api/..x"),
            ("/api/100%25", "/api/100%25"),
            ("/api/中文", "/api/中文"),
            ("*", "*"),
        ] {
            assert_eq!(normal(path), expected, "{path}");
        }
    }

    #[test]
    fn a_normal_path_is_not_copied() {
        for path in ["/", "/api/orders", "/me", "/a.b/c-d_e~f", "/api/"] {
            assert!(matches!(normalize(path), Ok(Cow::Borrowed(_))), "{path}");
        }
    }

    #[test]
    fn what_cannot_be_normalized_safely_is_refused() {
        for (path, why) in [
            ("/pub/..%2fapi/orders", Refused::EncodedSeparator),
            ("/pub/..%2Fapi/orders", Refused::EncodedSeparator),
            ("/pub/%2e%2e%2fapi/orders", Refused::EncodedSeparator),
            ("/pub/..%5capi/orders", Refused::EncodedSeparator),
            ("/pub/..\\api/orders", Refused::Backslash),
            ("/pub/..;/api/orders", Refused::PathParameter),
            ("/pub;x/orders", Refused::PathParameter),
            ("/pub/%2e%2e%3b/api", Refused::PathParameter),
            ("/pub/%252e%252e/api/orders", Refused::DoubleEncoding),
            ("/pub/%25%32%65", Refused::DoubleEncoding),
            ("/pub/%2", Refused::BadEncoding),
            ("/pub/%zz", Refused::BadEncoding),
            ("/pub/%00", Refused::Nul),
        ] {
            assert_eq!(normalize(path), Err(why), "{path}");
        }
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for path in ["/pub/../api/x", "/a//b/./c/%2e%2e/d/", "/%7euser/%41"] {
            let once = normal(path);
            assert_eq!(normal(&once), once, "{path}");
        }
    }
}
