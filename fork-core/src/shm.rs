//! Sealed shared memory: bytes another process can map without copying
//! and trust not to change.
//!
//! A [`SealedBytes`] is a memory file (`memfd_create`) sealed against
//! writes, shrinking and growing (`F_SEAL_WRITE`, `F_SEAL_SHRINK`,
//! `F_SEAL_GROW`, then `F_SEAL_SEAL`), mapped read-only. Its descriptor
//! ([`AsFd`]) can travel to another process (with [`fdpass`](crate::fdpass),
//! or fork-rpc's `SharedBytes` inside a call), which rebuilds it with
//! [`SealedBytes::from_fd`]: that checks the seals and the size before it
//! maps anything, so the receiver reads the sender's pages, not a copy,
//! and neither side can change them while the other looks (nor make them
//! vanish, which would raise `SIGBUS` on access).
//!
//! Fill one without an extra copy through an [`UnsealedBytes`] (a writable
//! mapping of a fresh file), or copy a slice in with
//! [`SealedBytes::copy_from_slice`].
//!
//! ```
//! use std::os::fd::AsFd;
//! use fork_core::shm::{SealedBytes, UnsealedBytes};
//!
//! # fn main() -> std::io::Result<()> {
//! let mut buf = UnsealedBytes::new(4)?;
//! buf.copy_from_slice(b"page");
//! let sealed = buf.seal()?;
//!
//! // The receiving side (here the same process) checks and maps it.
//! let fd = sealed.as_fd().try_clone_to_owned()?;
//! let received = SealedBytes::from_fd(fd, 1 << 20)?;
//! assert_eq!(&received[..], b"page");
//!
//! // Nobody can write to it any more, through any descriptor.
//! let mut file = std::fs::File::from(sealed.as_fd().try_clone_to_owned()?);
//! assert!(std::io::Write::write(&mut file, b"x").is_err());
//! # Ok(())
//! # }
//! ```
//!
//! # Costs
//!
//! Making one costs a few system calls and the pages it fills; mapping a
//! received one costs a few system calls whatever its size (pages are
//! faulted in as they are read). Each live value holds one descriptor
//! and one mapping. Linux only.

use std::fmt;
use std::io::{self, Write};
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys::memfd::{self, ReadMap, WriteMap};

/// The name memory files get (`/proc/<pid>/fd` shows `/memfd:fork-shm`).
const NAME: &std::ffi::CStr = c"fork-shm";

/// Immutable bytes in a sealed memory file, mapped read-only: cheap to
/// send to another process (only the descriptor travels), and trusted by
/// the receiver (see the [module docs](self)).
///
/// `Deref<Target = [u8]>`, `Send` and `Sync`; dropping it unmaps the
/// bytes and closes the descriptor (the pages go once no process maps or
/// holds them).
pub struct SealedBytes {
    // Unmapped before the descriptor is closed (field order).
    map: ReadMap,
    fd: OwnedFd,
}

/// A fresh memory file mapped writable, to be filled and then
/// [`seal`](UnsealedBytes::seal)ed into a [`SealedBytes`]: the producer
/// writes the bytes where the receiver will read them, with no copy in
/// between. `DerefMut<Target = [u8]>`; starts as zeros.
pub struct UnsealedBytes {
    // Unmapped before the descriptor is closed or sealed.
    map: WriteMap,
    fd: OwnedFd,
}

// ===== impl UnsealedBytes =====

impl UnsealedBytes {
    /// A new memory file of `len` zero bytes, mapped writable (its pages
    /// are allocated at once: fill them all).
    ///
    /// # Errors
    ///
    /// If the file cannot be created, sized or mapped (out of memory or
    /// descriptors).
    pub fn new(len: usize) -> io::Result<UnsealedBytes> {
        let fd = memfd::create(NAME, len as u64)?;
        let map = WriteMap::new(fd.as_fd(), len as u64)?;
        Ok(UnsealedBytes { map, fd })
    }

    /// Unmaps the writable mapping and seals the file: from here on its
    /// bytes never change.
    ///
    /// # Errors
    ///
    /// If the seals or the read-only mapping fail; the file is then
    /// closed.
    pub fn seal(self) -> io::Result<SealedBytes> {
        let UnsealedBytes { map, fd } = self;
        let len = map.as_slice().len() as u64;
        // Sealing against writes needs every writable mapping gone.
        drop(map);
        memfd::seal(fd.as_fd())?;
        SealedBytes::map(fd, len)
    }
}

impl Deref for UnsealedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.map.as_slice()
    }
}

impl DerefMut for UnsealedBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.map.as_mut_slice()
    }
}

impl fmt::Debug for UnsealedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnsealedBytes")
            .field("len", &self.len())
            .field("fd", &self.fd)
            .finish()
    }
}

// ===== impl SealedBytes =====

impl SealedBytes {
    /// Copies `bytes` into a new sealed memory file (one copy, by
    /// `write`).
    ///
    /// # Errors
    ///
    /// As [`UnsealedBytes::new`] and [`UnsealedBytes::seal`].
    pub fn copy_from_slice(bytes: &[u8]) -> io::Result<SealedBytes> {
        let fd = memfd::create(NAME, 0)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes)?;
        let fd = OwnedFd::from(file);
        memfd::seal(fd.as_fd())?;
        SealedBytes::map(fd, bytes.len() as u64)
    }

    /// Takes a descriptor received from another process and maps it, once
    /// it is known to be a memory file sealed against writes, shrinking and
    /// growing, of at most `max_len` bytes. On any error the descriptor is
    /// closed.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidData`] if it is not a memory file, lacks one
    /// of those seals, or is longer than `max_len`; I/O errors of `mmap`.
    pub fn from_fd(fd: OwnedFd, max_len: u64) -> io::Result<SealedBytes> {
        let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        let seals = memfd::seals(fd.as_fd())
            .map_err(|e| invalid(format!("not a sealable memory file: {e}")))?;
        if seals & memfd::TRUSTED != memfd::TRUSTED {
            return Err(invalid(
                "a memory file not sealed against writes, shrinking and growing".into(),
            ));
        }
        let len = memfd::size(fd.as_fd())?;
        if len > max_len {
            return Err(invalid(format!(
                "a sealed memory file of {len} bytes, over the limit of {max_len}"
            )));
        }
        SealedBytes::map(fd, len)
    }

    /// Maps a sealed file's first `len` bytes.
    fn map(fd: OwnedFd, len: u64) -> io::Result<SealedBytes> {
        let map = ReadMap::new(fd.as_fd(), len)?;
        Ok(SealedBytes { map, fd })
    }
}

impl Deref for SealedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.map.as_slice()
    }
}

impl AsRef<[u8]> for SealedBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsFd for SealedBytes {
    /// The memory file's descriptor: send it, the receiver rebuilds the
    /// bytes with [`SealedBytes::from_fd`].
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl fmt::Debug for SealedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedBytes")
            .field("len", &self.len())
            .field("fd", &self.fd)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copied_and_filled_bytes_read_back_through_a_received_descriptor() {
        let a = SealedBytes::copy_from_slice(b"copied").unwrap();
        let mut b = UnsealedBytes::new(6).unwrap();
        assert_eq!(&b[..], &[0; 6]);
        b.copy_from_slice(b"filled");
        let b = b.seal().unwrap();
        for (sealed, want) in [(a, &b"copied"[..]), (b, b"filled")] {
            let fd = sealed.as_fd().try_clone_to_owned().unwrap();
            let got = SealedBytes::from_fd(fd, 6).unwrap();
            assert_eq!(&got[..], want);
        }
    }

    #[test]
    fn from_fd_refuses_big_unsealed_and_foreign_files() {
        let big = SealedBytes::copy_from_slice(&[1; 100]).unwrap();
        let e = SealedBytes::from_fd(big.as_fd().try_clone_to_owned().unwrap(), 99).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("over the limit of 99"), "{e}");

        let unsealed = UnsealedBytes::new(8).unwrap();
        let e = SealedBytes::from_fd(unsealed.fd.try_clone().unwrap(), 99).unwrap_err();
        assert!(e.to_string().contains("not sealed"), "{e}");

        let (r, _w) = std::io::pipe().unwrap();
        let e = SealedBytes::from_fd(r.into(), 99).unwrap_err();
        assert!(e.to_string().contains("not a sealable memory file"), "{e}");
    }

    #[test]
    fn sealed_bytes_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<SealedBytes>();
        check::<UnsealedBytes>();
    }
}
