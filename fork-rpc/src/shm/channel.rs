//! The descriptor channel of a connection: one message per frame that
//! carries descriptors, tagged with the frame's number (see the
//! [module docs](super)).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use fork_core::shm::SealedBytes;

use crate::config::Config;

/// The limits both sides of a connection apply to shared payloads, from
/// the [`Config`] they share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Payloads at least this long travel as sealed memory files.
    pub(crate) threshold: usize,
    /// Longest payload that travels as one.
    pub(crate) max_len: u64,
    /// Most descriptors one frame carries.
    pub(crate) max_fds: usize,
}

impl Limits {
    pub(crate) fn of(config: &Config) -> Limits {
        Limits {
            threshold: config.shared_threshold,
            max_len: config.max_shared_len as u64,
            max_fds: config.max_shared_fds.min(fork_core::fdpass::MAX_FDS),
        }
    }
}

/// The header of a message: the number of the frame it belongs to.
const HEADER: usize = 8;

/// The sending half: one message per frame that carries descriptors.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    sock: Arc<UnixDatagram>,
}

/// The receiving half: pulls the message of the frame being decoded.
#[derive(Debug)]
pub(crate) struct Inbox {
    sock: Arc<UnixDatagram>,
    /// A message read ahead, for a later frame than the one that asked.
    ahead: Option<(u64, Vec<OwnedFd>)>,
    pub(crate) limits: Limits,
}

/// Both halves over one end of a `SOCK_SEQPACKET` pair, made non-blocking.
///
/// # Errors
///
/// If the socket cannot be made non-blocking.
pub(crate) fn channel(sock: OwnedFd, limits: Limits) -> io::Result<(Outbox, Inbox)> {
    let sock = UnixDatagram::from(sock);
    sock.set_nonblocking(true)?;
    let sock = Arc::new(sock);
    Ok((
        Outbox { sock: sock.clone() },
        Inbox {
            sock,
            ahead: None,
            limits,
        },
    ))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

// ===== impl Outbox =====

impl Outbox {
    /// Sends the descriptors of frame `seq`, without waiting.
    ///
    /// # Errors
    ///
    /// I/O errors of `sendmsg`: `WouldBlock` when the peer has not read
    /// enough of the messages sent before (its socket buffer is full).
    pub(crate) fn send(&self, seq: u64, fds: &[Arc<SealedBytes>]) -> io::Result<()> {
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        fork_core::fdpass::send_fds(self.sock.as_fd(), &seq.to_le_bytes(), &borrowed)
            .map(drop)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::WouldBlock {
                    io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "the descriptor channel is full: the peer has not read the \
                         shared payloads sent before",
                    )
                } else {
                    e
                }
            })
    }
}

// ===== impl Inbox =====

impl Inbox {
    /// The descriptors of frame `seq`: its message, which was sent before
    /// the frame's bytes and is therefore here. Messages of earlier frames
    /// (whose decoding failed before it pulled them) are closed.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidData`] if no message was sent for the frame
    /// (a frame that claims descriptors but has none), it carries more
    /// than [`Limits::max_fds`], or is malformed; I/O errors.
    pub(crate) fn pull(&mut self, seq: u64) -> io::Result<Vec<OwnedFd>> {
        loop {
            let (got, fds) = match self.ahead.take() {
                Some(message) => message,
                None => self.recv(seq)?,
            };
            if got < seq {
                // A frame that failed to decode left it: close its
                // descriptors (dropped here) and read on.
                continue;
            }
            if got > seq {
                self.ahead = Some((got, fds));
                return Err(missing(seq));
            }
            if fds.len() > self.limits.max_fds {
                return Err(invalid(format!(
                    "frame {seq} carries {} descriptors, over the limit of {} \
                     (fork_rpc::Config::max_shared_fds)",
                    fds.len(),
                    self.limits.max_fds
                )));
            }
            return Ok(fds);
        }
    }

    /// Reads the next message, without waiting.
    fn recv(&self, seq: u64) -> io::Result<(u64, Vec<OwnedFd>)> {
        let mut buf = [0u8; HEADER];
        match fork_core::fdpass::recv_fds(self.sock.as_fd(), &mut buf) {
            Ok(Some((HEADER, fds))) => Ok((u64::from_le_bytes(buf), fds)),
            Ok(Some((len, _))) => Err(invalid(format!(
                "a descriptor message of {len} bytes, not {HEADER}"
            ))),
            Ok(None) => Err(missing(seq)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(missing(seq)),
            Err(e) => Err(e),
        }
    }
}

fn missing(seq: u64) -> io::Error {
    invalid(format!(
        "frame {seq} claims shared payloads, but no descriptors were sent for it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        threshold: 0,
        max_len: 1 << 20,
        max_fds: 2,
    };

    fn pair() -> (Outbox, Inbox) {
        let (a, b) = fork_core::fdpass::seqpacket_pair().unwrap();
        let (out, _) = channel(a, LIMITS).unwrap();
        let (_, inbox) = channel(b, LIMITS).unwrap();
        (out, inbox)
    }

    fn sealed(n: usize) -> Vec<Arc<SealedBytes>> {
        (0..n)
            .map(|i| Arc::new(SealedBytes::copy_from_slice(&[i as u8]).unwrap()))
            .collect()
    }

    #[test]
    fn a_frame_gets_its_own_message_and_older_ones_are_closed() {
        let (out, mut inbox) = pair();
        out.send(3, &sealed(1)).unwrap();
        out.send(5, &sealed(2)).unwrap();
        let fds = inbox.pull(5).unwrap();
        assert_eq!(fds.len(), 2);
        let e = inbox.pull(6).unwrap_err();
        assert!(e.to_string().contains("no descriptors were sent"), "{e}");
    }

    #[test]
    fn a_message_for_a_later_frame_waits_for_it() {
        let (out, mut inbox) = pair();
        out.send(9, &sealed(1)).unwrap();
        assert!(inbox.pull(8).is_err(), "frame 8 claims what 9 got");
        assert_eq!(inbox.pull(9).unwrap().len(), 1);
    }

    #[test]
    fn too_many_descriptors_are_refused() {
        let (out, mut inbox) = pair();
        out.send(0, &sealed(3)).unwrap();
        let e = inbox.pull(0).unwrap_err();
        assert!(e.to_string().contains("max_shared_fds"), "{e}");
    }
}
