//! The thread-local sink and source of descriptors around encoding and
//! decoding one frame.
//!
//! serde gives a `Serialize` impl no way to reach the connection, so
//! fork-rpc sets a *sink* on the thread for the time it encodes a frame
//! ([`encoding`]): a [`SharedBytes`](super::SharedBytes) at least the
//! threshold long puts its memory file there and writes its index instead
//! of its bytes. Without a sink (a value serialised anywhere else) it
//! writes its bytes. Likewise a *source* is set while a frame is decoded
//! ([`decoding`], [`decoding_received`]): an `Fd` marker takes its
//! descriptor from it. Both are restored on the way out, panics included,
//! and nest.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use fork_core::shm::SealedBytes;

use super::channel::{Inbox, Limits};

thread_local! {
    static SINK: RefCell<Option<Sink>> = const { RefCell::new(None) };
    static SOURCE: RefCell<Option<Source>> = const { RefCell::new(None) };
}

/// The memory files a frame's encoding attached, in index order.
pub(crate) type Attached = Vec<Arc<SealedBytes>>;

struct Sink {
    limits: Limits,
    attached: Attached,
}

struct Source {
    /// Where the frame's descriptors come from, until pulled.
    inbox: Option<Inbox>,
    /// The frame's number.
    seq: u64,
    /// The frame's descriptors, once pulled; each taken once.
    fds: Option<Vec<Option<OwnedFd>>>,
    max_len: u64,
}

/// Puts the previous value of a thread-local back when dropped.
struct Restore<T: 'static> {
    key: &'static std::thread::LocalKey<RefCell<Option<T>>>,
    previous: Option<Option<T>>,
}

impl<T> Restore<T> {
    fn set(key: &'static std::thread::LocalKey<RefCell<Option<T>>>, value: T) -> Self {
        let previous = key.replace(Some(value));
        Restore {
            key,
            previous: Some(previous),
        }
    }

    /// Restores the previous value and returns this scope's.
    fn finish(mut self) -> Option<T> {
        self.key.replace(self.previous.take().flatten())
    }
}

impl<T> Drop for Restore<T> {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            // Unwinding: this scope's value is dropped (its descriptors
            // closed).
            let _ = self.key.try_with(|k| k.replace(previous));
        }
    }
}

/// Runs `f` (encoding one frame) with a sink for descriptors, when
/// `limits` says they may travel; returns what it attached.
pub(crate) fn encoding<R>(limits: Option<Limits>, f: impl FnOnce() -> R) -> (R, Attached) {
    let Some(limits) = limits else {
        return (f(), Vec::new());
    };
    let scope = Restore::set(
        &SINK,
        Sink {
            limits,
            attached: Vec::new(),
        },
    );
    let out = f();
    let attached = scope.finish().map(|s| s.attached).unwrap_or_default();
    (out, attached)
}

/// For a payload of `len` bytes being serialised: `Ok(Some(index))` once
/// `sealed` (called only then) is attached to the frame, `Ok(None)` to
/// write the bytes in the frame instead (no sink, shorter than the
/// threshold, or the frame has as many descriptors as it may carry).
///
/// # Errors
///
/// A payload longer than the limit, or whose memory file cannot be made.
pub(super) fn attach(
    len: usize,
    sealed: impl FnOnce() -> io::Result<Arc<SealedBytes>>,
) -> Result<Option<u32>, String> {
    SINK.with_borrow_mut(|sink| {
        let Some(sink) = sink else {
            return Ok(None);
        };
        if len < sink.limits.threshold || sink.attached.len() >= sink.limits.max_fds {
            return Ok(None);
        }
        if len as u64 > sink.limits.max_len {
            return Err(too_long(len as u64, sink.limits.max_len));
        }
        let sealed = sealed().map_err(|e| format!("a shared payload's memory file: {e}"))?;
        sink.attached.push(sealed);
        Ok(Some(sink.attached.len() as u32 - 1))
    })
}

pub(super) fn too_long(len: u64, max: u64) -> String {
    format!(
        "a shared payload of {len} bytes exceeds the limit of {max} \
         (fork_rpc::Config::max_shared_len)"
    )
}

/// Runs `f` (decoding frame `seq`) with the frame's descriptors as the
/// source, pulled from `inbox` when the first is asked for. Those left
/// unclaimed are closed after.
pub(crate) fn decoding<R>(inbox: &mut Option<Inbox>, seq: u64, f: impl FnOnce() -> R) -> R {
    let Some(taken) = inbox.take() else {
        return f();
    };
    let max_len = taken.limits.max_len;
    let scope = Restore::set(
        &SOURCE,
        Source {
            inbox: Some(taken),
            seq,
            fds: None,
            max_len,
        },
    );
    // Put back even if `f` unwinds, so that later frames still get theirs.
    struct PutBack<'a>(&'a mut Option<Inbox>, Option<Restore<Source>>);
    impl Drop for PutBack<'_> {
        fn drop(&mut self) {
            if let Some(source) = self.1.take().and_then(Restore::finish) {
                *self.0 = source.inbox;
            }
        }
    }
    let _put_back = PutBack(inbox, Some(scope));
    f()
}

/// Runs `f` (decoding a value whose frame was read earlier, an event) with
/// `fds`, the descriptors that came with it, as the source.
pub(crate) fn decoding_received<R>(fds: Vec<OwnedFd>, max_len: u64, f: impl FnOnce() -> R) -> R {
    let _scope = Restore::set(
        &SOURCE,
        Source {
            inbox: None,
            seq: 0,
            fds: Some(fds.into_iter().map(Some).collect()),
            max_len,
        },
    );
    f()
}

/// Takes descriptor `index` of the frame being decoded (pulling the
/// frame's descriptors first if needed), with the longest payload it may
/// hold.
///
/// # Errors
///
/// No frame is being decoded, or it has no such descriptor (or it was
/// taken already), or pulling failed.
pub(super) fn take(index: u32) -> Result<(OwnedFd, u64), String> {
    SOURCE.with_borrow_mut(|source| {
        let source = source
            .as_mut()
            .ok_or("a shared payload's descriptor outside a fork-rpc frame")?;
        let fds = pulled(source).map_err(|e| e.to_string())?;
        let fd = fds
            .get_mut(index as usize)
            .and_then(Option::take)
            .ok_or_else(|| format!("descriptor {index} of the frame is missing or used twice"))?;
        Ok((fd, source.max_len))
    })
}

/// Takes every descriptor of the frame being decoded, for a value decoded
/// later (an event): none if no frame is being decoded.
///
/// # Errors
///
/// If pulling them failed.
pub(crate) fn take_all() -> io::Result<Vec<OwnedFd>> {
    SOURCE.with_borrow_mut(|source| match source {
        None => Ok(Vec::new()),
        Some(source) => Ok(pulled(source)?
            .iter_mut()
            .filter_map(Option::take)
            .collect()),
    })
}

fn pulled(source: &mut Source) -> io::Result<&mut Vec<Option<OwnedFd>>> {
    if source.fds.is_none() {
        let fds = match &mut source.inbox {
            Some(inbox) => inbox.pull(source.seq)?,
            None => Vec::new(),
        };
        source.fds = Some(fds.into_iter().map(Some).collect());
    }
    Ok(source.fds.get_or_insert_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        threshold: 4,
        max_len: 100,
        max_fds: 2,
    };

    fn sealed(bytes: &[u8]) -> impl FnOnce() -> io::Result<Arc<SealedBytes>> + '_ {
        || SealedBytes::copy_from_slice(bytes).map(Arc::new)
    }

    #[test]
    fn the_sink_attaches_big_payloads_up_to_the_cap_and_is_restored() {
        assert_eq!(attach(50, sealed(b"x")), Ok(None), "no sink");
        let (indexes, attached) = encoding(Some(LIMITS), || {
            [
                attach(3, sealed(b"abc")),
                attach(4, sealed(b"abcd")),
                attach(5, sealed(b"abcde")),
                attach(6, sealed(b"abcdef")),
            ]
        });
        assert_eq!(indexes, [Ok(None), Ok(Some(0)), Ok(Some(1)), Ok(None)]);
        assert_eq!(attached.len(), 2);
        assert_eq!(attach(50, sealed(b"x")), Ok(None), "restored");
        let (e, _) = encoding(Some(LIMITS), || attach(101, sealed(b"x")));
        assert!(e.unwrap_err().contains("max_shared_len"));
    }

    #[test]
    fn a_panic_while_encoding_restores_the_sink() {
        let caught = std::panic::catch_unwind(|| {
            encoding(Some(LIMITS), || panic!("in the middle"));
        });
        assert!(caught.is_err());
        assert_eq!(attach(50, sealed(b"x")), Ok(None));
    }

    #[test]
    fn the_source_hands_each_descriptor_once_and_only_inside_a_frame() {
        assert!(take(0).unwrap_err().contains("outside"));
        let fds = vec![OwnedFd::from(std::io::pipe().unwrap().0)];
        decoding_received(fds, 7, || {
            assert_eq!(take(0).unwrap().1, 7);
            assert!(take(0).unwrap_err().contains("used twice"));
            assert!(take(1).is_err());
        });
        assert!(take(0).is_err());
    }
}
