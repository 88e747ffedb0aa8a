//! [`RemoteBuilder::upload_to`](super::RemoteBuilder::upload_to): this
//! program's binary put on the other side once, under a name that carries
//! its SHA-256, through the connector itself.
//!
//! The connector runs `sh -c SCRIPT` there (see [`SCRIPT`]), which answers
//! on its standard output in lines starting with `fork-core-upload`:
//!
//! - `have`: `dir/<name>-<sha256>` exists, belongs to the user, is
//!   executable and has that hash: nothing to send.
//! - `send`: it made a temporary file in `dir`; the parent sends the binary
//!   on its standard input and closes it; the script checks the hash of
//!   what arrived, makes it executable and renames it over the target (a
//!   `rename(2)` in one directory: another parent uploading at once, or a
//!   parent starting the target meanwhile, sees the old file or the whole
//!   new one, never a half-written one), removes the user's older uploads
//!   of the program there beyond the newest `keep`
//!   ([`RemoteBuilder::keep_uploads`](super::RemoteBuilder::keep_uploads)),
//!   then says `done`.
//! - `error KIND DETAIL` at any step.
//!
//! The hash is `sha256sum`'s on the other side (GNU coreutils and busybox
//! both have it; `cksum` is a CRC, which would not notice a file made to
//! look the same) and [`sha2`]'s here, computed once per process.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::OnceCell;

use super::connector::{Connection, Connector, RemoteCommand, Session};
use super::stream::{BoxRead, BoxWrite};
use crate::error::Error;

/// The script `sh` runs on the other side: `$1` the directory, `$2` the
/// file name (`<name>-<sha256>`), `$3` the SHA-256 in hex, `$4` how many
/// uploads of the program to keep, the new one included: after an upload,
/// the user's older `<name>-<64 characters>` files in the directory beyond
/// the newest `$4` (by modification time) are removed.
///
/// It is one line (commands joined by `; `), so that it survives a login
/// shell that does not take a newline inside quotes (csh, over ssh).
const SCRIPT: &str = concat!(
    r#"dir=$1 name=$2 want=$3 keep=$4; "#,
    r#"say() { printf 'fork-core-upload %s\n' "$*"; }; "#,
    r#"fail() { say error "$1" "$(printf '%s' "$2" | tr '\n' ' ')"; exit 1; }; "#,
    r#"sum() { sha256sum <"$1" | { read -r h _; printf '%s' "$h"; }; }; "#,
    r#"command -v sha256sum >/dev/null 2>&1 || fail no-hash-tool 'sha256sum is not on PATH'; "#,
    r#"target=$dir/$name; "#,
    r#"if [ -f "$target" ] && [ -O "$target" ] && [ -x "$target" ] "#,
    r#"&& [ "$(sum "$target")" = "$want" ]; then say have; exit 0; fi; "#,
    r#"out=$(mkdir -p -- "$dir" 2>&1) || fail not-writable "$out"; "#,
    r#"tmp=$(mktemp "$dir/.$name.XXXXXX" 2>&1) || fail not-writable "$tmp"; "#,
    r#"trap 'rm -f -- "$tmp"' EXIT; "#,
    r#"say send; "#,
    r#"out=$(cat >"$tmp" 2>&1) || fail not-writable "$out"; "#,
    r#"got=$(sum "$tmp"); "#,
    r#"[ "$got" = "$want" ] || fail mismatch "arrived with SHA-256 $got, sent $want"; "#,
    r#"out=$( { chmod 755 "$tmp" && mv -f -- "$tmp" "$target"; } 2>&1) || fail not-writable "$out"; "#,
    r#"base=${name%-*}; n=0; "#,
    r#"ls -t -- "$dir/$base"-* 2>/dev/null | while IFS= read -r f; do "#,
    r#"case ${f##*/} in "$base"-????????????????????????????????????????????????????????????????) ;; *) continue;; esac; "#,
    r#"n=$((n + 1)); "#,
    r#"if [ "$n" -gt "$keep" ] && [ "$f" != "$target" ] && [ -O "$f" ]; then rm -f -- "$f"; fi; "#,
    r#"done; "#,
    r#"say done"#,
);

/// What every line of the script starts with.
const PREFIX: &str = "fork-core-upload ";
/// Most bytes read as one answer line.
const MAX_LINE: u64 = 4096;
/// Bytes read and sent at a time (each write must be done within the
/// timeout).
const CHUNK: usize = 1024 * 1024;

/// The step of an upload that failed ([`Error::RemoteUpload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UploadFailure {
    /// This program's binary cannot be read here (`/proc/self/exe`).
    ReadProgram,
    /// The connector could not run `sh` on the other side.
    Connect,
    /// `sh` ended without answering: there is no POSIX `sh` on the other
    /// side (or the command failed before running it).
    NoShell,
    /// `sha256sum` is not on the other side's `PATH`.
    NoHashTool,
    /// The directory cannot be created, or a file in it cannot be created,
    /// written or renamed (permissions, a read-only file system, a full
    /// disk).
    NotWritable,
    /// Sending the binary failed here (the transport broke).
    Transfer,
    /// What arrived has another SHA-256 than what was sent: the transport
    /// changed the bytes or lost some. Nothing was installed.
    HashMismatch,
    /// The other side answered what the upload script never says
    /// (a login script writing on standard output, another shell).
    Unexpected,
    /// A step made no progress within the
    /// [handshake timeout](super::RemoteBuilder::handshake_timeout).
    TimedOut,
}

impl fmt::Display for UploadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UploadFailure::ReadProgram => "this program's binary cannot be read here",
            UploadFailure::Connect => "the connector could not run `sh` there",
            UploadFailure::NoShell => "`sh` did not answer (is there a POSIX shell there?)",
            UploadFailure::NoHashTool => "`sha256sum` is not there",
            UploadFailure::NotWritable => "the directory cannot be created or written",
            UploadFailure::Transfer => "sending the binary failed",
            UploadFailure::HashMismatch => "what arrived is not what was sent",
            UploadFailure::Unexpected => "the other side answered something unexpected",
            UploadFailure::TimedOut => "no progress within the handshake timeout",
        })
    }
}

// ===== this binary =====

/// This program's binary: its file name here and its SHA-256 in hex.
#[derive(Debug)]
struct Binary {
    name: OsString,
    sha256: String,
}

/// This binary, hashed once per process.
async fn this_binary() -> io::Result<&'static Binary> {
    static BINARY: OnceCell<Binary> = OnceCell::const_new();
    BINARY
        .get_or_try_init(|| async {
            tokio::task::spawn_blocking(hash_self)
                .await
                .map_err(io::Error::other)?
        })
        .await
}

fn hash_self() -> io::Result<Binary> {
    let path = std::fs::read_link("/proc/self/exe")?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // A binary replaced on disk since it started still runs (and is read
    // through /proc/self/exe); its link says so.
    let name = name.strip_suffix(" (deleted)").unwrap_or(&name).into();
    let mut file = std::fs::File::open("/proc/self/exe")?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    let sha256 = super::hello::hex(&hasher.finalize());
    Ok(Binary { name, sha256 })
}

// ===== the upload =====

/// Makes sure `dir/<this program's name>-<sha256>` on the other side of
/// `connector` is this binary, uploading it if not; returns that path.
pub(crate) async fn ensure<C: Connector + ?Sized>(
    connector: &C,
    host: &str,
    dir: &Path,
    keep: usize,
    timeout: Duration,
) -> Result<OsString, Error> {
    let upload = Upload {
        host: host.to_owned(),
        dir,
        timeout,
    };
    let binary = this_binary()
        .await
        .map_err(|e| upload.failed(UploadFailure::ReadProgram, "", Some(e)))?;
    let mut file_name = binary.name.clone();
    file_name.push("-");
    file_name.push(&binary.sha256);
    let command = RemoteCommand {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            SCRIPT.into(),
            "fork-core-upload".into(),
            dir.as_os_str().to_owned(),
            file_name.clone(),
            binary.sha256.clone().into(),
            keep.max(1).to_string().into(),
        ],
    };
    let Connection {
        reader,
        writer,
        mut session,
    } = match tokio::time::timeout(timeout, connector.connect(&command)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(upload.failed(UploadFailure::Connect, "", Some(e))),
        Err(_) => return Err(upload.failed(UploadFailure::TimedOut, "connecting", None)),
    };
    let mut reader = BufReader::new(reader);
    let done = upload.run(&mut reader, writer, session.as_mut()).await;
    match done {
        Ok(()) => {
            // The script has said its last word; the transport ends.
            end(session, timeout).await;
            Ok(dir.join(file_name).into_os_string())
        }
        Err(e) => {
            end(session, Duration::ZERO).await;
            Err(e)
        }
    }
}

/// One upload's context, for its errors.
struct Upload<'a> {
    host: String,
    dir: &'a Path,
    timeout: Duration,
}

impl Upload<'_> {
    fn failed(&self, failure: UploadFailure, detail: &str, source: Option<io::Error>) -> Error {
        Error::RemoteUpload {
            host: self.host.clone(),
            dir: PathBuf::from(self.dir),
            failure,
            detail: detail.to_string(),
            source,
        }
    }

    /// The dialogue with the script, up to its last line.
    async fn run(
        &self,
        reader: &mut BufReader<BoxRead>,
        mut writer: BoxWrite,
        session: &mut dyn Session,
    ) -> Result<(), Error> {
        match self.answer(reader, session).await? {
            Answer::Have => return Ok(()),
            Answer::Send => {}
            Answer::Done => {
                return Err(self.failed(UploadFailure::Unexpected, "`done` before `send`", None));
            }
        }
        let sent = self.send(&mut writer).await;
        // EOF tells the script the binary is whole.
        drop(writer);
        if let Err(
            e @ Error::RemoteUpload {
                failure: UploadFailure::TimedOut,
                ..
            },
        ) = sent
        {
            // A stuck transport: no answer is coming either.
            return Err(e);
        }
        match (sent, self.answer(reader, session).await) {
            (Ok(bytes), Ok(Answer::Done)) => {
                tracing::info!(dir = ?self.dir, bytes, "uploaded this program's binary");
                Ok(())
            }
            (Ok(_), Ok(_)) => Err(self.failed(UploadFailure::Unexpected, "not `done`", None)),
            (Ok(_), Err(e)) => Err(e),
            // What the script says is the cause; the broken pipe here is
            // only its consequence.
            (Err(_), Err(e)) if reported_by_the_script(&e) => Err(e),
            (Err(e), _) => Err(e),
        }
    }

    /// Sends this binary; the bytes sent.
    async fn send(&self, writer: &mut BoxWrite) -> Result<u64, Error> {
        let transfer = |e| self.failed(UploadFailure::Transfer, "", Some(e));
        let unreadable = |e| self.failed(UploadFailure::ReadProgram, "", Some(e));
        let file = Arc::new(std::fs::File::open("/proc/self/exe").map_err(unreadable)?);
        let mut buf = vec![0; CHUNK];
        let mut sent = 0;
        loop {
            let (n, back) = read_chunk(&file, sent, buf).await.map_err(unreadable)?;
            buf = back;
            if n == 0 {
                break;
            }
            match tokio::time::timeout(self.timeout, writer.write_all(&buf[..n])).await {
                Ok(r) => r.map_err(transfer)?,
                Err(_) => return Err(self.failed(UploadFailure::TimedOut, "sending", None)),
            }
            sent += n as u64;
        }
        match tokio::time::timeout(self.timeout, writer.flush()).await {
            Ok(r) => r.map_err(transfer)?,
            Err(_) => return Err(self.failed(UploadFailure::TimedOut, "sending", None)),
        }
        Ok(sent)
    }

    /// The script's next line.
    async fn answer(
        &self,
        reader: &mut BufReader<BoxRead>,
        session: &mut dyn Session,
    ) -> Result<Answer, Error> {
        let mut line = Vec::new();
        let mut limited = (&mut *reader).take(MAX_LINE);
        let read = limited.read_until(b'\n', &mut line);
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(self.failed(UploadFailure::Transfer, "", Some(e))),
            Err(_) => return Err(self.failed(UploadFailure::TimedOut, "awaiting an answer", None)),
        }
        if line.is_empty() {
            // EOF: the command ended without a word.
            let status = match tokio::time::timeout(self.timeout, session.wait()).await {
                Ok(Ok(Some(status))) => format!("it ended with {status}"),
                _ => String::new(),
            };
            return Err(self.failed(UploadFailure::NoShell, &status, None));
        }
        let line = String::from_utf8_lossy(&line);
        let unexpected = || self.failed(UploadFailure::Unexpected, line.trim_end(), None);
        let words = line
            .trim_end()
            .strip_prefix(PREFIX)
            .ok_or_else(unexpected)?;
        let (word, rest) = words.split_once(' ').unwrap_or((words, ""));
        match word {
            "have" => Ok(Answer::Have),
            "send" => Ok(Answer::Send),
            "done" => Ok(Answer::Done),
            "error" => {
                let (kind, detail) = rest.split_once(' ').unwrap_or((rest, ""));
                let failure = match kind {
                    "no-hash-tool" => UploadFailure::NoHashTool,
                    "not-writable" => UploadFailure::NotWritable,
                    "mismatch" => UploadFailure::HashMismatch,
                    _ => return Err(unexpected()),
                };
                Err(self.failed(failure, detail.trim(), None))
            }
            _ => Err(unexpected()),
        }
    }
}

/// Reads up to `buf.len()` bytes of `file` at `offset`, on the blocking
/// pool; how many, and the buffer back.
async fn read_chunk(
    file: &Arc<std::fs::File>,
    offset: u64,
    mut buf: Vec<u8>,
) -> io::Result<(usize, Vec<u8>)> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        let n = file.read_at(&mut buf, offset)?;
        Ok((n, buf))
    })
    .await
    .map_err(io::Error::other)?
}

/// Whether `e` is a failure the script reported (not one seen here).
fn reported_by_the_script(e: &Error) -> bool {
    matches!(
        e,
        Error::RemoteUpload {
            failure: UploadFailure::NoHashTool
                | UploadFailure::NotWritable
                | UploadFailure::HashMismatch,
            ..
        }
    )
}

/// A line of the script.
enum Answer {
    Have,
    Send,
    Done,
}

/// Ends the script's transport: waits up to `grace` for it to end by
/// itself, then kills it; reaps it in the background.
async fn end(mut session: Box<dyn Session>, grace: Duration) {
    if !grace.is_zero() && matches!(tokio::time::timeout(grace, session.wait()).await, Ok(Ok(_))) {
        return;
    }
    let _ = session.start_kill();
    tokio::spawn(async move {
        let _ = session.wait().await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_one_line() {
        assert!(!SCRIPT.contains('\n'));
    }

    #[tokio::test]
    async fn the_hash_is_this_binarys_and_computed_once() {
        let first = this_binary().await.unwrap();
        let bytes = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(
            first.sha256,
            super::super::hello::hex(&Sha256::digest(&bytes))
        );
        assert_eq!(first.sha256.len(), 64);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(Some(first.name.as_os_str()), exe.file_name());
        assert!(std::ptr::eq(first, this_binary().await.unwrap()));
    }
}
