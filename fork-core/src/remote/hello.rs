//! The greeting each side sends first: who speaks, which protocol, which
//! build of the program. Pure encode and decode.
//!
//! ```text
//! magic "fork-core-remote" (16 bytes) | version u16 LE | flags u8 |
//! pid u32 LE | build id: len u8, bytes
//! ```
//!
//! The version's high byte is the stream protocol's (frames, channels,
//! credit), its low byte the control protocol's (the records of `proto`);
//! either differing is a mismatch. `flags` bit 0 (from the parent): the
//! parent requires the same build, and the remote side checks too; bit 1
//! (from the parent): the remote side is to listen for workers' streams
//! and send a `Listening` frame first (`forward.rs`). `pid` is the remote
//! template's (from the remote side) or the parent's.

use super::super::proto::{self, ProtoError};

/// First bytes of every greeting.
pub(crate) const MAGIC: &[u8; 16] = b"fork-core-remote";
/// Version of the stream protocol (frames, channels, credit; 2: keepalive
/// pings; 3: workers' streams through a forwarded socket).
pub(crate) const STREAM_VERSION: u8 = 3;
/// Both protocols' versions in one number (see the module docs).
pub(crate) const VERSION: u16 = (STREAM_VERSION as u16) << 8 | proto::VERSION as u16;
/// Flag: the sender requires the same build on both sides.
const SAME_BUILD: u8 = 1;
/// Flag (the parent's): the remote side is to listen for workers' streams
/// and say where in a `Listening` frame before any other (`forward.rs`).
const LISTEN: u8 = 2;

/// A decoded greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) version: u16,
    pub(crate) same_build: bool,
    pub(crate) listen: bool,
    pub(crate) pid: u32,
    pub(crate) build_id: Vec<u8>,
}

impl Hello {
    /// This side's greeting.
    pub(crate) fn ours(pid: u32, same_build: bool, listen: bool) -> Hello {
        Hello {
            version: VERSION,
            same_build,
            listen,
            pid,
            build_id: super::build_id::get().to_vec(),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let id = &self.build_id[..self.build_id.len().min(255)];
        let mut out = Vec::with_capacity(MAGIC.len() + 8 + id.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        let flags = [(self.same_build, SAME_BUILD), (self.listen, LISTEN)];
        out.push(flags.iter().filter(|(on, _)| *on).map(|(_, f)| f).sum());
        out.extend_from_slice(&self.pid.to_le_bytes());
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out
    }

    /// Decodes a greeting's payload.
    ///
    /// # Errors
    ///
    /// A wrong magic string, a truncated greeting, unknown flags or bytes
    /// after its end. The version is not checked here (see
    /// [`check`](Hello::check)), so that a mismatch is reported as one.
    pub(crate) fn decode(payload: &[u8]) -> Result<Hello, ProtoError> {
        let rest = payload.strip_prefix(MAGIC.as_slice()).ok_or_else(|| {
            ProtoError("the greeting does not start with the magic string".into())
        })?;
        let fixed = 2 + 1 + 4 + 1;
        if rest.len() < fixed {
            return Err(ProtoError(format!(
                "a greeting of {} bytes is truncated",
                payload.len()
            )));
        }
        let version = u16::from_le_bytes([rest[0], rest[1]]);
        let flags = rest[2];
        if flags & !(SAME_BUILD | LISTEN) != 0 {
            return Err(ProtoError(format!("unknown greeting flags {flags:#04x}")));
        }
        let pid = u32::from_le_bytes(rest[3..7].try_into().expect("4 bytes"));
        let len = rest[7] as usize;
        let id = &rest[fixed..];
        if id.len() != len {
            return Err(ProtoError(format!(
                "the greeting announces a build id of {len} bytes but carries {}",
                id.len()
            )));
        }
        Ok(Hello {
            version,
            same_build: flags & SAME_BUILD != 0,
            listen: flags & LISTEN != 0,
            pid,
            build_id: id.to_vec(),
        })
    }

    /// Checks the other side's greeting against ours: the versions must be
    /// equal, and the build ids too when either side requires it.
    pub(crate) fn check(&self, theirs: &Hello) -> Result<(), Mismatch> {
        if theirs.version != self.version {
            return Err(Mismatch::Version {
                ours: self.version,
                theirs: theirs.version,
            });
        }
        if (self.same_build || theirs.same_build) && theirs.build_id != self.build_id {
            return Err(Mismatch::Build {
                ours: hex(&self.build_id),
                theirs: hex(&theirs.build_id),
            });
        }
        Ok(())
    }
}

/// What differs between two greetings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mismatch {
    Version { ours: u16, theirs: u16 },
    Build { ours: String, theirs: String },
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u16, same_build: bool, id: &[u8]) -> Hello {
        Hello {
            version,
            same_build,
            listen: false,
            pid: 42,
            build_id: id.to_vec(),
        }
    }

    #[test]
    fn bytes() {
        let h = hello(0x0102, true, &[0xab, 0xcd]);
        let mut want = MAGIC.to_vec();
        want.extend([0x02, 0x01, 1, 42, 0, 0, 0, 2, 0xab, 0xcd]);
        assert_eq!(h.encode(), want);
        assert_eq!(Hello::decode(&want).unwrap(), h);
        let listen = Hello {
            listen: true,
            ..h.clone()
        };
        want[MAGIC.len() + 2] = 3;
        assert_eq!(listen.encode(), want);
        assert_eq!(Hello::decode(&want).unwrap(), listen);
    }

    #[test]
    fn malformed_greetings() {
        let good = hello(VERSION, false, b"id").encode();
        assert!(
            Hello::decode(b"SSH-2.0-OpenSSH")
                .unwrap_err()
                .0
                .contains("magic")
        );
        for cut in 0..good.len() {
            assert!(Hello::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(Hello::decode(&longer).unwrap_err().0.contains("carries"));
        let mut flags = good.clone();
        flags[MAGIC.len() + 2] = 0x80;
        assert!(Hello::decode(&flags).unwrap_err().0.contains("flags"));
    }

    #[test]
    fn mismatches() {
        let ours = hello(VERSION, true, b"a");
        assert_eq!(ours.check(&hello(VERSION, false, b"a")), Ok(()));
        assert_eq!(
            ours.check(&hello(VERSION + 1, false, b"a")),
            Err(Mismatch::Version {
                ours: VERSION,
                theirs: VERSION + 1
            })
        );
        assert_eq!(
            ours.check(&hello(VERSION, false, b"b")),
            Err(Mismatch::Build {
                ours: "61".into(),
                theirs: "62".into()
            })
        );
        // Neither requires the same build: other builds are accepted.
        let lax = hello(VERSION, false, b"a");
        assert_eq!(lax.check(&hello(VERSION, false, b"b")), Ok(()));
        // Either side requiring it is enough.
        assert!(lax.check(&hello(VERSION, true, b"b")).is_err());
    }
}
