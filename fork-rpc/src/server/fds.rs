//! [`FdReceiver`]: descriptors the parent sends while the worker serves,
//! on a side channel that leaves the RPC stream alone.

use std::os::fd::{AsFd, OwnedFd};

use crate::error::Result;

/// Receives descriptors the parent sends while the worker serves, in order.
#[derive(Debug)]
pub struct FdReceiver {
    pub(super) sock: tokio::net::UnixDatagram,
}

impl FdReceiver {
    /// Waits for the next batch of descriptors; `None` once the parent
    /// closed the channel.
    ///
    /// # Errors
    ///
    /// I/O errors, or a truncated control message.
    pub async fn recv(&mut self) -> Result<Option<Vec<OwnedFd>>> {
        let mut buf = [0u8; 16];
        let got = self
            .sock
            .async_io(tokio::io::Interest::READABLE, || {
                fork_core::fdpass::recv_fds(self.sock.as_fd(), &mut buf)
            })
            .await?;
        Ok(got.map(|(_, fds)| fds))
    }
}
