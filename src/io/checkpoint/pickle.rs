//! A restricted pickle reader and a protocol-2 pickle writer for torch
//! checkpoints.
//!
//! The reader never executes anything: `GLOBAL`/`STACK_GLOBAL` resolve only an
//! allowlist of names into inert markers, and `REDUCE`/`NEWOBJ`/`BUILD` are
//! interpreted only for those markers. Objects live in an arena so that memo
//! references alias correctly (a container filled after being memoized is seen
//! filled through every reference); the arena is converted to [`Value`] at the
//! end with caps on nesting depth and total node count.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use super::{CheckpointError, DType, F32Tensor, Result, TensorData, Tree, Value};

/// Resource caps for the unpickler (denial-of-service protection).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Maximum nesting depth of containers in the result.
    pub max_depth: usize,
    /// Maximum number of memo entries.
    pub max_memo: usize,
    /// Maximum number of objects created while unpickling.
    pub max_objects: usize,
    /// Maximum number of values in the final result (counts shared subtrees
    /// once per reference).
    pub max_nodes: usize,
    /// Maximum total bytes of materialised tensors (and, separately, of the storages they
    /// are views of); checked before either is allocated.
    pub max_tensor_bytes: usize,
    /// Maximum total bytes of strings and byte strings in the result (a string shared by many
    /// references counts once per reference, as it is copied once per reference).
    pub max_string_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 100,
            max_memo: 4 << 20,
            max_objects: 8 << 20,
            max_nodes: 1 << 20,
            max_tensor_bytes: crate::io::limits::Limits::current_or_default()
                .max_tensor_bytes
                .min(usize::MAX as u64) as usize,
            max_string_bytes: 256 << 20,
        }
    }
}

type Id = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    RebuildTensorV2,
    RebuildParameter,
    OrderedDict,
    Storage(DType),
    CodecsEncode,
}

fn resolve_global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("_codecs", "encode") => Global::CodecsEncode,
        ("torch", n) => Global::Storage(DType::from_torch_storage_name(n)?),
        _ => return None,
    })
}

#[derive(Debug)]
enum Obj<T> {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Tensor(T),
    Global(Global),
    Storage { dtype: DType, key: String },
}

impl<T> Obj<T> {
    fn kind(&self) -> &'static str {
        match self {
            Obj::None => "None",
            Obj::Bool(_) => "bool",
            Obj::Int(_) => "int",
            Obj::Float(_) => "float",
            Obj::Str(_) => "str",
            Obj::Bytes(_) => "bytes",
            Obj::List(_) => "list",
            Obj::Tuple(_) => "tuple",
            Obj::Dict(_) => "dict",
            Obj::Tensor(_) => "tensor",
            Obj::Global(_) => "global",
            Obj::Storage { .. } => "storage",
        }
    }
}

/// Bytes of one storage: read (and cached) by the source, or the byte range `start..end` of a
/// memory-mapped file.
pub(crate) enum StorageBytes<'s> {
    Owned(Rc<Vec<u8>>),
    Mapped {
        map: &'s Arc<memmap2::Mmap>,
        start: usize,
        end: usize,
    },
}

impl std::ops::Deref for StorageBytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            StorageBytes::Owned(v) => v,
            StorageBytes::Mapped { map, start, end } => &map[*start..*end],
        }
    }
}

/// Source of storage bytes for persistent ids (`data/<key>` records).
pub(crate) trait StorageSource {
    /// Raw little-endian bytes of storage `key`; loaded once and cached (or mapped) by the
    /// implementation. A storage longer than `max_bytes` is an error, raised before it is read.
    fn load(&mut self, key: &str, dtype: DType, max_bytes: usize) -> Result<StorageBytes<'_>>;

    /// Total bytes of the storages loaded so far.
    fn loaded_bytes(&self) -> usize;
}

struct Unpickler<'a, S: StorageSource, T> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed (for errors).
    op_pos: usize,
    objs: Vec<Obj<T>>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    /// `None` once unpickling is done (frees the storage cache early).
    storages: Option<S>,
    limits: &'a Limits,
    tensor_bytes: usize,
    /// Bytes of strings copied into the result so far.
    string_bytes: usize,
    /// Remaining references to each tensor object during conversion; the last
    /// one moves the data out instead of cloning it.
    tensor_refs: HashMap<Id, usize>,
}

/// Unpickles `data` (the contents of `data.pkl`) into a [`Tree`] of `T` tensors.
pub(crate) fn unpickle<S: StorageSource, T: TensorOut>(
    path: &Path,
    data: &[u8],
    storages: S,
    limits: &Limits,
) -> Result<Tree<T>> {
    let mut u = Unpickler {
        path,
        data,
        pos: 0,
        op_pos: 0,
        objs: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        storages: Some(storages),
        limits,
        tensor_bytes: 0,
        string_bytes: 0,
        tensor_refs: HashMap::new(),
    };
    let root = u.run()?;
    u.storages = None;
    u.count_tensor_refs(root);
    let mut nodes = 0usize;
    u.take_value(root, 0, &mut nodes)
}

impl<'a, S: StorageSource, T: TensorOut> Unpickler<'a, S, T> {
    fn err(&self, msg: impl Into<String>) -> CheckpointError {
        CheckpointError::Pickle {
            path: self.path.to_path_buf(),
            pos: self.op_pos,
            msg: msg.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(e) => {
                let s = &self.data[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => Err(self.err(format!(
                "unexpected end of data (wanted {n} bytes at offset {})",
                self.pos
            ))),
        }
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16le(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32le(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().unwrap()))
    }

    fn u64le(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap()))
    }

    /// The text-line argument of `opcode`, `clean`ed and parsed.
    fn line_arg<A: std::str::FromStr>(
        &mut self,
        opcode: &str,
        clean: fn(&str) -> &str,
    ) -> Result<A> {
        let s = self.line()?;
        self.parse_arg(s, opcode, clean)
    }

    fn parse_arg<A: std::str::FromStr>(
        &self,
        s: &str,
        opcode: &str,
        clean: fn(&str) -> &str,
    ) -> Result<A> {
        clean(s)
            .parse()
            .map_err(|_| self.err(format!("bad {opcode} argument {s:?}")))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| self.err("unterminated text argument"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.err("non-UTF-8 text argument"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn len_arg(&mut self, n: u64) -> Result<usize> {
        let remaining = (self.data.len() - self.pos) as u64;
        if n > remaining {
            return Err(self.err(format!(
                "length {n} exceeds remaining {remaining} bytes of data.pkl"
            )));
        }
        Ok(n as usize)
    }

    fn alloc(&mut self, o: Obj<T>) -> Result<Id> {
        if self.objs.len() >= self.limits.max_objects {
            return Err(self.err(format!(
                "too many objects (cap {})",
                self.limits.max_objects
            )));
        }
        self.objs.push(o);
        Ok(self.objs.len() - 1)
    }

    fn push(&mut self, o: Obj<T>) -> Result<()> {
        let id = self.alloc(o)?;
        self.stack.push(id);
        Ok(())
    }

    fn pop(&mut self) -> Result<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        Ok(self.stack.pop().unwrap())
    }

    fn top(&self) -> Result<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        Ok(*self.stack.last().unwrap())
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK on the stack"))?;
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, idx: u64) -> Result<()> {
        let id = self.top()?;
        if !self.memo.contains_key(&idx) && self.memo.len() >= self.limits.max_memo {
            return Err(self.err(format!(
                "memo too large (cap {} entries)",
                self.limits.max_memo
            )));
        }
        self.memo.insert(idx, id);
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> Result<()> {
        let id = *self
            .memo
            .get(&idx)
            .ok_or_else(|| self.err(format!("memo key {idx} not found")))?;
        self.stack.push(id);
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        match resolve_global(module, name) {
            Some(g) => self.push(Obj::Global(g)),
            None => Err(CheckpointError::ForbiddenGlobal {
                path: self.path.to_path_buf(),
                name: format!("{module}.{name}"),
            }),
        }
    }

    fn str_of(&self, id: Id, what: &str) -> Result<String> {
        match &self.objs[id] {
            Obj::Str(s) => Ok(s.clone()),
            o => Err(self.err(format!("{what}: expected str, found {}", o.kind()))),
        }
    }

    fn int_of(&self, id: Id, what: &str) -> Result<i64> {
        match &self.objs[id] {
            Obj::Int(i) => Ok(*i),
            Obj::Bool(b) => Ok(*b as i64),
            o => Err(self.err(format!("{what}: expected int, found {}", o.kind()))),
        }
    }

    fn usize_of(&self, id: Id, what: &str) -> Result<usize> {
        let i = self.int_of(id, what)?;
        usize::try_from(i).map_err(|_| self.err(format!("{what}: negative value {i}")))
    }

    fn tuple_of(&self, id: Id, what: &str) -> Result<Vec<Id>> {
        match &self.objs[id] {
            Obj::Tuple(v) | Obj::List(v) => Ok(v.clone()),
            o => Err(self.err(format!("{what}: expected tuple, found {}", o.kind()))),
        }
    }

    fn run(&mut self) -> Result<Id> {
        loop {
            self.op_pos = self.pos;
            let op = self.byte()?;
            match op {
                0x80 => {
                    // PROTO
                    let p = self.byte()?;
                    if p > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {p}")));
                    }
                }
                0x95 => {
                    // FRAME: framing is irrelevant when reading from memory.
                    self.u64le()?;
                }
                b'.' => {
                    // STOP
                    let r = self.pop()?;
                    return Ok(r);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'N' => self.push(Obj::None)?,
                0x88 => self.push(Obj::Bool(true))?,
                0x89 => self.push(Obj::Bool(false))?,
                b'J' => {
                    let v = self.u32le()? as i32 as i64;
                    self.push(Obj::Int(v))?
                }
                b'K' => {
                    let v = self.byte()? as i64;
                    self.push(Obj::Int(v))?
                }
                b'M' => {
                    let v = self.u16le()? as i64;
                    self.push(Obj::Int(v))?
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4: little-endian two's complement
                    let n = if op == 0x8a {
                        self.byte()? as u64
                    } else {
                        self.u32le()? as u64
                    };
                    let n = self.len_arg(n)?;
                    let b = self.take(n)?;
                    let v = long_from_le(b).ok_or_else(|| {
                        self.err(format!("integer of {n} bytes does not fit in i64"))
                    })?;
                    self.push(Obj::Int(v))?
                }
                b'I' => {
                    let s = self.line()?;
                    let o = match s {
                        "00" => Obj::Bool(false),
                        "01" => Obj::Bool(true),
                        _ => Obj::Int(self.parse_arg(s, "INT", str::trim)?),
                    };
                    self.push(o)?
                }
                b'L' => {
                    let v = self.line_arg("LONG", |s| s.trim_end_matches('L'))?;
                    self.push(Obj::Int(v))?
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().unwrap());
                    self.push(Obj::Float(v))?
                }
                b'F' => {
                    let v = self.line_arg("FLOAT", str::trim)?;
                    self.push(Obj::Float(v))?
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32le()? as u64,
                        0x8c => self.byte()? as u64,
                        _ => self.u64le()?,
                    };
                    let n = self.len_arg(n)?;
                    let b = self.take(n)?;
                    let s = std::str::from_utf8(b)
                        .map_err(|_| self.err("string is not valid UTF-8"))?
                        .to_string();
                    self.push(Obj::Str(s))?
                }
                b'T' | b'U' => {
                    // BINSTRING / SHORT_BINSTRING (py2 str): decoded as latin-1.
                    let n = if op == b'T' {
                        self.u32le()? as u64
                    } else {
                        self.byte()? as u64
                    };
                    let n = self.len_arg(n)?;
                    let s = self.take(n)?.iter().map(|&c| c as char).collect();
                    self.push(Obj::Str(s))?
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32le()? as u64,
                        b'C' => self.byte()? as u64,
                        _ => self.u64le()?,
                    };
                    let n = self.len_arg(n)?;
                    let b = self.take(n)?.to_vec();
                    self.push(Obj::Bytes(b))?
                }
                b']' => self.push(Obj::List(Vec::new()))?,
                b')' => self.push(Obj::Tuple(Vec::new()))?,
                b'}' => self.push(Obj::Dict(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::List(items))?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Obj::Tuple(items))?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push(Obj::Dict(pairs))?
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.extend_list(l, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.extend_list(l, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.extend_dict(d, vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let d = self.top()?;
                    self.extend_dict(d, pairs)?;
                }
                // BINPUT/BINGET take one byte, LONG_BINPUT/LONG_BINGET a u32, PUT/GET a text
                // line; MEMOIZE puts under the next free index.
                b'q' | b'r' | b'p' | 0x94 | b'h' | b'j' | b'g' => {
                    let get = matches!(op, b'h' | b'j' | b'g');
                    let i = match op {
                        b'q' | b'h' => self.byte()? as u64,
                        b'r' | b'j' => self.u32le()? as u64,
                        0x94 => self.memo.len() as u64,
                        _ => self.line_arg(if get { "GET" } else { "PUT" }, |s| s)?,
                    };
                    if get {
                        self.memo_get(i)?
                    } else {
                        self.memo_put(i)?
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let name = self.str_of(name, "STACK_GLOBAL name")?;
                    let module = self.str_of(module, "STACK_GLOBAL module")?;
                    self.global(&module, &name)?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let o = self.persistent_load(pid)?;
                    self.push(o)?
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let o = self.reduce(f, args)?;
                    match o {
                        Reduced::New(o) => self.push(o)?,
                        Reduced::Existing(id) => self.stack.push(id),
                    }
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args); only OrderedDict.
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    match self.objs[cls] {
                        Obj::Global(Global::OrderedDict) => self.push(Obj::Dict(Vec::new()))?,
                        _ => {
                            return Err(
                                self.err("NEWOBJ is only supported for collections.OrderedDict")
                            )
                        }
                    }
                }
                b'b' => {
                    // BUILD: only the `__dict__` state of an OrderedDict (torch's
                    // `_metadata`) or of a tensor/parameter is accepted; it is dropped.
                    let _state = self.pop()?;
                    let inst = self.top()?;
                    match self.objs[inst] {
                        Obj::Dict(_) | Obj::Tensor(_) => {}
                        ref o => {
                            return Err(
                                self.err(format!("BUILD on a {} is not supported", o.kind()))
                            )
                        }
                    }
                }
                b'P' => return Err(self.err("text persistent ids (PERSID) are not supported")),
                0x8f..=0x91 => {
                    return Err(self.err("sets are not supported in checkpoints"));
                }
                b'S' | b'V' => {
                    return Err(self.err(format!(
                        "protocol-0 string opcode {:?} is not supported",
                        op as char
                    )))
                }
                b'i' | b'o' | 0x92 | 0x82..=0x84 | 0x97 | 0x98 => {
                    return Err(self.err(format!(
                        "opcode 0x{op:02x} (object construction/extension/buffer) is not allowed"
                    )))
                }
                _ => return Err(self.err(format!("unknown opcode 0x{op:02x}"))),
            }
            if self.stack.len() > self.limits.max_objects {
                return Err(self.err("stack too large"));
            }
        }
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("odd number of items for a dict"));
        }
        Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
    }

    fn extend_list(&mut self, l: Id, items: Vec<Id>) -> Result<()> {
        match &mut self.objs[l] {
            Obj::List(v) => {
                v.extend(items);
                Ok(())
            }
            o => {
                let k = o.kind();
                Err(self.err(format!("APPEND(S) on a {k}")))
            }
        }
    }

    fn extend_dict(&mut self, d: Id, pairs: Vec<(Id, Id)>) -> Result<()> {
        match &mut self.objs[d] {
            Obj::Dict(v) => {
                v.extend(pairs);
                Ok(())
            }
            o => {
                let k = o.kind();
                Err(self.err(format!("SETITEM(S) on a {k}")))
            }
        }
    }

    fn persistent_load(&mut self, pid: Id) -> Result<Obj<T>> {
        let t = self.tuple_of(pid, "persistent id")?;
        if t.len() < 4 {
            return Err(self.err(format!(
                "persistent id tuple has {} items, expected ('storage', type, key, location, numel)",
                t.len()
            )));
        }
        let tag = self.str_of(t[0], "persistent id tag")?;
        if tag != "storage" {
            return Err(self.err(format!("unknown persistent id tag {tag:?}")));
        }
        let dtype = match self.objs[t[1]] {
            Obj::Global(Global::Storage(d)) => d,
            ref o => {
                return Err(self.err(format!(
                    "persistent id storage type: expected a torch storage class, found {}",
                    o.kind()
                )))
            }
        };
        let key = self.str_of(t[2], "storage key")?;
        if key.is_empty() || key.contains('/') || key.contains("..") {
            return Err(self.err(format!("invalid storage key {key:?}")));
        }
        Ok(Obj::Storage { dtype, key })
    }

    fn reduce(&mut self, f: Id, args: Id) -> Result<Reduced<T>> {
        let g = match self.objs[f] {
            Obj::Global(g) => g,
            ref o => return Err(self.err(format!("REDUCE on a {}, not a callable", o.kind()))),
        };
        let a = self.tuple_of(args, "REDUCE arguments")?;
        match g {
            Global::OrderedDict => {
                if a.is_empty() {
                    return Ok(Reduced::New(Obj::Dict(Vec::new())));
                }
                // OrderedDict(iterable_of_pairs)
                let items = self.tuple_of(a[0], "OrderedDict argument")?;
                let mut pairs = Vec::with_capacity(items.len());
                for it in items {
                    let p = self.tuple_of(it, "OrderedDict item")?;
                    if p.len() != 2 {
                        return Err(self.err("OrderedDict item is not a pair"));
                    }
                    pairs.push((p[0], p[1]));
                }
                Ok(Reduced::New(Obj::Dict(pairs)))
            }
            Global::RebuildTensorV2 => {
                if a.len() < 4 {
                    return Err(self.err(format!(
                        "_rebuild_tensor_v2 takes at least 4 arguments, got {}",
                        a.len()
                    )));
                }
                let (dtype, key) = match &self.objs[a[0]] {
                    Obj::Storage { dtype, key } => (*dtype, key.clone()),
                    o => {
                        return Err(self.err(format!(
                            "_rebuild_tensor_v2: expected a storage, found {}",
                            o.kind()
                        )))
                    }
                };
                let offset = self.usize_of(a[1], "storage offset")?;
                let size = self
                    .tuple_of(a[2], "size")?
                    .into_iter()
                    .map(|i| self.usize_of(i, "size"))
                    .collect::<Result<Vec<_>>>()?;
                let stride = self
                    .tuple_of(a[3], "stride")?
                    .into_iter()
                    .map(|i| self.usize_of(i, "stride"))
                    .collect::<Result<Vec<_>>>()?;
                let limit = self.limits.max_tensor_bytes;
                let sources = self.storages.as_mut().ok_or_else(|| {
                    CheckpointError::format(self.path, "storage read after the end")
                })?;
                let storage_budget = limit.saturating_sub(sources.loaded_bytes());
                let storage = sources.load(&key, dtype, storage_budget)?;
                let budget = limit.saturating_sub(self.tensor_bytes);
                let view = View {
                    dtype,
                    offset,
                    size,
                    stride: &stride,
                };
                let t = T::from_storage(&storage, view, budget)
                    .map_err(|m| self.err(format!("tensor on storage {key:?}: {m}")))?;
                self.tensor_bytes += t.stored_bytes();
                Ok(Reduced::New(Obj::Tensor(t)))
            }
            Global::RebuildParameter => match a.first().map(|&i| &self.objs[i]) {
                Some(Obj::Tensor(_)) => Ok(Reduced::Existing(a[0])),
                _ => Err(self.err("_rebuild_parameter: first argument is not a tensor")),
            },
            Global::CodecsEncode => {
                if a.is_empty() {
                    return Err(self.err("_codecs.encode without arguments"));
                }
                let s = self.str_of(a[0], "_codecs.encode argument")?;
                let enc = match a.get(1) {
                    Some(&e) => self.str_of(e, "_codecs.encode encoding")?,
                    None => "utf-8".to_string(),
                };
                let b = match enc.to_ascii_lowercase().as_str() {
                    "latin1" | "latin-1" | "iso-8859-1" => s
                        .chars()
                        .map(|c| u8::try_from(c as u32))
                        .collect::<std::result::Result<Vec<u8>, _>>()
                        .map_err(|_| self.err("_codecs.encode: character outside latin-1"))?,
                    "utf-8" | "utf8" => s.into_bytes(),
                    _ => return Err(self.err(format!("_codecs.encode: encoding {enc:?}"))),
                };
                Ok(Reduced::New(Obj::Bytes(b)))
            }
            Global::Storage(d) => Err(self.err(format!(
                "calling torch.{} is not supported",
                d.torch_storage_name()
            ))),
        }
    }

    /// Counts references to tensors from every container (and the root). An
    /// over-count (references from unreachable objects) only causes a copy.
    fn count_tensor_refs(&mut self, root: Id) {
        let mut refs: HashMap<Id, usize> = HashMap::new();
        let objs = &self.objs;
        let mut bump = |i: Id| {
            if matches!(objs[i], Obj::Tensor(_)) {
                *refs.entry(i).or_insert(0) += 1;
            }
        };
        bump(root);
        for o in objs {
            match o {
                Obj::List(v) | Obj::Tuple(v) => v.iter().for_each(|&i| bump(i)),
                Obj::Dict(p) => p.iter().for_each(|&(k, v)| {
                    bump(k);
                    bump(v)
                }),
                _ => {}
            }
        }
        self.tensor_refs = refs;
    }

    fn charge_string(&mut self, n: usize) -> Result<()> {
        self.string_bytes = self.string_bytes.saturating_add(n);
        if self.string_bytes > self.limits.max_string_bytes {
            return Err(self.err(format!(
                "strings in the result exceed the limit of {} bytes (shared strings count once per reference)",
                self.limits.max_string_bytes
            )));
        }
        Ok(())
    }

    fn take_value(&mut self, id: Id, depth: usize, nodes: &mut usize) -> Result<Tree<T>> {
        if depth > self.limits.max_depth {
            return Err(self.err(format!(
                "nesting deeper than the cap of {} levels (or a cyclic structure)",
                self.limits.max_depth
            )));
        }
        *nodes += 1;
        if *nodes > self.limits.max_nodes {
            return Err(self.err(format!(
                "result has more than {} values",
                self.limits.max_nodes
            )));
        }
        Ok(match &self.objs[id] {
            Obj::None => Tree::None,
            Obj::Bool(b) => Tree::Bool(*b),
            Obj::Int(i) => Tree::Int(*i),
            Obj::Float(f) => Tree::Float(*f),
            Obj::Str(_) | Obj::Bytes(_) => {
                let n = match &self.objs[id] {
                    Obj::Str(s) => s.len(),
                    Obj::Bytes(b) => b.len(),
                    _ => unreachable!("matched above"),
                };
                // Charged before the copy is made.
                self.charge_string(n)?;
                match &self.objs[id] {
                    Obj::Str(s) => Tree::Str(s.clone()),
                    Obj::Bytes(b) => Tree::Bytes(b.clone()),
                    _ => unreachable!("matched above"),
                }
            }
            Obj::List(v) | Obj::Tuple(v) => {
                let is_list = matches!(self.objs[id], Obj::List(_));
                let items = v
                    .clone()
                    .into_iter()
                    .map(|i| self.take_value(i, depth + 1, nodes))
                    .collect::<Result<_>>()?;
                if is_list {
                    Tree::List(items)
                } else {
                    Tree::Tuple(items)
                }
            }
            Obj::Dict(pairs) => {
                let pairs = pairs.clone();
                // Python semantics: a repeated key replaces the value in place.
                let mut out: Vec<(Tree<T>, Tree<T>)> = Vec::with_capacity(pairs.len());
                let mut index: HashMap<HashKey, usize> = HashMap::new();
                for (k, v) in pairs {
                    let kv = self.take_value(k, depth + 1, nodes)?;
                    let vv = self.take_value(v, depth + 1, nodes)?;
                    match hash_key(&kv) {
                        Some(h) => match index.get(&h) {
                            Some(&i) => out[i].1 = vv,
                            None => {
                                index.insert(h, out.len());
                                out.push((kv, vv));
                            }
                        },
                        None => out.push((kv, vv)),
                    }
                }
                Tree::Dict(out)
            }
            Obj::Tensor(_) => {
                let left = self.tensor_refs.get_mut(&id).map(|c| {
                    *c = c.saturating_sub(1);
                    *c
                });
                if left == Some(0) {
                    match std::mem::replace(&mut self.objs[id], Obj::None) {
                        Obj::Tensor(t) => Tree::Tensor(t),
                        _ => unreachable!(),
                    }
                } else {
                    // A tensor referenced again is copied: the copy counts against the cap.
                    let n = match &self.objs[id] {
                        Obj::Tensor(t) => t.stored_bytes(),
                        _ => unreachable!(),
                    };
                    self.tensor_bytes = self.tensor_bytes.saturating_add(n);
                    if self.tensor_bytes > self.limits.max_tensor_bytes {
                        return Err(self.err(format!(
                            "shared tensors copied into the result exceed the limit of {} bytes",
                            self.limits.max_tensor_bytes
                        )));
                    }
                    match &self.objs[id] {
                        Obj::Tensor(t) => Tree::Tensor(t.clone()),
                        _ => unreachable!(),
                    }
                }
            }
            Obj::Global(_) => return Err(self.err("a bare global cannot be part of the result")),
            Obj::Storage { key, .. } => {
                return Err(self.err(format!(
                    "a bare storage ({key:?}) cannot be part of the result"
                )))
            }
        })
    }
}

enum Reduced<T> {
    New(Obj<T>),
    Existing(Id),
}

#[derive(Hash, PartialEq, Eq)]
enum HashKey {
    Str(String),
    Int(i64),
}

fn hash_key<T>(v: &Tree<T>) -> Option<HashKey> {
    match v {
        Tree::Str(s) => Some(HashKey::Str(s.clone())),
        Tree::Int(i) => Some(HashKey::Int(*i)),
        Tree::Bool(b) => Some(HashKey::Int(*b as i64)),
        _ => None,
    }
}

fn long_from_le(b: &[u8]) -> Option<i64> {
    if b.is_empty() {
        return Some(0);
    }
    let neg = b[b.len() - 1] & 0x80 != 0;
    let fill = if neg { 0xff } else { 0 };
    if b.len() > 8 {
        // Longer encodings are fine if the extra bytes are pure sign extension.
        if b[8..].iter().any(|&x| x != fill) || ((b[7] & 0x80 != 0) != neg) {
            return None;
        }
    }
    let mut buf = [fill; 8];
    let n = b.len().min(8);
    buf[..n].copy_from_slice(&b[..n]);
    Some(i64::from_le_bytes(buf))
}

/// A view `offset/size/stride` (in elements) of a storage of `dtype` elements, as
/// `_rebuild_tensor_v2` gives it.
pub(crate) struct View<'s> {
    pub dtype: DType,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: &'s [usize],
}

/// The tensor type an unpickler builds from each storage view.
pub(crate) trait TensorOut: Sized + Clone {
    /// An empty tensor of `dtype` elements and `shape`, with room for the `numel` elements about
    /// to be appended.
    fn with_capacity(dtype: DType, shape: Vec<usize>, numel: usize) -> Self;

    /// Appends elements given as their little-endian bytes as stored.
    fn extend(&mut self, bytes: &[u8]);

    /// Bytes of the tensor as stored (what [`Limits::max_tensor_bytes`] counts).
    fn stored_bytes(&self) -> usize;

    /// The view's elements copied out of `storage` (little-endian bytes), in row-major order;
    /// at most `budget` bytes as stored, checked before anything is allocated.
    fn from_view(
        storage: &[u8],
        view: View<'_>,
        budget: usize,
    ) -> std::result::Result<Self, String> {
        let View {
            dtype,
            offset,
            size,
            stride,
        } = view;
        let elem = dtype.size();
        let plan = check_view(storage, elem, offset, &size, stride, budget)?;
        let mut t = Self::with_capacity(dtype, size.clone(), plan.numel);
        walk_view(storage, elem, offset, &size, stride, plan, |b| t.extend(b));
        Ok(t)
    }

    /// [`TensorOut::from_view`] of a storage as its source gave it: a copy, unless the type can
    /// use a mapped storage in place.
    fn from_storage(
        storage: &StorageBytes<'_>,
        view: View<'_>,
        budget: usize,
    ) -> std::result::Result<Self, String> {
        Self::from_view(storage, view, budget)
    }
}

/// Tensors as stored: their bytes.
impl TensorOut for TensorData {
    fn with_capacity(dtype: DType, shape: Vec<usize>, numel: usize) -> Self {
        TensorData {
            dtype,
            shape,
            bytes: Vec::with_capacity(numel * dtype.size()),
        }
    }
    fn extend(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes)
    }
    fn stored_bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// Tensors converted to f32 on the way out of the storage: one copy, no intermediate bytes (or
/// none, for an f32 view used in place from a mapped storage).
impl TensorOut for F32Tensor {
    fn with_capacity(dtype: DType, shape: Vec<usize>, numel: usize) -> Self {
        F32Tensor::with_capacity(dtype, shape, numel)
    }
    fn extend(&mut self, bytes: &[u8]) {
        F32Tensor::extend(self, bytes)
    }
    fn stored_bytes(&self) -> usize {
        F32Tensor::stored_bytes(self)
    }

    /// A contiguous f32 view of a mapped storage is used in place (same checks and errors as a
    /// copy); anything else is copied.
    fn from_storage(
        storage: &StorageBytes<'_>,
        view: View<'_>,
        budget: usize,
    ) -> std::result::Result<Self, String> {
        if let (StorageBytes::Mapped { map, start, .. }, DType::F32) = (storage, view.dtype) {
            let plan = check_view(storage, 4, view.offset, &view.size, view.stride, budget)?;
            if plan.contiguous {
                let at = start + view.offset * 4;
                if let Some(t) = F32Tensor::in_map(map, at, &view.size, plan.numel) {
                    return Ok(t);
                }
            }
        }
        Self::from_view(storage, view, budget)
    }
}

/// What [`check_view`] found: the element count (0: nothing to read) and whether the view is
/// one contiguous run of the storage.
#[derive(Clone, Copy)]
struct ViewPlan {
    numel: usize,
    contiguous: bool,
}

/// Checks the view `offset/size/stride` (in elements) against the storage (ranks, overflow,
/// bounds) and its byte size against `budget`; a stride-0 view may claim far more elements than
/// its storage, so this comes before any allocation.
fn check_view(
    storage: &[u8],
    elem: usize,
    offset: usize,
    size: &[usize],
    stride: &[usize],
    budget: usize,
) -> std::result::Result<ViewPlan, String> {
    if size.len() != stride.len() {
        return Err(format!(
            "size {size:?} and stride {stride:?} have different ranks"
        ));
    }
    let numel = size
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .ok_or_else(|| format!("size {size:?} overflows"))?;
    if numel == 0 {
        return Ok(ViewPlan {
            numel,
            contiguous: true,
        });
    }
    let storage_numel = storage.len() / elem;
    // Largest element index touched.
    let mut last = offset;
    for (&s, &st) in size.iter().zip(stride) {
        last = (s - 1)
            .checked_mul(st)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(|| "view extent overflows".to_string())?;
    }
    if last >= storage_numel {
        return Err(format!(
            "view (offset {offset}, size {size:?}, stride {stride:?}) reaches element {last} \
             but the storage has {storage_numel} elements"
        ));
    }
    let total = numel
        .checked_mul(elem)
        .ok_or_else(|| "tensor byte size overflows".to_string())?;
    if total > budget {
        return Err(format!(
            "view of size {size:?} needs {total} bytes, over the remaining tensor budget of \
             {budget} bytes (MEDSAM_MAX_TENSOR_BYTES)"
        ));
    }
    // Contiguous: strides equal the row-major strides (size-1 dims don't matter).
    let mut expect = 1usize;
    let mut contiguous = true;
    for (&s, &st) in size.iter().zip(stride).rev() {
        if s != 1 && st != expect {
            contiguous = false;
            break;
        }
        expect *= s;
    }
    Ok(ViewPlan { numel, contiguous })
}

/// Hands the bytes of a view checked by [`check_view`] to `emit` in row-major order: one slice
/// for a contiguous view, else one per element.
fn walk_view(
    storage: &[u8],
    elem: usize,
    offset: usize,
    size: &[usize],
    stride: &[usize],
    plan: ViewPlan,
    mut emit: impl FnMut(&[u8]),
) {
    if plan.numel == 0 {
        return;
    }
    if plan.contiguous {
        emit(&storage[offset * elem..(offset + plan.numel) * elem]);
        return;
    }
    let nd = size.len();
    let mut idx = vec![0usize; nd];
    let mut pos = offset;
    for _ in 0..plan.numel {
        emit(&storage[pos * elem..(pos + 1) * elem]);
        // Increment the multi-index (row-major), updating the element position.
        for d in (0..nd).rev() {
            idx[d] += 1;
            pos += stride[d];
            if idx[d] < size[d] {
                break;
            }
            pos -= stride[d] * size[d];
            idx[d] = 0;
        }
    }
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

/// Pickles a [`Value`] with protocol 2 the way `torch.save` does; tensors
/// become `torch._utils._rebuild_tensor_v2` calls on persistent-id storages
/// whose data are returned in order (storage key = index as a decimal string).
pub(crate) fn pickle_value(v: &Value) -> (Vec<u8>, Vec<&TensorData>) {
    let mut w = Pickler {
        out: Vec::new(),
        storages: Vec::new(),
    };
    w.out.extend_from_slice(&[0x80, 2]);
    w.value(v);
    w.out.push(b'.');
    (w.out, w.storages)
}

struct Pickler<'v> {
    out: Vec<u8>,
    storages: Vec<&'v TensorData>,
}

impl<'v> Pickler<'v> {
    fn str(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, i: i64) {
        if (0..=0xff).contains(&i) {
            self.out.extend_from_slice(&[b'K', i as u8]);
        } else if (0..=0xffff).contains(&i) {
            self.out.push(b'M');
            self.out.extend_from_slice(&(i as u16).to_le_bytes());
        } else if i32::try_from(i).is_ok() {
            self.out.push(b'J');
            self.out.extend_from_slice(&(i as i32).to_le_bytes());
        } else {
            // LONG1 with the minimal two's-complement encoding.
            let b = i.to_le_bytes();
            let mut n = 8;
            while n > 1 {
                let top = b[n - 1];
                let next_sign = b[n - 2] & 0x80 != 0;
                if (top == 0 && !next_sign) || (top == 0xff && next_sign) {
                    n -= 1;
                } else {
                    break;
                }
            }
            self.out.extend_from_slice(&[0x8a, n as u8]);
            self.out.extend_from_slice(&b[..n]);
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
    }

    fn tuple_of_ints(&mut self, xs: &[usize]) {
        match xs.len() {
            0 => self.out.push(b')'),
            1..=3 => {
                for &x in xs {
                    self.int(x as i64);
                }
                self.out.push(0x84 + xs.len() as u8);
            }
            _ => {
                self.out.push(b'(');
                for &x in xs {
                    self.int(x as i64);
                }
                self.out.push(b't');
            }
        }
    }

    fn seq(&mut self, items: &'v [Value]) {
        self.out.push(b'(');
        for it in items {
            self.value(it);
        }
    }

    fn is_state_dict(d: &[(Value, Value)]) -> bool {
        !d.is_empty()
            && d.iter()
                .all(|(k, v)| matches!(k, Value::Str(_)) && matches!(v, Value::Tensor(_)))
    }

    fn value(&mut self, v: &'v Value) {
        match v {
            Value::None => self.out.push(b'N'),
            Value::Bool(true) => self.out.push(0x88),
            Value::Bool(false) => self.out.push(0x89),
            Value::Int(i) => self.int(*i),
            Value::Float(f) => {
                self.out.push(b'G');
                self.out.extend_from_slice(&f.to_be_bytes());
            }
            Value::Str(s) => self.str(s),
            Value::Bytes(b) => {
                // Protocol 2 has no bytes type: `_codecs.encode(latin1_str, "latin1")`.
                self.global("_codecs", "encode");
                let s: String = b.iter().map(|&c| c as char).collect();
                self.str(&s);
                self.str("latin1");
                self.out.push(0x86);
                self.out.push(b'R');
            }
            Value::List(items) => {
                self.out.push(b']');
                for chunk in items.chunks(1000) {
                    self.seq(chunk);
                    self.out.push(b'e');
                }
            }
            Value::Tuple(items) => match items.len() {
                0 => self.out.push(b')'),
                1..=3 => {
                    for it in items {
                        self.value(it);
                    }
                    self.out.push(0x84 + items.len() as u8);
                }
                _ => {
                    self.seq(items);
                    self.out.push(b't');
                }
            },
            Value::Dict(pairs) => {
                if Self::is_state_dict(pairs) {
                    self.global("collections", "OrderedDict");
                    self.out.push(b')');
                    self.out.push(b'R');
                } else {
                    self.out.push(b'}');
                }
                for chunk in pairs.chunks(1000) {
                    self.out.push(b'(');
                    for (k, v) in chunk {
                        self.value(k);
                        self.value(v);
                    }
                    self.out.push(b'u');
                }
            }
            Value::Tensor(t) => {
                let key = self.storages.len();
                self.storages.push(t);
                self.global("torch._utils", "_rebuild_tensor_v2");
                self.out.push(b'(');
                // persistent id ('storage', torch.XStorage, key, 'cpu', numel)
                self.out.push(b'(');
                self.str("storage");
                self.global("torch", t.dtype.torch_storage_name());
                self.str(&key.to_string());
                self.str("cpu");
                self.int(t.numel() as i64);
                self.out.push(b't');
                self.out.push(b'Q');
                self.int(0);
                self.tuple_of_ints(&t.shape);
                let mut stride = vec![0usize; t.shape.len()];
                let mut acc = 1usize;
                for d in (0..t.shape.len()).rev() {
                    stride[d] = acc;
                    acc *= t.shape[d];
                }
                self.tuple_of_ints(&stride);
                self.out.push(0x89); // requires_grad = False
                self.global("collections", "OrderedDict");
                self.out.push(b')');
                self.out.push(b'R'); // backward_hooks = OrderedDict()
                self.out.push(b't');
                self.out.push(b'R');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_roundtrip() {
        for v in [
            0i64,
            1,
            -1,
            255,
            256,
            65535,
            65536,
            -129,
            i32::MAX as i64 + 1,
            i32::MIN as i64 - 1,
            i64::MAX,
            i64::MIN,
            1 << 40,
        ] {
            let mut w = Pickler {
                out: Vec::new(),
                storages: Vec::new(),
            };
            w.int(v);
            let decoded = match w.out[0] {
                b'K' => w.out[1] as i64,
                b'M' => u16::from_le_bytes([w.out[1], w.out[2]]) as i64,
                b'J' => i32::from_le_bytes(w.out[1..5].try_into().unwrap()) as i64,
                0x8a => long_from_le(&w.out[2..2 + w.out[1] as usize]).unwrap(),
                _ => panic!("unexpected opcode"),
            };
            assert_eq!(decoded, v);
        }
        assert_eq!(long_from_le(&[0xff; 12]), Some(-1));
        assert_eq!(long_from_le(&[0, 0, 0, 0, 0, 0, 0, 0, 1]), None);
    }

    /// The bytes of a view of a `u8` storage, as [`TensorData`].
    fn materialize(
        s: &[u8],
        offset: usize,
        size: &[usize],
        stride: &[usize],
        budget: usize,
    ) -> std::result::Result<Vec<u8>, String> {
        let view = View {
            dtype: DType::U8,
            offset,
            size: size.to_vec(),
            stride,
        };
        TensorData::from_view(s, view, budget).map(|t| t.bytes)
    }

    #[test]
    fn materialize_strided() {
        // storage 0..12 as u8, view [1:, ::2] of a 3x4
        let s: Vec<u8> = (0..12).collect();
        let v = materialize(&s, 4, &[2, 2], &[4, 2], 100).unwrap();
        assert_eq!(v, vec![4, 6, 8, 10]);
        // transpose
        let v = materialize(&s, 0, &[4, 3], &[1, 4], 100).unwrap();
        assert_eq!(v, vec![0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
        // out of bounds
        assert!(materialize(&s, 1, &[3, 4], &[4, 1], 100).is_err());
        // expanded (stride 0)
        let v = materialize(&s, 2, &[2, 3], &[0, 1], 100).unwrap();
        assert_eq!(v, vec![2, 3, 4, 2, 3, 4]);
        // a stride-0 view claiming 10^12 elements is refused before allocating
        assert!(materialize(&s, 0, &[1_000_000, 1_000_000], &[0, 0], 1 << 30).is_err());
    }

    /// The f32 tensors built straight from a storage view hold exactly what the stored bytes
    /// convert to, for contiguous, strided and expanded views, and fail as the stored-bytes tensors do.
    #[test]
    fn f32_views_match_materialized_bytes() {
        let vals: Vec<f32> = (0..24).map(|i| i as f32 * 0.37 - 3.0).collect();
        let f32_storage = TensorData::from_f32(vec![24], &vals).bytes;
        let f16_storage: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let i64_storage: Vec<u8> = (0..24i64).flat_map(|v| (v - 7).to_le_bytes()).collect();
        let views: [(usize, &[usize], &[usize]); 5] = [
            (0, &[24], &[1]),
            (3, &[4, 5], &[5, 1]),
            (0, &[4, 6], &[1, 4]),
            (2, &[2, 3], &[0, 1]),
            (0, &[0, 5], &[5, 1]),
        ];
        for (dtype, storage) in [
            (DType::F32, &f32_storage),
            (DType::F16, &f16_storage),
            (DType::I64, &i64_storage),
        ] {
            for &(offset, size, stride) in &views {
                let view = || View {
                    dtype,
                    offset,
                    size: size.to_vec(),
                    stride,
                };
                let bytes = TensorData::from_view(storage, view(), 1 << 20).unwrap();
                let t = F32Tensor::from_view(storage, view(), 1 << 20).unwrap();
                let want = bytes.to_f32().unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&t.data),
                    bits(&want),
                    "{dtype} {offset} {size:?} {stride:?}"
                );
                assert_eq!(t.shape, bytes.shape);
                assert_eq!(t.stored_bytes(), bytes.stored_bytes());
                assert_eq!(t.first_non_finite, None);
            }
            let bad = |size: &[usize], stride: &'static [usize], budget| {
                let view = || View {
                    dtype,
                    offset: 1,
                    size: size.to_vec(),
                    stride,
                };
                let a = TensorData::from_view(storage, view(), budget).unwrap_err();
                let b = F32Tensor::from_view(storage, view(), budget).unwrap_err();
                assert_eq!(a, b);
            };
            bad(&[24], &[1], 1 << 20); // past the end
            bad(&[4], &[1], 3); // over the budget
            bad(&[4, 2], &[1], 1 << 20); // ranks differ
            bad(&[1_000_000, 1_000_000], &[0, 0], 1 << 30); // stride 0, huge
        }
    }
}
