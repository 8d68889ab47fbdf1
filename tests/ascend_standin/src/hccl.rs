//! Stand-in HCCL: ranks are threads of one process. The root info carries a magic and a
//! group id; `HcclCommInitRootInfo` waits until all ranks joined; collectives are queued on
//! the stream and exchange data at synchronisation.

use super::*;

const ROOT_INFO_BYTES: usize = 4108;
const MAGIC: &[u8; 16] = b"STANDIN-HCCL-v1\0";
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Round {
    gen: u64,
    inputs: Vec<Option<Vec<u8>>>,
    arrived: usize,
    results: HashMap<u64, (Arc<Vec<Vec<u8>>>, usize)>,
}

struct Group {
    n: u32,
    joined: Mutex<u32>,
    joined_cv: Condvar,
    round: Mutex<Round>,
    round_cv: Condvar,
}

impl Group {
    /// Everyone contributes bytes; everyone gets all contributions in rank order.
    fn exchange(&self, rank: u32, data: Vec<u8>) -> Result<Arc<Vec<Vec<u8>>>, (i32, String)> {
        let mut st = lock(&self.round);
        if st.inputs.len() != self.n as usize {
            st.inputs = vec![None; self.n as usize];
        }
        let my_gen = st.gen;
        st.inputs[rank as usize] = Some(data);
        st.arrived += 1;
        if st.arrived == self.n as usize {
            let all: Vec<Vec<u8>> = st
                .inputs
                .iter_mut()
                .map(|x| x.take().unwrap_or_default())
                .collect();
            st.results.insert(my_gen, (Arc::new(all), 0));
            st.arrived = 0;
            st.gen += 1;
            self.round_cv.notify_all();
        } else {
            while st.gen == my_gen {
                let (g, to) = self
                    .round_cv
                    .wait_timeout(st, TIMEOUT)
                    .unwrap_or_else(|e| e.into_inner());
                st = g;
                if to.timed_out() && st.gen == my_gen {
                    return Err((
                        HCCL_E_TIMEOUT as i32,
                        format!("rank {rank}: collective timed out waiting for peers"),
                    ));
                }
            }
        }
        let n = self.n as usize;
        let e = st.results.get_mut(&my_gen).unwrap();
        e.1 += 1;
        let r = e.0.clone();
        if e.1 == n {
            st.results.remove(&my_gen);
        }
        Ok(r)
    }
}

static GROUPS: Mutex<Option<HashMap<u64, Arc<Group>>>> = Mutex::new(None);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub struct Comm {
    group: Arc<Group>,
    rank: u32,
}

#[no_mangle]
pub unsafe extern "C" fn HcclGetRootInfo(ri: *mut [u8; ROOT_INFO_BYTES]) -> u32 {
    if ri.is_null() {
        return HCCL_E_PTR;
    }
    if current_device().is_err() {
        return HCCL_E_PARA;
    }
    let id = ((std::process::id() as u64) << 32) | NEXT_ID.fetch_add(1, Ordering::SeqCst);
    let out = &mut *ri;
    out.fill(0);
    out[..16].copy_from_slice(MAGIC);
    out[16..24].copy_from_slice(&id.to_le_bytes());
    0
}

#[no_mangle]
pub unsafe extern "C" fn HcclCommInitRootInfo(
    n: u32,
    ri: *const [u8; ROOT_INFO_BYTES],
    rank: u32,
    comm: *mut *mut Comm,
) -> u32 {
    if ri.is_null() || comm.is_null() {
        return HCCL_E_PTR;
    }
    if n == 0 || rank >= n || current_device().is_err() {
        return HCCL_E_PARA;
    }
    let ri = &*ri;
    if &ri[..16] != MAGIC {
        return HCCL_E_PARA; // not a root info produced by HcclGetRootInfo
    }
    let id = u64::from_le_bytes(ri[16..24].try_into().unwrap());
    let group = {
        let mut g = lock(&GROUPS);
        let map = g.get_or_insert_with(HashMap::new);
        map.entry(id)
            .or_insert_with(|| {
                Arc::new(Group {
                    n,
                    joined: Mutex::new(0),
                    joined_cv: Condvar::new(),
                    round: Mutex::new(Round::default()),
                    round_cv: Condvar::new(),
                })
            })
            .clone()
    };
    if group.n != n {
        return HCCL_E_PARA;
    }
    let mut j = lock(&group.joined);
    *j += 1;
    group.joined_cv.notify_all();
    while *j < n {
        let (g, to) = group
            .joined_cv
            .wait_timeout(j, TIMEOUT)
            .unwrap_or_else(|e| e.into_inner());
        j = g;
        if to.timed_out() && *j < n {
            return HCCL_E_TIMEOUT;
        }
    }
    drop(j);
    *comm = Box::into_raw(Box::new(Comm { group, rank }));
    0
}

#[no_mangle]
pub unsafe extern "C" fn HcclCommDestroy(comm: *mut Comm) -> u32 {
    if comm.is_null() {
        return HCCL_E_PTR;
    }
    drop(Box::from_raw(comm));
    0
}

#[no_mangle]
pub unsafe extern "C" fn HcclGetRankSize(comm: *mut Comm, n: *mut u32) -> u32 {
    if comm.is_null() || n.is_null() {
        return HCCL_E_PTR;
    }
    let c = &*comm;
    *n = c.group.n;
    0
}

#[no_mangle]
pub unsafe extern "C" fn HcclGetRankId(comm: *mut Comm, r: *mut u32) -> u32 {
    if comm.is_null() || r.is_null() {
        return HCCL_E_PTR;
    }
    let c = &*comm;
    *r = c.rank;
    0
}

#[no_mangle]
pub extern "C" fn HcclGetErrorString(code: u32) -> *const c_char {
    let s: &'static [u8] = match code {
        0 => b"success\0",
        1 => b"parameter error\0",
        2 => b"empty pointer\0",
        5 => b"not support feature\0",
        9 => b"timeout\0",
        _ => b"stand-in error\0",
    };
    s.as_ptr().cast()
}

/// HcclDataType → element size (stand-in subset: INT32 2, FP32 4, INT64 5, FP64 10).
fn elem(dt: i32) -> Option<usize> {
    match dt {
        2 | 4 => Some(4),
        5 | 10 => Some(8),
        _ => None,
    }
}

fn reduce(dt: i32, op: i32, all: &[Vec<u8>], count: usize) -> Vec<u8> {
    fn go<T: Copy + std::ops::Add<Output = T> + std::ops::Mul<Output = T> + PartialOrd>(
        all: &[Vec<u8>],
        count: usize,
        op: i32,
        from: fn(&[u8]) -> T,
        to: fn(T) -> Vec<u8>,
        sz: usize,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(count * sz);
        for i in 0..count {
            let mut acc = from(&all[0][i * sz..(i + 1) * sz]);
            for r in &all[1..] {
                let v = from(&r[i * sz..(i + 1) * sz]);
                acc = match op {
                    0 => acc + v,
                    1 => acc * v,
                    2 => {
                        if v > acc {
                            v
                        } else {
                            acc
                        }
                    }
                    _ => {
                        if v < acc {
                            v
                        } else {
                            acc
                        }
                    }
                };
            }
            out.extend(to(acc));
        }
        out
    }
    macro_rules! go_as {
        ($t:ty) => {
            go::<$t>(
                all,
                count,
                op,
                |b| <$t>::from_ne_bytes(b.try_into().unwrap()),
                |v| v.to_ne_bytes().to_vec(),
                std::mem::size_of::<$t>(),
            )
        };
    }
    match dt {
        4 => go_as!(f32),
        2 => go_as!(i32),
        5 => go_as!(i64),
        _ => go_as!(f64),
    }
}

/// The communicator of a collective and its group (NULL: HCCL_E_PTR).
unsafe fn comm_ref<'a>(comm: *mut Comm) -> Result<(&'a Comm, Arc<Group>, u32), u32> {
    match comm.as_ref() {
        Some(c) => Ok((c, c.group.clone(), c.rank)),
        None => Err(HCCL_E_PTR),
    }
}

/// As [`comm_ref`], plus the bytes of `count` elements of `dt` (HCCL_E_NOT_SUPPORT).
unsafe fn comm_bytes<'a>(
    comm: *mut Comm,
    count: u64,
    dt: i32,
) -> Result<(&'a Comm, Arc<Group>, u32, usize), u32> {
    let (c, g, rank) = comm_ref(comm)?;
    let sz = elem(dt).ok_or(HCCL_E_NOT_SUPPORT)?;
    Ok((c, g, rank, count as usize * sz))
}

/// Runs the checks of a collective, then enqueues its job on `stream` (collectives run at
/// stream sync); an enqueue failure is HCCL_E_RUNTIME (15).
unsafe fn collective(stream: *mut c_void, plan: impl FnOnce() -> Result<Job, u32>) -> u32 {
    match plan() {
        Ok(job) => match enqueue(stream, job) {
            OK => 0,
            _ => 15,
        },
        Err(code) => code,
    }
}

#[no_mangle]
pub unsafe extern "C" fn HcclAllReduce(
    send: *mut c_void,
    recv: *mut c_void,
    count: u64,
    dt: i32,
    op: i32,
    comm: *mut Comm,
    stream: *mut c_void,
) -> u32 {
    collective(stream, || {
        let (_, g, rank, bytes) = comm_bytes(comm, count, dt)?;
        // Rule (hicann/hccl docs/zh/api_ref/comm_op_interface/HcclAllReduce.md, Atlas A2/A3):
        // reductions take int8/16/32/64, fp16, fp32, bf16 only; UINT8 (7) and FP64 (10) are not.
        if dt == 7 || dt == 10 {
            return Err(HCCL_E_NOT_SUPPORT);
        }
        if !(0..=3).contains(&op)
            || !is_device(send as usize, bytes)
            || !is_device(recv as usize, bytes)
        {
            return Err(HCCL_E_PARA);
        }
        let (s, r) = (Addr(send as usize), Addr(recv as usize));
        Ok(Box::new(move || {
            let mine = std::slice::from_raw_parts(s.0 as *const u8, bytes).to_vec();
            let all = g.exchange(rank, mine)?;
            let out = reduce(dt, op, &all, count as usize);
            std::ptr::copy_nonoverlapping(out.as_ptr(), r.0 as *mut u8, bytes);
            Ok(())
        }) as Job)
    })
}

#[no_mangle]
pub unsafe extern "C" fn HcclBroadcast(
    buf: *mut c_void,
    count: u64,
    dt: i32,
    root: u32,
    comm: *mut Comm,
    stream: *mut c_void,
) -> u32 {
    collective(stream, || {
        let (c, g, rank, bytes) = comm_bytes(comm, count, dt)?;
        if root >= c.group.n || !is_device(buf as usize, bytes) {
            return Err(HCCL_E_PARA);
        }
        let b = Addr(buf as usize);
        Ok(Box::new(move || {
            let mine = if rank == root {
                std::slice::from_raw_parts(b.0 as *const u8, bytes).to_vec()
            } else {
                vec![]
            };
            let all = g.exchange(rank, mine)?;
            std::ptr::copy_nonoverlapping(all[root as usize].as_ptr(), b.0 as *mut u8, bytes);
            Ok(())
        }) as Job)
    })
}

#[no_mangle]
pub unsafe extern "C" fn HcclAllGather(
    send: *mut c_void,
    recv: *mut c_void,
    count: u64,
    dt: i32,
    comm: *mut Comm,
    stream: *mut c_void,
) -> u32 {
    collective(stream, || {
        let (c, g, rank, bytes) = comm_bytes(comm, count, dt)?;
        if !is_device(send as usize, bytes) || !is_device(recv as usize, bytes * c.group.n as usize)
        {
            return Err(HCCL_E_PARA);
        }
        let (s, r) = (Addr(send as usize), Addr(recv as usize));
        Ok(Box::new(move || {
            let mine = std::slice::from_raw_parts(s.0 as *const u8, bytes).to_vec();
            let all = g.exchange(rank, mine)?;
            for (i, part) in all.iter().enumerate() {
                std::ptr::copy_nonoverlapping(
                    part.as_ptr(),
                    (r.0 as *mut u8).add(i * bytes),
                    bytes,
                );
            }
            Ok(())
        }) as Job)
    })
}

#[no_mangle]
pub unsafe extern "C" fn HcclBarrier(comm: *mut Comm, stream: *mut c_void) -> u32 {
    collective(stream, || {
        let (_, g, rank) = comm_ref(comm)?;
        Ok(Box::new(move || g.exchange(rank, vec![]).map(|_| ())) as Job)
    })
}
