//! One trace id across the gRPC hop: a W3C `traceparent` (Trace Context, level 1) taken from
//! the incoming request, or started, carried to session-svc in gRPC metadata, and recorded on
//! each service's request span, so that every log line either service writes for one request
//! carries the same `trace_id`.
//!
//! Within a request the context travels in a task-local ([`within`]), which the gateway's gRPC
//! client reads when it sends; work handed to another task (a coalesced call) is wrapped in
//! [`within`] again by whoever spawns it.
use std::fmt;

use futures::future::Either;

/// The header (and gRPC metadata key) that carries the context.
pub const TRACEPARENT: &str = "traceparent";

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    /// The id of the span that sends this context onwards.
    span_id: [u8; 8],
    /// The caller's span, when this context is a span of ours serving a caller's request.
    parent: Option<[u8; 8]>,
    flags: u8,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header())
    }
}

/// Ids need to be unique, not secret, and one is made for every request: a SplitMix64
/// sequence per thread, seeded once from the OS, instead of a system call each time.
fn next_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            if getrandom::fill(&mut seed).is_err() {
                // Without the OS's randomness: the time, unique enough within one run.
                seed = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or_default()
                    .to_le_bytes();
            }
            u64::from_le_bytes(seed)
        });
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    for chunk in bytes.chunks_mut(8) {
        let word = next_u64().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    // All-zero ids are invalid; the odds are nil, the rule is cheap.
    if bytes == [0u8; N] {
        bytes[0] = 1;
    }
    bytes
}

/// A trace id as log lines show it (32 lowercase hex digits), written without allocating.
#[derive(Clone, Copy)]
pub struct TraceId([u8; 16]);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hex = [0u8; 32];
        hex::encode_to_slice(self.0, &mut hex).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

fn hex_to<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    (out != [0u8; N]).then_some(out)
}

/// The `sampled` bit of the flags.
const SAMPLED: u8 = 1;

impl TraceContext {
    /// A new trace, sampled with probability `sample_ratio`. The decision is a function of the
    /// trace id (as OpenTelemetry's ratio sampler makes it), so it is the same wherever taken.
    pub fn start(sample_ratio: f64) -> Self {
        let trace_id: [u8; 16] = random();
        let [.., a, b, c, d, e, f, g, h] = trace_id;
        let draw = u64::from_be_bytes([a, b, c, d, e, f, g, h]) >> 1;
        // `as` saturates: a ratio of 1 gives 2^63, above every draw.
        let sampled = draw < (sample_ratio * (1u64 << 63) as f64) as u64;
        Self {
            trace_id,
            span_id: random(),
            parent: None,
            flags: if sampled { SAMPLED } else { 0 },
        }
    }

    /// Reads a `traceparent` value; `None` for anything the spec says to ignore (then a new
    /// trace is started instead).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four parts; later versions may append more.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        hex_to::<1>(version).or((version == "00").then_some([0]))?;
        Some(Self {
            trace_id: hex_to(trace)?,
            span_id: hex_to(span)?,
            parent: None,
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// The context of a span of ours that serves a request: a child of the caller's span when
    /// the request carries a valid `traceparent` (whose sampled flag then decides), else the
    /// root of a new trace sampled with probability `sample_ratio`.
    pub fn serve(traceparent: Option<&str>, sample_ratio: f64) -> Self {
        match traceparent.and_then(Self::parse) {
            Some(caller) => caller.child(),
            None => Self::start(sample_ratio),
        }
    }

    /// A new span of ours within this one's trace, this one its parent.
    pub fn child(&self) -> Self {
        Self {
            span_id: random(),
            parent: Some(self.span_id),
            ..*self
        }
    }

    /// Whether this trace is sampled (its spans are exported).
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    pub fn trace_id_bytes(&self) -> [u8; 16] {
        self.trace_id
    }

    pub fn span_id_bytes(&self) -> [u8; 8] {
        self.span_id
    }

    pub fn parent_span_id_bytes(&self) -> Option<[u8; 8]> {
        self.parent
    }

    /// The trace id, 32 lowercase hex digits: what log lines carry.
    pub fn trace_id(&self) -> TraceId {
        TraceId(self.trace_id)
    }

    /// The `traceparent` value that makes this span the parent of the receiver's.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `work` with `context` as the current trace context (none: as it is).
///
/// A plain function returning one of two futures, not an `async fn`: an `async fn` would hold
/// `work` twice (as its argument, and inside the scope that runs it), so every request's
/// future doubled here and was copied whole each time it moved (the gateway's own paths'
/// future was 13 KB, 6 KB of it this).
pub fn within<F: Future>(
    context: Option<TraceContext>,
    work: F,
) -> impl Future<Output = F::Output> {
    match context {
        Some(context) => Either::Left(CURRENT.scope(context, work)),
        None => Either::Right(work),
    }
}

/// The current task's trace context, if it runs [`within`] one.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|context| *context).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_ignored() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(value).unwrap();
        assert_eq!(context.header(), value);
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let child = context.child();
        assert_eq!(child.trace_id().to_string(), context.trace_id().to_string());
        assert_ne!(child.header(), context.header());
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
        let started = TraceContext::serve(Some("garbage"), 1.0);
        assert_eq!(started.trace_id().to_string().len(), 32);
        assert_eq!(started.parent_span_id_bytes(), None);
        assert_ne!(
            TraceContext::start(1.0).header(),
            TraceContext::start(1.0).header()
        );
    }

    #[test]
    fn a_served_span_is_the_child_of_the_callers() {
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let served = TraceContext::serve(Some(caller), 0.0);
        assert_eq!(
            served.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            served.parent_span_id_bytes().map(hex::encode).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_ne!(hex::encode(served.span_id_bytes()), "00f067aa0ba902b7");
        // The caller's decision holds, whatever our ratio.
        assert!(served.sampled());
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!TraceContext::serve(Some(unsampled), 1.0).sampled());
        assert!(
            TraceContext::serve(Some(unsampled), 1.0)
                .header()
                .ends_with("-00")
        );
    }

    #[test]
    fn new_traces_are_sampled_at_the_ratio() {
        assert!((0..1000).all(|_| TraceContext::start(1.0).sampled()));
        assert!((0..1000).all(|_| !TraceContext::start(0.0).sampled()));
        let sampled = (0..20_000)
            .filter(|_| TraceContext::start(0.25).sampled())
            .count();
        assert!((4_000..6_000).contains(&sampled), "{sampled}");
    }

    #[tokio::test]
    async fn the_context_is_current_within_its_scope_only() {
        let context = TraceContext::start(1.0);
        assert!(current().is_none());
        let seen = within(Some(context), async { current() }).await;
        assert_eq!(seen, Some(context));
        assert!(current().is_none());
    }

    #[tokio::test]
    async fn no_context_leaves_the_current_one_as_it_is() {
        let context = TraceContext::start(1.0);
        let seen = within(Some(context), within(None, async { current() })).await;
        assert_eq!(seen, Some(context));
        assert_eq!(within(None, async { current() }).await, None);
    }
}
