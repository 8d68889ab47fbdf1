//! [`Communicator`] over MPI (the `mpi` crate, OpenMPI from the distribution's packages).
//!
//! Every collective is issued as a non-blocking MPI operation on buffers the communicator owns
//! and is then polled against a deadline (`--dist-timeout`). A rank that died or hangs therefore
//! turns into an [`Error`] on the others instead of a silent hang. After a timeout the
//! communicator is unusable (MPI still owns the buffers of the operation that did not finish;
//! they are leaked on purpose): the caller reports the error and calls [`Communicator::abort`],
//! which ends the whole job with `MPI_Abort`.
//!
//! The communicator works on a duplicate of `MPI_COMM_WORLD` whose error handler is
//! `MPI_ERRORS_RETURN`, so MPI failures come back as error codes (turned into [`Error`]s with
//! `MPI_Error_string`) rather than aborting inside the library.

use super::Communicator;
use crate::error::{Error, Result};
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::Threading;
use std::os::raw::{c_int, c_void};
use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// Largest element count passed to one MPI call (counts are C `int`s).
const MAX_COUNT: usize = 1 << 30;

/// Data-parallel communicator over `MPI_COMM_WORLD`.
pub struct MpiCommunicator {
    // Field order is drop order: the duplicated communicator is freed before MPI_Finalize.
    comm: SimpleCommunicator,
    _universe: mpi::environment::Universe,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    timeout: Duration,
    threading: Threading,
    init_thread: ThreadId,
    /// Serialises collectives; holds the reason the communicator became unusable, if it did.
    state: Mutex<Option<String>>,
}

// SAFETY: the raw MPI handles are only used under `state`'s lock, and `enter` refuses calls from
// other threads when MPI granted less than MPI_THREAD_SERIALIZED.
unsafe impl Send for MpiCommunicator {}
unsafe impl Sync for MpiCommunicator {}

impl MpiCommunicator {
    /// Initialises MPI (asking for `MPI_THREAD_MULTIPLE`, so data-loader threads may exist
    /// alongside; collectives are serialised internally) and sets up the world communicator.
    /// `timeout` bounds every collective. Fails if MPI was already initialised.
    pub fn init(timeout: Duration) -> Result<Self> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or_else(|| Error::Other("MPI: already initialised in this process".into()))?;
        if timeout.is_zero() {
            return Err(Error::arg("dist-timeout", "must be at least 1 second"));
        }
        let world = universe.world();
        let comm = world.duplicate();
        // SAFETY: a valid communicator and a predefined error handler.
        let rc = unsafe { ffi::MPI_Comm_set_errhandler(comm.as_raw(), ffi::RSMPI_ERRORS_RETURN) };
        check(rc, "MPI_Comm_set_errhandler")?;
        let (rank, size) = (comm.rank() as usize, comm.size() as usize);
        // Processes sharing memory with this one, i.e. the ones on this node.
        let node = comm.split_shared(comm.rank());
        let (local_rank, local_size) = (node.rank() as usize, node.size() as usize);
        drop(node);
        Ok(MpiCommunicator {
            comm,
            _universe: universe,
            rank,
            size,
            local_rank,
            local_size,
            timeout,
            threading,
            init_thread: std::thread::current().id(),
            state: Mutex::new(None),
        })
    }

    /// Processes on this node.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// The thread support MPI granted.
    pub fn threading(&self) -> Threading {
        self.threading
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Takes the collective lock after checking the thread and that no earlier collective failed.
    fn enter(&self, name: &str) -> Result<std::sync::MutexGuard<'_, Option<String>>> {
        if self.threading < Threading::Serialized && std::thread::current().id() != self.init_thread
        {
            return Err(Error::Other(format!(
                "collective {name}: MPI granted only {:?} thread support; call collectives from the thread that created the communicator",
                self.threading
            )));
        }
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = guard.as_ref() {
            return Err(Error::Other(format!(
                "collective {name}: communicator unusable after an earlier failure: {why}"
            )));
        }
        Ok(guard)
    }

    /// Starts a non-blocking operation on `bufs` (owned, so their heap memory stays put) and
    /// waits for it until the deadline. On failure the buffers are leaked (MPI may still write
    /// to them) and the communicator is marked unusable.
    fn run<B>(
        &self,
        name: &str,
        mut bufs: B,
        start: impl FnOnce(&mut B, ffi::MPI_Comm, *mut ffi::MPI_Request) -> c_int,
    ) -> Result<B> {
        let mut state = self.enter(name)?;
        // SAFETY: MPI_Request is a plain handle; MPI_REQUEST_NULL is its "no request" value.
        let mut req: ffi::MPI_Request = unsafe { ffi::RSMPI_REQUEST_NULL };
        let rc = start(&mut bufs, self.comm.as_raw(), &mut req);
        if let Err(e) = check(rc, name) {
            // Nothing was started, so MPI holds no reference to the buffers.
            *state = Some(e.to_string());
            return Err(e);
        }
        match self.wait(name, &mut req) {
            Ok(()) => Ok(bufs),
            Err(e) => {
                std::mem::forget(bufs);
                *state = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn wait(&self, name: &str, req: &mut ffi::MPI_Request) -> Result<()> {
        let start = Instant::now();
        let mut nap = Duration::from_micros(20);
        loop {
            let mut flag: c_int = 0;
            // SAFETY: `req` is an active request; status is ignored.
            let rc = unsafe { ffi::MPI_Test(req, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
            check(rc, name)?;
            if flag != 0 {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= self.timeout {
                return Err(Error::Other(format!(
                    "collective {name} timed out after {}s: rank(s) not responding (this is rank {} of {}); \
                     another rank died, hangs, or is not calling the same collectives (see --dist-timeout)",
                    self.timeout.as_secs_f64(),
                    self.rank,
                    self.size
                )));
            }
            // MPI progresses non-blocking collectives inside MPI_Test: poll eagerly at first,
            // then back off to at most 1 ms between polls.
            if waited > Duration::from_millis(2) {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(1));
            } else {
                std::thread::yield_now();
            }
        }
    }

    fn check_root(&self, name: &str, root: usize) -> Result<c_int> {
        super::check_root(name, root, self.size)?;
        Ok(root as c_int)
    }

    /// Broadcast of a fixed-size, `Copy` buffer in chunks of at most [`MAX_COUNT`] elements.
    fn broadcast_raw<T: Copy + Send>(
        &self,
        name: &str,
        buf: &mut [T],
        dtype: ffi::MPI_Datatype,
        root: usize,
    ) -> Result<()> {
        let root = self.check_root(name, root)?;
        for chunk in buf.chunks_mut(MAX_COUNT) {
            let data = self.run(name, chunk.to_vec(), |d, comm, req| unsafe {
                ffi::MPI_Ibcast(
                    d.as_mut_ptr() as *mut c_void,
                    d.len() as c_int,
                    dtype,
                    root,
                    comm,
                    req,
                )
            })?;
            chunk.copy_from_slice(&data);
        }
        Ok(())
    }
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        // SAFETY: predefined handles.
        let (float, sum) = unsafe { (ffi::RSMPI_FLOAT, ffi::RSMPI_SUM) };
        for chunk in buf.chunks_mut(MAX_COUNT) {
            let (_, out) = self.run(
                "all_reduce_sum",
                (chunk.to_vec(), vec![0f32; chunk.len()]),
                |(s, r), comm, req| unsafe {
                    ffi::MPI_Iallreduce(
                        s.as_ptr() as *const c_void,
                        r.as_mut_ptr() as *mut c_void,
                        s.len() as c_int,
                        float,
                        sum,
                        comm,
                        req,
                    )
                },
            )?;
            chunk.copy_from_slice(&out);
        }
        Ok(())
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        // SAFETY: predefined handle.
        self.broadcast_raw("broadcast", buf, unsafe { ffi::RSMPI_FLOAT }, root)
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        const NAME: &str = "all_gather_bytes";
        // SAFETY: predefined handles.
        let (u64t, u8t) = unsafe { (ffi::RSMPI_UINT64_T, ffi::RSMPI_UINT8_T) };
        let n = self.size;
        let (_, lens) = self.run(
            NAME,
            (vec![bytes.len() as u64], vec![0u64; n]),
            |(s, r), comm, req| unsafe {
                ffi::MPI_Iallgather(
                    s.as_ptr() as *const c_void,
                    1,
                    u64t,
                    r.as_mut_ptr() as *mut c_void,
                    1,
                    u64t,
                    comm,
                    req,
                )
            },
        )?;
        let total: u64 = lens.iter().sum();
        if total > c_int::MAX as u64 {
            return Err(Error::Other(format!(
                "collective {NAME}: {total} bytes in all exceed MPI's int count limit"
            )));
        }
        let counts: Vec<c_int> = lens.iter().map(|&l| l as c_int).collect();
        let displs: Vec<c_int> = counts
            .iter()
            .scan(0, |acc, &c| Some(std::mem::replace(acc, *acc + c)))
            .collect();
        let bufs = (bytes.to_vec(), vec![0u8; total as usize], counts, displs);
        let (_, all, counts, displs) = self.run(NAME, bufs, |(s, r, c, d), comm, req| unsafe {
            ffi::MPI_Iallgatherv(
                s.as_ptr() as *const c_void,
                s.len() as c_int,
                u8t,
                r.as_mut_ptr() as *mut c_void,
                c.as_ptr(),
                d.as_ptr(),
                u8t,
                comm,
                req,
            )
        })?;
        Ok(counts
            .iter()
            .zip(&displs)
            .map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec())
            .collect())
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        // SAFETY: predefined handles.
        let (u64t, u8t) = unsafe { (ffi::RSMPI_UINT64_T, ffi::RSMPI_UINT8_T) };
        let mut len = [bytes.len() as u64];
        self.broadcast_raw("broadcast_bytes", &mut len, u64t, root)?;
        bytes.resize(len[0] as usize, 0);
        self.broadcast_raw("broadcast_bytes", bytes, u8t, root)
    }

    fn barrier(&self) -> Result<()> {
        self.run("barrier", (), |_, comm, req| unsafe {
            ffi::MPI_Ibarrier(comm, req)
        })?;
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        // SAFETY: MPI_Abort on the world communicator; does not return.
        unsafe {
            ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, code);
        }
        std::process::exit(code)
    }
}

impl Drop for MpiCommunicator {
    fn drop(&mut self) {
        let failed = self
            .state
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if failed {
            // MPI_Finalize would wait for the ranks that stopped responding: end the job instead.
            self.abort(1);
        }
        // Then the fields drop in order: `comm` is freed, then `_universe` finalises MPI.
    }
}

/// Turns an MPI return code into an error naming the call.
fn check(rc: c_int, what: &str) -> Result<()> {
    if rc == ffi::MPI_SUCCESS as c_int {
        return Ok(());
    }
    let mut text = vec![0u8; ffi::MPI_MAX_ERROR_STRING as usize + 1];
    let mut len: c_int = 0;
    // SAFETY: the buffer holds MPI_MAX_ERROR_STRING characters.
    let ok = unsafe {
        ffi::MPI_Error_string(rc, text.as_mut_ptr() as *mut std::os::raw::c_char, &mut len)
    };
    let msg = if ok == ffi::MPI_SUCCESS as c_int {
        String::from_utf8_lossy(&text[..len.max(0) as usize]).into_owned()
    } else {
        "unknown error".into()
    };
    Err(Error::Other(format!(
        "collective {what}: MPI error {rc}: {msg}"
    )))
}
