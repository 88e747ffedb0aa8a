//! The build id of this program's binary: the linker's GNU build id (an
//! ELF note, `readelf -n`), or, for a binary without one, a hash of the
//! whole file. Two sides of a remote template compare them to know they run
//! the same build.

use std::fs::File;
use std::hash::Hasher;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

/// `PT_NOTE`.
const PT_NOTE: u32 = 4;
/// `NT_GNU_BUILD_ID`.
const NT_GNU_BUILD_ID: u32 = 3;
/// Most bytes of notes read from one segment.
const MAX_NOTES: u64 = 64 * 1024;

/// This binary's build id (computed once; empty if the binary cannot be
/// read, which makes a required check fail, not pass).
pub(crate) fn get() -> &'static [u8] {
    static ID: OnceLock<Vec<u8>> = OnceLock::new();
    ID.get_or_init(|| {
        let Ok(file) = File::open("/proc/self/exe") else {
            return Vec::new();
        };
        match gnu_build_id(&|offset, len| read_at(&file, offset, len)) {
            Some(id) => id,
            None => hash_file(&file).unwrap_or_default(),
        }
    })
}

fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// `h:` and a SipHash of the file (std's, the same in every copy of one
/// binary).
fn hash_file(file: &File) -> io::Result<Vec<u8>> {
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new();
    let mut reader = io::BufReader::with_capacity(1 << 16, file);
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.write(&buf[..n]);
    }
    let mut id = b"h:".to_vec();
    id.extend_from_slice(&hasher.finish().to_le_bytes());
    Ok(id)
}

/// The GNU build id of a little-endian ELF64 file, read through `read_at`
/// (offset, length); `None` for another format or when there is none.
fn gnu_build_id(read_at: &dyn Fn(u64, usize) -> io::Result<Vec<u8>>) -> Option<Vec<u8>> {
    let header = read_at(0, 64).ok()?;
    // "\x7fELF", 64-bit, little-endian.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let phoff = u64::from_le_bytes(header[32..40].try_into().ok()?);
    let phentsize = u16::from_le_bytes(header[54..56].try_into().ok()?) as usize;
    let phnum = u16::from_le_bytes(header[56..58].try_into().ok()?) as usize;
    if phentsize < 56 {
        return None;
    }
    let table = read_at(phoff, phentsize.checked_mul(phnum)?).ok()?;
    for ph in table.chunks_exact(phentsize) {
        if u32::from_le_bytes(ph[0..4].try_into().ok()?) != PT_NOTE {
            continue;
        }
        let offset = u64::from_le_bytes(ph[8..16].try_into().ok()?);
        let size = u64::from_le_bytes(ph[32..40].try_into().ok()?).min(MAX_NOTES);
        let notes = read_at(offset, size as usize).ok()?;
        if let Some(id) = find_build_id(&notes) {
            return Some(id.to_vec());
        }
    }
    None
}

/// The descriptor of the `GNU` note of type `NT_GNU_BUILD_ID` in a note
/// segment, if any.
fn find_build_id(mut notes: &[u8]) -> Option<&[u8]> {
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let namesz = u32::from_le_bytes(notes[0..4].try_into().ok()?) as usize;
        let descsz = u32::from_le_bytes(notes[4..8].try_into().ok()?) as usize;
        let kind = u32::from_le_bytes(notes[8..12].try_into().ok()?);
        let name_end = 12usize.checked_add(align4(namesz)?)?;
        let desc_end = name_end.checked_add(align4(descsz)?)?;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end.checked_add(descsz)?)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc);
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    #[test]
    fn finds_the_gnu_build_id_note() {
        let mut notes = note(b"GNU\0", 1, &[0; 16]);
        notes.extend(note(b"GNU\0", NT_GNU_BUILD_ID, &[1, 2, 3, 4, 5]));
        assert_eq!(find_build_id(&notes), Some(&[1, 2, 3, 4, 5][..]));
        assert_eq!(find_build_id(&note(b"Go\0\0", NT_GNU_BUILD_ID, &[1])), None);
        // Truncated or lying sizes end the search, never panic.
        for cut in 0..notes.len() {
            let _ = find_build_id(&notes[..cut]);
        }
        let mut lying = notes.clone();
        lying[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(find_build_id(&lying), None);
    }

    #[test]
    fn this_binary_has_a_stable_build_id() {
        let id = get();
        assert!(!id.is_empty());
        assert_eq!(get(), id);
    }
}
