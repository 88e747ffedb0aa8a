//! Jobs that are plain functions: no service trait, no server type, no
//! entry of your own (Coro::ProcessPool's `process($f, $args)`, Python's
//! `executor.submit(f, x)`).
//!
//! Declare a [`Job`] with [`job!`](crate::job) from any function
//! `fn(A) -> Result<T, E>` whose argument and results are serde types; start
//! workers serving [`ENTRY`], which runs every job of the program; call a
//! job with [`Job::call`] on any stub of those workers (a [`Client`](crate::Client) here,
//! or fork-pool's pool, whose `Pool::run` is the usual way).
//!
//! ```no_run
//! use fork_core::Template;
//! use fork_rpc::RpcWorker;
//! use fork_rpc::jobs::{ENTRY, Job};
//!
//! fn square(x: u64) -> Result<u64, String> {
//!     x.checked_mul(x).ok_or_else(|| format!("{x} squared overflows"))
//! }
//! static SQUARE: Job<u64, u64, String> = fork_rpc::job!(square);
//!
//! #[fork_core::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let template = Template::shared()?;
//!     let (client, _worker) = RpcWorker::builder(&mut template.fork(), &ENTRY).spawn().await?;
//!     assert_eq!(SQUARE.call(&client, client.context(), 12).await?, 144);
//!     Ok(())
//! }
//! ```
//!
//! A job is registered under its name, `"<module path>::<function>"` unless
//! `job!(f, name = "...")` gives another, and a call carries a 64-bit hash of
//! it: workers forked from a template of the same program run it by that.
//! The checks are the compiler's: a `Job<A, T, E>` only takes an `A` and
//! only gives a `T` or an `E`, as the function does.
//!
//! The function runs in the worker as a service method would, with what the
//! template preloaded: one call at a time on a sync worker (the default);
//! deadlines, cancellation of calls not yet started, panics, crashes and
//! every pool guarantee apply unchanged. Jobs are synchronous functions; for
//! async work, write a service.
//!
//! # On the wire
//!
//! A call is the job's id and its argument, encoded with bincode; a reply is
//! the function's `Result`, encoded the same way; each travels as a byte
//! string inside the frame (in the frame's [`Format`](crate::Format)).
//! Arguments and results of up to 48 encoded bytes are kept inline: a call
//! then allocates nothing that a service call would not.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::OnceLock;

use bincode::Options;
use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use tarpc::client::RpcError;
use tarpc::client::stub::Stub;
use tarpc::context::Context;
use tarpc::server::Serve;
use tarpc::{RequestName, ServerError};

use crate::entry::RpcEntry;
use crate::server::Setup;

/// Encoded bytes up to this many are kept inline, without an allocation.
const INLINE: usize = 48;

/// Encoded arguments or results.
type Bytes = SmallVec<[u8; INLINE]>;

/// The entry that serves every [`Job`] of the program: start workers with
/// it (`RpcWorker::builder(&mut fork, &ENTRY)`, fork-pool's `Pool::jobs`).
pub static ENTRY: RpcEntry<JobCall, JobReply> = crate::entry!(serve_jobs, name = "fork_rpc::jobs");

/// The init hook of [`ENTRY`]: nothing to prepare (jobs use what the
/// template preloaded).
fn serve_jobs(_setup: &mut Setup<()>) -> Result<JobServer, std::convert::Infallible> {
    Ok(JobServer)
}

/// A plain function that workers serving [`ENTRY`] run: it takes an `A` and
/// returns a `T` or fails with an `E`. Made with [`job!`](crate::job).
pub struct Job<A, T, E> {
    def: &'static JobDef,
    _types: PhantomData<fn(A) -> Result<T, E>>,
}

/// A job's record in the program's registry.
#[doc(hidden)]
#[derive(Debug)]
pub struct JobDef {
    name: &'static str,
    id: u64,
    run: fn(&[u8]) -> Result<JobReply, ServerError>,
}

/// Every job of the program.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static JOBS: [JobDef];

/// The request of a job's call: the job and its encoded argument. Made by
/// [`Job::request`]; the request type of [`ENTRY`].
#[derive(Debug, Clone)]
pub struct JobCall {
    job: Result<&'static JobDef, Missing>,
    args: Bytes,
}

/// The reply of a job's call: the function's encoded `Result`. Read with
/// [`Job::response`]; the response type of [`ENTRY`].
#[derive(Debug, Clone)]
pub struct JobReply {
    bytes: Bytes,
}

/// Why a worker has no job for an id.
#[derive(Debug, Clone, Copy)]
enum Missing {
    /// No job has it.
    Unknown(u64),
    /// Two jobs have it: this one's name is registered twice, or two names
    /// hash alike.
    Twice(&'static str),
}

/// A job that did not give its result.
#[derive(Debug)]
pub enum JobError<E> {
    /// The function ran and returned this error.
    Failed(E),
    /// The call failed: the job was not sent, did not finish, or its answer
    /// was lost (the worker died, the deadline passed, the pool is shut
    /// down, ...). fork-rpc's and fork-pool's errors travel inside it as
    /// they do for service calls ([`WorkerLost::find`](crate::WorkerLost::find)).
    Call(RpcError),
}

/// The one worker-side service of [`ENTRY`]: runs the job a call names.
#[derive(Debug, Clone, Copy)]
struct JobServer;

// ===== impl Job =====

impl<A, T, E> Job<A, T, E> {
    #[doc(hidden)]
    pub const fn __new(def: &'static JobDef, _f: fn(A) -> Result<T, E>) -> Self {
        Job {
            def,
            _types: PhantomData,
        }
    }

    /// The name the job is registered under.
    pub fn name(&self) -> &'static str {
        self.def.name
    }
}

impl<A, T, E> Job<A, T, E>
where
    A: Serialize,
    T: DeserializeOwned,
    E: DeserializeOwned,
{
    /// The request that runs the job on `args`, for [`Stub::call`]. Fails
    /// with `RpcError::Send` (nothing was sent) if `args` does not encode.
    pub fn request(&self, args: &A) -> Result<JobCall, RpcError> {
        let mut bytes = Bytes::new();
        options().serialize_into(&mut bytes, args).map_err(|e| {
            RpcError::Send(Box::new(invalid(format!(
                "the argument of job {} does not encode: {e}",
                self.name()
            ))))
        })?;
        Ok(JobCall {
            job: Ok(self.def),
            args: bytes,
        })
    }

    /// The function's result in the reply of a call made with
    /// [`request`](Job::request). A reply that does not decode as one fails
    /// with `RpcError::Server` (`InvalidData`).
    pub fn response(&self, reply: JobReply) -> Result<T, JobError<E>> {
        match decode::<Result<T, E>>(&reply.bytes) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(JobError::Failed(e)),
            Err(e) => Err(JobError::Call(RpcError::Server(ServerError::new(
                io::ErrorKind::InvalidData,
                format!("the reply of job {} could not be decoded: {e}", self.name()),
            )))),
        }
    }

    /// Runs the job on `args` through `stub` (a [`Client`](crate::Client)
    /// of a worker serving [`ENTRY`], or a pool of them), within `ctx`.
    pub fn call<'a, S>(
        &'a self,
        stub: &'a S,
        ctx: Context,
        args: A,
    ) -> impl Future<Output = Result<T, JobError<E>>> + 'a
    where
        S: Stub<Req = JobCall, Resp = JobReply>,
    {
        let request = self.request(&args);
        async move {
            let reply = stub.call(ctx, request?).await?;
            self.response(reply)
        }
    }
}

impl<A, T, E> Clone for Job<A, T, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, T, E> Copy for Job<A, T, E> {}

impl<A, T, E> fmt::Debug for Job<A, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Job").field(&self.def.name).finish()
    }
}

// ===== impl JobDef =====

impl JobDef {
    #[doc(hidden)]
    pub const fn new(name: &'static str, run: fn(&[u8]) -> Result<JobReply, ServerError>) -> Self {
        JobDef {
            name,
            id: id_of(name),
            run,
        }
    }
}

/// A job's id: the 64-bit FNV-1a hash of its name.
const fn id_of(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The job with id `id` in this program.
fn find(id: u64) -> Result<&'static JobDef, Missing> {
    static TABLE: OnceLock<Vec<(u64, Result<&'static JobDef, Missing>)>> = OnceLock::new();
    let table = TABLE.get_or_init(|| table(&JOBS));
    match table.binary_search_by_key(&id, |(id, _)| *id) {
        Ok(i) => table[i].1,
        Err(_) => Err(Missing::Unknown(id)),
    }
}

/// The jobs by id, sorted; an id that two jobs share finds neither.
fn table(jobs: &'static [JobDef]) -> Vec<(u64, Result<&'static JobDef, Missing>)> {
    let mut defs: Vec<&'static JobDef> = jobs.iter().collect();
    defs.sort_by_key(|def| def.id);
    let mut table: Vec<(u64, Result<&'static JobDef, Missing>)> = Vec::with_capacity(defs.len());
    for def in defs {
        match table.last_mut() {
            Some((id, found)) if *id == def.id => *found = Err(Missing::Twice(def.name)),
            _ => table.push((def.id, Ok(def))),
        }
    }
    table
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Unknown(id) => write!(
                f,
                "no job with id {id:#018x} in this worker's program (is the worker another build?)"
            ),
            Missing::Twice(name) => write!(
                f,
                "job {name} is registered twice (or its id is another job's): name each job once"
            ),
        }
    }
}

// ===== impl JobCall =====

impl JobCall {
    /// The job's id.
    fn id(&self) -> u64 {
        match self.job {
            Ok(def) => def.id,
            Err(Missing::Unknown(id)) => id,
            Err(Missing::Twice(name)) => id_of(name),
        }
    }
}

impl RequestName for JobCall {
    fn name(&self) -> &str {
        match self.job {
            Ok(def) => def.name,
            Err(_) => "unknown job",
        }
    }
}

impl Serialize for JobCall {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut call = serializer.serialize_tuple(2)?;
        call.serialize_element(&self.id())?;
        call.serialize_element(&AsBytes(&self.args))?;
        call.end()
    }
}

impl<'de> Deserialize<'de> for JobCall {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CallVisitor;

        impl<'de> Visitor<'de> for CallVisitor {
            type Value = JobCall;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a job's id and its argument")
            }

            fn visit_seq<V: SeqAccess<'de>>(self, mut seq: V) -> Result<JobCall, V::Error> {
                let id: u64 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let args: Owned = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                Ok(JobCall {
                    job: find(id),
                    args: args.0,
                })
            }
        }

        deserializer.deserialize_tuple(2, CallVisitor)
    }
}

// ===== impl JobReply =====

impl Serialize for JobReply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.bytes)
    }
}

impl<'de> Deserialize<'de> for JobReply {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Owned::deserialize(deserializer).map(|bytes| JobReply { bytes: bytes.0 })
    }
}

/// Bytes that serialise as a byte string (one copy in bincode), not as a
/// sequence of numbers.
struct AsBytes<'a>(&'a [u8]);

impl Serialize for AsBytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// A byte string as [`Bytes`]: from the frame's bytes in bincode, from an
/// array of numbers in JSON.
struct Owned(Bytes);

impl<'de> Deserialize<'de> for Owned {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;

        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Owned;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Owned, E> {
                Ok(Owned(Bytes::from_slice(bytes)))
            }

            fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Owned, E> {
                Ok(Owned(Bytes::from_vec(bytes)))
            }

            fn visit_seq<V: SeqAccess<'de>>(self, mut seq: V) -> Result<Owned, V::Error> {
                // No preallocation from the claimed length: every byte is
                // pushed as it is read.
                let mut bytes = Bytes::new();
                while let Some(b) = seq.next_element()? {
                    bytes.push(b);
                }
                Ok(Owned(bytes))
            }
        }

        deserializer.deserialize_bytes(BytesVisitor)
    }
}

// ===== impl JobServer =====

impl Serve for JobServer {
    type Req = JobCall;
    type Resp = JobReply;

    async fn serve(self, _ctx: Context, call: JobCall) -> Result<JobReply, ServerError> {
        match call.job {
            Ok(def) => (def.run)(&call.args),
            Err(missing) => Err(ServerError::new(
                io::ErrorKind::NotFound,
                missing.to_string(),
            )),
        }
    }
}

/// Runs job `f` on its encoded argument, in the worker: what
/// [`job!`](crate::job) registers.
#[doc(hidden)]
pub fn run_job<A, T, E, F>(f: F, args: &[u8]) -> Result<JobReply, ServerError>
where
    A: DeserializeOwned,
    T: Serialize,
    E: Serialize,
    F: FnOnce(A) -> Result<T, E>,
{
    let args = decode::<A>(args).map_err(|e| {
        ServerError::new(
            io::ErrorKind::InvalidData,
            format!("the job's argument could not be decoded: {e}"),
        )
    })?;
    let result = f(args);
    let mut bytes = Bytes::new();
    options().serialize_into(&mut bytes, &result).map_err(|e| {
        ServerError::new(
            io::ErrorKind::InvalidData,
            format!("the job's result does not encode: {e}"),
        )
    })?;
    Ok(JobReply { bytes })
}

// ===== impl JobError =====

impl<E> From<RpcError> for JobError<E> {
    fn from(e: RpcError) -> Self {
        JobError::Call(e)
    }
}

impl<E> JobError<E> {
    /// The function's own error, if it returned one.
    pub fn failed(&self) -> Option<&E> {
        match self {
            JobError::Failed(e) => Some(e),
            JobError::Call(_) => None,
        }
    }

    /// The call's error, if the call failed.
    pub fn call(&self) -> Option<&RpcError> {
        match self {
            JobError::Failed(_) => None,
            JobError::Call(e) => Some(e),
        }
    }
}

impl<E: fmt::Display> fmt::Display for JobError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Failed(e) => write!(f, "the job failed: {e}"),
            JobError::Call(e) => write!(f, "the job's call failed: {e}"),
        }
    }
}

/// An error whatever the function's error type (a `String` is no
/// `std::error::Error`), so that `?` takes it into a `Box<dyn Error>`: the
/// function's error is in the message, the call's is the source too.
impl<E: fmt::Debug + fmt::Display> std::error::Error for JobError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JobError::Failed(_) => None,
            JobError::Call(e) => Some(e),
        }
    }
}

// ===== the inner encoding =====

/// How arguments and results are encoded inside a frame.
fn options() -> impl Options {
    bincode::DefaultOptions::new()
}

/// Decodes a whole argument or result; what it allocates is bounded by its
/// bytes (see [`bounded`](crate::bounded)).
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> bincode::Result<T> {
    crate::bounded::deserialize(options().with_limit(bytes.len() as u64), bytes)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Declares a [`Job`](crate::jobs::Job): a plain function
/// `fn(A) -> Result<T, E>` (`A: Serialize + DeserializeOwned`, the same for
/// `T` and `E`) that workers serving [`jobs::ENTRY`](crate::jobs::ENTRY) run.
///
/// `job!(f)` registers it as `"<module path>::f"`; `job!(f, name = "...")`
/// under a stable name of your choice.
///
/// ```
/// fn word_count(text: String) -> Result<usize, String> {
///     Ok(text.split_whitespace().count())
/// }
/// static WORD_COUNT: fork_rpc::jobs::Job<String, usize, String> = fork_rpc::job!(word_count);
/// assert!(WORD_COUNT.name().ends_with("::word_count"));
/// ```
#[macro_export]
macro_rules! job {
    ($f:path) => {
        $crate::job!(
            $f,
            name = ::core::concat!(::core::module_path!(), "::", ::core::stringify!($f))
        )
    };
    ($f:path, name = $name:expr) => {{
        fn __fork_rpc_job(
            args: &[u8],
        ) -> ::core::result::Result<$crate::jobs::JobReply, $crate::__private::ServerError>
        {
            $crate::jobs::run_job($f, args)
        }
        #[$crate::__private::linkme::distributed_slice($crate::jobs::JOBS)]
        #[linkme(crate = $crate::__private::linkme)]
        static __FORK_RPC_JOB: $crate::jobs::JobDef =
            $crate::jobs::JobDef::new($name, __fork_rpc_job);
        $crate::jobs::Job::__new(&__FORK_RPC_JOB, $f)
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    // Jobs declared by hand: `job!` registers through linkme, whose
    // `link_section` statics the crate's `forbid(unsafe_code)` refuses when
    // they come from its own macro (the tests of `job!` itself are in
    // `tests/jobs.rs` and the integration tests).
    fn add((a, b): (i64, i64)) -> Result<i64, String> {
        a.checked_add(b).ok_or_else(|| "overflow".to_owned())
    }
    fn run_add(args: &[u8]) -> Result<JobReply, ServerError> {
        run_job(add, args)
    }
    static ADD_DEF: JobDef = JobDef::new("add", run_add);
    static ADD: Job<(i64, i64), i64, String> = Job::__new(&ADD_DEF, add);

    /// A value as the other side decodes it from a frame.
    fn across<T: Serialize + DeserializeOwned>(format: crate::Format, value: &T) -> T {
        let bytes = crate::codec::encode(format, 1 << 20, value).unwrap();
        crate::codec::decode(format, 1 << 20, &bytes).unwrap()
    }

    /// Runs a call as the worker does, with `ADD` found as if registered.
    fn serve(call: JobCall) -> Result<JobReply, ServerError> {
        let call = JobCall {
            job: if call.id() == ADD_DEF.id {
                Ok(&ADD_DEF)
            } else {
                call.job
            },
            ..call
        };
        futures::executor::block_on(JobServer.serve(tarpc::context::current(), call))
    }

    #[test]
    fn a_call_and_its_reply_cross_frames_in_either_format() {
        for format in [crate::Format::Bincode, crate::Format::Json] {
            let call = across(format, &ADD.request(&(2, 40)).unwrap());
            assert_eq!(call.id(), id_of("add"));
            let reply = across(format, &serve(call).unwrap());
            assert_eq!(ADD.response(reply).unwrap(), 42);
            let call = across(format, &ADD.request(&(i64::MAX, 1)).unwrap());
            let reply = across(format, &serve(call).unwrap());
            assert!(matches!(ADD.response(reply), Err(JobError::Failed(e)) if e == "overflow"));
        }
    }

    #[test]
    fn small_arguments_and_results_stay_inline() {
        let call = ADD.request(&(2, 40)).unwrap();
        assert!(!call.args.spilled());
        let reply = serve(call).unwrap();
        assert!(!reply.bytes.spilled());
        let big = ADD.request(&(i64::MAX, i64::MIN)).unwrap();
        assert!(big.args.len() <= INLINE, "{}", big.args.len());
    }

    #[test]
    fn an_unknown_job_is_an_error_that_says_so() {
        let call = JobCall {
            job: Err(Missing::Unknown(7)),
            args: Bytes::new(),
        };
        let call = across(crate::Format::Bincode, &call);
        assert!(matches!(call.job, Err(Missing::Unknown(7))));
        assert_eq!(call.name(), "unknown job");
        let e = serve(call).unwrap_err();
        assert_eq!(e.kind, io::ErrorKind::NotFound);
        assert!(e.detail.contains("no job with id"), "{}", e.detail);
    }

    #[test]
    fn a_bad_argument_or_reply_fails_the_call_not_the_process() {
        let call = JobCall {
            job: Ok(&ADD_DEF),
            args: Bytes::from_slice(&[1]),
        };
        let e = serve(call).unwrap_err();
        assert_eq!(e.kind, io::ErrorKind::InvalidData);
        let reply = JobReply {
            bytes: Bytes::from_slice(&[7, 7, 7]),
        };
        let e = ADD.response(reply).unwrap_err();
        assert!(
            matches!(&e, JobError::Call(RpcError::Server(s)) if s.kind == io::ErrorKind::InvalidData),
            "{e:?}"
        );
    }

    #[test]
    fn an_id_two_jobs_share_finds_neither() {
        static TWICE: [JobDef; 3] = [
            JobDef::new("a", run_add),
            JobDef::new("b", run_add),
            JobDef::new("a", run_add),
        ];
        let table = table(&TWICE);
        assert_eq!(table.len(), 2);
        let a = table.iter().find(|(id, _)| *id == id_of("a")).unwrap();
        assert!(matches!(a.1, Err(Missing::Twice("a"))));
        let b = table.iter().find(|(id, _)| *id == id_of("b")).unwrap();
        assert!(matches!(b.1, Ok(def) if def.name == "b"));
    }
}
