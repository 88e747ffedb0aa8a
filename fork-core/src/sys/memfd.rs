//! Sealed memory files: `memfd_create`, `F_ADD_SEALS` / `F_GET_SEALS`, and
//! shared mappings of them.
//!
//! A memory file is sealed against writes, shrinking and growing, so that
//! a process that maps one it received can trust its bytes: they cannot
//! change under it, and no page can vanish (which would raise `SIGBUS` on
//! access).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use super::cvt;

/// The seals a receiver needs: no write (through any descriptor or
/// mapping), no shrinking, no growing.
pub(crate) const TRUSTED: libc::c_int =
    libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

/// The seals [`seal`] adds: [`TRUSTED`], and no seal changes after.
const ALL: libc::c_int = TRUSTED | libc::F_SEAL_SEAL;

/// A new memory file of `len` bytes (zeros), close-on-exec and sealable.
pub(crate) fn create(name: &CStr, len: u64) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a NUL-terminated string that outlives the call;
    // the flags are plain integers.
    let fd = cvt(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: memfd_create returned a new descriptor that nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
    // SAFETY: ftruncate takes a descriptor (owned above, open) and a length.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })?;
    Ok(fd)
}

/// Seals a memory file against writes, shrinking, growing and further
/// seal changes. Fails with `EBUSY` while a writable shared mapping of it
/// exists.
pub(crate) fn seal(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_ADD_SEALS takes an integer; no memory is passed.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, ALL) }).map(drop)
}

/// The seals of a memory file; `EINVAL` for a file that is not one (only
/// memory files can be sealed).
pub(crate) fn seals(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: F_GET_SEALS takes no argument and reads no memory of ours.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) })
}

/// The size of a file, from `fstat`.
pub(crate) fn size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: a zeroed `stat` is a valid value to be written into.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable `stat`, alive for the call.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st.st_size as u64)
}

/// `len` as a mapping length: `None` for 0 (nothing is mapped).
fn map_len(len: u64) -> io::Result<Option<usize>> {
    let len = usize::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
    Ok((len > 0).then_some(len))
}

/// Maps `len` bytes of `fd` from its start, shared.
fn map(
    fd: BorrowedFd<'_>,
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
) -> io::Result<NonNull<u8>> {
    // SAFETY: a new mapping at an address the kernel picks (null hint)
    // aliases no Rust object; `fd` is open for the call.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED | flags,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// Unmaps a mapping made by [`map`].
fn unmap(ptr: NonNull<u8>, len: usize) {
    // SAFETY: `ptr..ptr+len` is a mapping made by `map` and owned by the
    // caller, which drops every reference into it before calling this.
    unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
}

/// A read-only shared mapping of a whole sealed memory file; unmapped on
/// drop.
#[derive(Debug)]
pub(crate) struct ReadMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and its file is sealed against writes,
// shrinking and growing (checked by the callers of `ReadMap::new`): its
// bytes never change and never vanish, so any thread may read them, and
// the mapping may be unmapped from any thread.
unsafe impl Send for ReadMap {}
// SAFETY: as above: shared access is only ever reads of immutable bytes.
unsafe impl Sync for ReadMap {}

impl ReadMap {
    /// Maps the first `len` bytes of `fd` read-only.
    ///
    /// The caller has checked that `fd` is a memory file with the
    /// [`TRUSTED`] seals and at least `len` bytes: the bytes are then
    /// immutable and stay there, which makes the slice sound.
    pub(crate) fn new(fd: BorrowedFd<'_>, len: u64) -> io::Result<ReadMap> {
        let seals = seals(fd)?;
        if seals & TRUSTED != TRUSTED || size(fd)? < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a sealed memory file of that size",
            ));
        }
        Ok(match map_len(len)? {
            None => ReadMap {
                ptr: NonNull::dangling(),
                len: 0,
            },
            Some(len) => ReadMap {
                ptr: map(fd, len, libc::PROT_READ, 0)?,
                len,
            },
        })
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes (or a
        // dangling pointer with `len == 0`) that lives as long as `self`;
        // the file is sealed, so nothing writes to them or truncates them
        // while the slice lives (checked in `new`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for ReadMap {
    fn drop(&mut self) {
        if self.len > 0 {
            unmap(self.ptr, self.len);
        }
    }
}

/// A writable shared mapping of a whole memory file that nothing else
/// maps yet; unmapped on drop (which the file needs before it can be
/// sealed against writes).
#[derive(Debug)]
pub(crate) struct WriteMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping belongs to this value alone (the file was created by
// it and is not shared before it is sealed, after this is dropped): moving
// it to another thread moves the only access.
unsafe impl Send for WriteMap {}
// SAFETY: `&WriteMap` only reads; writes need `&mut`.
unsafe impl Sync for WriteMap {}

impl WriteMap {
    /// Maps `len` bytes of a memory file this process just created and has
    /// not shared, with its pages populated at once (the caller fills them).
    pub(crate) fn new(fd: BorrowedFd<'_>, len: u64) -> io::Result<WriteMap> {
        Ok(match map_len(len)? {
            None => WriteMap {
                ptr: NonNull::dangling(),
                len: 0,
            },
            Some(len) => WriteMap {
                ptr: map(
                    fd,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_POPULATE,
                )?,
                len,
            },
        })
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: a live mapping of `len` bytes owned by `self` (or dangling
        // with `len == 0`); only `&mut self` writes to it.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only
        // reference; no other process has the file yet, so no one else
        // writes to it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for WriteMap {
    fn drop(&mut self) {
        if self.len > 0 {
            unmap(self.ptr, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn name() -> &'static CStr {
        c"fork-core-test"
    }

    #[test]
    fn a_sealed_file_maps_read_only_with_its_bytes() {
        let fd = create(name(), 5).unwrap();
        {
            let mut w = WriteMap::new(fd.as_fd(), 5).unwrap();
            w.as_mut_slice().copy_from_slice(b"hello");
        }
        seal(fd.as_fd()).unwrap();
        assert_eq!(seals(fd.as_fd()).unwrap() & ALL, ALL);
        let r = ReadMap::new(fd.as_fd(), 5).unwrap();
        assert_eq!(r.as_slice(), b"hello");
    }

    #[test]
    fn sealing_fails_while_a_writable_mapping_exists() {
        let fd = create(name(), 4096).unwrap();
        let w = WriteMap::new(fd.as_fd(), 4096).unwrap();
        let e = seal(fd.as_fd()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
        drop(w);
        seal(fd.as_fd()).unwrap();
    }

    #[test]
    fn a_sealed_file_refuses_writes_resizes_and_new_seals() {
        let fd = create(name(), 8).unwrap();
        seal(fd.as_fd()).unwrap();
        let mut file = std::fs::File::from(fd.try_clone().unwrap());
        let e = std::io::Write::write(&mut file, b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        assert_eq!(
            file.set_len(4).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        assert_eq!(
            file.set_len(16).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        use nix::fcntl::{FcntlArg, SealFlag, fcntl};
        let e = fcntl(fd.as_fd(), FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW)).unwrap_err();
        assert_eq!(e, nix::errno::Errno::EPERM, "F_SEAL_SEAL forbids new seals");
    }

    #[test]
    fn unsealed_or_short_files_and_other_files_are_refused() {
        let fd = create(name(), 8).unwrap();
        assert!(ReadMap::new(fd.as_fd(), 8).is_err(), "not sealed");
        seal(fd.as_fd()).unwrap();
        assert!(ReadMap::new(fd.as_fd(), 9).is_err(), "shorter than claimed");
        assert!(ReadMap::new(fd.as_fd(), 8).is_ok());
        let (r, _w) = std::io::pipe().unwrap();
        assert!(ReadMap::new(r.as_fd(), 0).is_err(), "a pipe");
    }

    #[test]
    fn empty_files_map_to_an_empty_slice() {
        let fd = create(name(), 0).unwrap();
        assert!(WriteMap::new(fd.as_fd(), 0).unwrap().as_slice().is_empty());
        seal(fd.as_fd()).unwrap();
        assert!(ReadMap::new(fd.as_fd(), 0).unwrap().as_slice().is_empty());
    }
}
