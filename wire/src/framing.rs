//! How an HTTP/1.1 message's body is framed, read from its bytes (RFC 9112 §6, §7): a
//! `Content-Length` value, and a chunked body followed as it passes — where it ends, trailers
//! included — without decoding it. Strict: every line ends with CRLF, so that where a chunk
//! or a trailer section ends is where every reader sees it end.

/// A `Content-Length` value: digits only (no sign, no list), within a u64.
pub fn content_length(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
}

/// A message is not HTTP/1.1 the gateway can pass on (an upstream's answer, a chunked body).
#[derive(Debug, thiserror::Error)]
#[error("the upstream's answer is malformed: {0}")]
pub struct Malformed(pub &'static str);

impl Malformed {
    pub const TOO_LONG: Self = Self("its head is too long");
}

/// Follows a chunked body (RFC 9112 §7.1) as it passes, to know where it ends: the bytes are
/// passed on unchanged, trailers included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
}

impl Chunked {
    /// How many of `bytes` can be followed: to the end of the body, or to the first byte
    /// that breaks its framing (all of them when neither comes).
    pub fn sound_prefix(&self, bytes: &[u8]) -> usize {
        let mut follower = self.clone();
        for i in 0..bytes.len() {
            match follower.feed(&bytes[i..=i]) {
                Ok(None) => {}
                Ok(Some(_)) => return i + 1,
                Err(_) => return i,
            }
        }
        bytes.len()
    }

    /// Follows `bytes`: `Some(n)` when the body ends after the first `n` of them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, Malformed> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            if self.state == Data {
                let take = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len() - i);
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 15 {
                        return Err(Malformed("chunk size too large"));
                    }
                    self.digits += 1;
                    let digit = (b as char).to_digit(16).unwrap_or_default();
                    self.size = self.size * 16 + u64::from(digit);
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Extension,
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Extension, b'\r') => SizeLf,
                (Extension, b'\n') => return Err(Malformed("bare LF in a chunk extension")),
                (Extension, _) => Extension,
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    match self.size {
                        0 => TrailerStart,
                        _ => Data,
                    }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart, b'\n') => return Err(Malformed("bare LF in the trailers")),
                (Trailer, b'\r') => TrailerLf,
                // Where a trailer line ends must be where every reader sees it end.
                (Trailer, b'\n') => return Err(Malformed("bare LF in the trailers")),
                (TrailerStart | Trailer, _) => Trailer,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => return Ok(Some(i)),
                _ => return Err(Malformed("bad chunked framing")),
            };
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_body_ends_where_its_last_chunk_and_trailers_do() {
        let body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        // Whole, and byte by byte.
        assert_eq!(Chunked::default().feed(body).unwrap(), Some(end));
        let mut chunked = Chunked::default();
        for (i, b) in body.iter().enumerate() {
            match chunked.feed(std::slice::from_ref(b)).unwrap() {
                Some(1) => {
                    assert_eq!(i + 1, end);
                    break;
                }
                Some(n) => panic!("{n}"),
                None => assert!(i + 1 < end),
            }
        }
        assert_eq!(Chunked::default().feed(b"0\r\n\r\n").unwrap(), Some(5));
        assert_eq!(Chunked::default().feed(b"3\r\nab").unwrap(), None);
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"3\r\nabcd\r\n",
            b"1234567890abcdef0\r\n",
            b"0\r\n\n",
            b"0\r\nX: 1\n\r\n\r\n",
            b"5\nhello\r\n",
            b"5\r\nhello\n0\r\n\r\n",
        ] {
            assert!(Chunked::default().feed(bad).is_err(), "{bad:?}");
        }
    }
}
