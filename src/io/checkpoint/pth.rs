//! PyTorch zip checkpoints (`torch.save` format since torch 1.6).
//!
//! Layout: `<name>/data.pkl` (pickle), `<name>/byteorder`, `<name>/data/<key>`
//! (raw storage bytes), `<name>/version`, optionally `<name>/.format_version`,
//! `<name>/.storage_alignment`, `<name>/.data/serialization_id`.
//!
//! Loading maps the file into memory when it can (not with `MEDSAM_NO_MMAP=1`): a storage record
//! that is stored (not deflated) in a little-endian archive — what `torch.save` writes — is then
//! sliced out of the mapping instead of being read into a growing buffer first. [`load_pth`]
//! copies it once, straight into its tensor. The model loaders' reader (`load_pth_f32`) uses a
//! contiguous, 4-byte aligned f32 tensor of such a record in place — the model's weight is a
//! window into the mapping, which then lives as long as the weight — and converts any other one
//! to f32 in that one copy; either way it looks for NaN/infinity. Mapped records skip the zip CRC
//! check (as `torch.load(mmap=True)` does); sizes, bounds and limits are checked as for read
//! records. Deflated records, big-endian archives and files that cannot be mapped are read as
//! before. As with any mapped file (and `torch.load(mmap=True)`), another process truncating the
//! checkpoint while it loads — or, for weights used in place, while they are in use — can crash
//! this one (SIGBUS); replacing the file by a rename is safe.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

pub use super::pickle::Limits;
use super::pickle::{pickle_value, unpickle, StorageBytes, StorageSource, TensorOut};
use super::{CheckpointError, DType, F32Tensor, Result, Tree, Value};
use crate::io::atomic::write_atomic;

/// Loads a torch zip checkpoint with default [`Limits`].
pub fn load_pth(path: impl AsRef<Path>) -> Result<Value> {
    load_pth_with_limits(path, &Limits::default())
}

/// Loads a torch zip checkpoint. `limits.max_tensor_bytes` is further capped at
/// 4 × the declared size of the archive's data records + 1 GiB.
pub fn load_pth_with_limits(path: impl AsRef<Path>, limits: &Limits) -> Result<Value> {
    load_pth_as(path.as_ref(), limits)
}

/// [`load_pth`] with every tensor converted to f32 as it is read (NaN/infinity noted), for the
/// model loaders: a stored f32 record is used in place from the mapping, anything else is copied
/// once from the file into the buffer the model keeps.
pub(crate) fn load_pth_f32(path: &Path) -> Result<Tree<F32Tensor>> {
    load_pth_as(path, &Limits::default())
}

/// [`load_pth_with_limits`] with tensors of type `T`.
fn load_pth_as<T: TensorOut>(path: &Path, limits: &Limits) -> Result<Tree<T>> {
    let mut file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    let mut magic = [0u8; 4];
    let n = file
        .read(&mut magic)
        .map_err(|e| CheckpointError::io(path, e))?;
    if n >= 2 && magic[0] == 0x80 && magic[1] <= 5 {
        return Err(CheckpointError::format(
            path,
            "legacy (non-zip) torch serialization format is not supported; \
             re-save it with torch >= 1.6 (torch.save(torch.load(p), p))",
        ));
    }
    if n < 4 || magic != *b"PK\x03\x04" {
        if n >= 4 && magic == *b"PK\x05\x06" {
            return Err(CheckpointError::format(path, "empty zip archive"));
        }
        return Err(CheckpointError::format(
            path,
            "not a torch checkpoint (no zip signature at the start of the file)",
        ));
    }
    // SAFETY: the mapping is private and only read; it lives until the value is built, and as
    // long as any tensor used in place from it. See the module doc for a file changed underneath.
    let map = (!crate::backend::mmap_disabled())
        .then(|| unsafe { memmap2::Mmap::map(&file) }.ok())
        .flatten();
    match map.map(Arc::new) {
        Some(map) => load_zip(path, std::io::Cursor::new(&map[..]), Some(&map), limits),
        None => {
            file.rewind().map_err(|e| CheckpointError::io(path, e))?;
            load_zip(path, file, None, limits)
        }
    }
}

/// [`load_pth_with_limits`] on an opened archive; `mapped` is the whole file when it is mapped.
fn load_zip<R: Read + Seek, T: TensorOut>(
    path: &Path,
    reader: R,
    mapped: Option<&Arc<memmap2::Mmap>>,
    limits: &Limits,
) -> Result<Tree<T>> {
    let zip_err = |e: zip::result::ZipError| CheckpointError::Zip {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    let mut zip = zip::ZipArchive::new(reader).map_err(zip_err)?;

    // Find `<prefix>data.pkl` where prefix is a single top-level folder.
    let pkl_name = zip
        .file_names()
        .filter(|n| {
            n.strip_suffix("data.pkl")
                .is_some_and(|p| p.is_empty() || (p.ends_with('/') && p.matches('/').count() == 1))
        })
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .ok_or_else(|| CheckpointError::format(path, "archive has no `data.pkl` record"))?;
    let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_string();

    // data.pkl and the small records are read whole, up to this many bytes.
    const MAX_RECORD: usize = 256 << 20;
    let read_record = |zip: &mut zip::ZipArchive<R>, name: &str| -> Result<Vec<u8>> {
        let f = zip.by_name(name).map_err(|e| CheckpointError::Zip {
            path: path.to_path_buf(),
            msg: format!("record `{name}`: {e}"),
        })?;
        let size = f.size();
        read_member(path, f, size, name, MAX_RECORD)
    };

    let byteorder_name = format!("{prefix}byteorder");
    let big_endian = if zip.index_for_name(&byteorder_name).is_some() {
        let b = read_record(&mut zip, &byteorder_name)?;
        match b.as_slice() {
            b"little" => false,
            b"big" => true,
            other => {
                return Err(CheckpointError::field(
                    path,
                    byteorder_name,
                    format!(
                        "unknown byte order {:?}",
                        String::from_utf8_lossy(&other[..other.len().min(32)])
                    ),
                ))
            }
        }
    } else {
        false
    };

    let data_prefix = format!("{prefix}data/");
    let mut declared: u64 = 0;
    for i in 0..zip.len() {
        if let Ok(f) = zip.by_index_raw(i) {
            if f.name().starts_with(&data_prefix) {
                declared = declared.saturating_add(f.size());
            }
        }
    }
    let mut limits = limits.clone();
    let cap = declared
        .saturating_mul(4)
        .saturating_add(1 << 30)
        .min(usize::MAX as u64) as usize;
    limits.max_tensor_bytes = limits.max_tensor_bytes.min(cap);

    let pkl = read_record(&mut zip, &pkl_name)?;
    let source = ZipStorages {
        path,
        zip,
        data_prefix,
        big_endian,
        cache: HashMap::new(),
        mapped,
        mapped_keys: std::collections::HashSet::new(),
        loaded: 0,
    };
    unpickle(path, &pkl, source, &limits)
}

struct ZipStorages<'a, R> {
    path: &'a Path,
    zip: zip::ZipArchive<R>,
    data_prefix: String,
    big_endian: bool,
    cache: HashMap<String, Rc<Vec<u8>>>,
    /// The whole file, when it is memory-mapped.
    mapped: Option<&'a Arc<memmap2::Mmap>>,
    /// Mapped storages already counted in `loaded`.
    mapped_keys: std::collections::HashSet<String>,
    loaded: usize,
}

/// The error for a record over the byte limit.
fn too_big(path: &Path, name: &str, n: String, max: usize) -> CheckpointError {
    CheckpointError::format(
        path,
        format!(
            "record `{name}` holds {n} bytes, over the limit of {max} bytes \
             (MEDSAM_MAX_TENSOR_BYTES)"
        ),
    )
}

/// Reads one zip member, at most `max` bytes: the size its header claims is checked first
/// and memory is reserved only as bytes arrive (a header may claim GiBs; a deflated member may
/// inflate to more than its header says).
fn read_member(path: &Path, f: impl Read, size: u64, name: &str, max: usize) -> Result<Vec<u8>> {
    let too_big = |n: String| too_big(path, name, n, max);
    if size > max as u64 {
        return Err(too_big(size.to_string()));
    }
    let mut buf = Vec::new();
    f.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CheckpointError::Zip {
            path: path.to_path_buf(),
            msg: format!("record `{name}`: {e}"),
        })?;
    if buf.len() > max {
        return Err(too_big(format!("more than {max}")));
    }
    Ok(buf)
}

/// Checks a storage's byte count against its element size.
fn check_elements(path: &Path, name: &str, len: usize, dtype: DType) -> Result<()> {
    let es = dtype.size();
    if len.is_multiple_of(es) {
        return Ok(());
    }
    Err(CheckpointError::format(
        path,
        format!(
            "storage record `{name}` has {len} bytes, not a multiple of the {dtype} element size {es}"
        ),
    ))
}

impl<R: Read + Seek> ZipStorages<'_, R> {
    /// The record's bytes inside the mapping, when it is stored uncompressed in a
    /// little-endian archive (`None`: read it instead).
    fn mapped_slice(
        &mut self,
        name: &str,
        dtype: DType,
        max_bytes: usize,
    ) -> Result<Option<(usize, usize)>> {
        let Some(map) = self.mapped.filter(|_| !self.big_endian) else {
            return Ok(None);
        };
        let path = self.path;
        let Ok(f) = self.zip.by_name(name) else {
            return Ok(None);
        };
        if f.compression() != zip::CompressionMethod::Stored {
            return Ok(None);
        }
        let (start, size) = (f.data_start(), f.size());
        if size > max_bytes as u64 {
            return Err(too_big(path, name, size.to_string(), max_bytes));
        }
        let end = start
            .checked_add(size)
            .filter(|&e| e <= map.len() as u64)
            .ok_or_else(|| {
                CheckpointError::format(
                    path,
                    format!(
                        "record `{name}` ({size} bytes at offset {start}) runs past the end of the {}-byte file",
                        map.len()
                    ),
                )
            })?;
        check_elements(path, name, size as usize, dtype)?;
        Ok(Some((start as usize, end as usize)))
    }
}

impl<R: Read + Seek> StorageSource for ZipStorages<'_, R> {
    fn loaded_bytes(&self) -> usize {
        self.loaded
    }

    fn load(&mut self, key: &str, dtype: DType, max_bytes: usize) -> Result<StorageBytes<'_>> {
        if let Some(b) = self.cache.get(key) {
            return Ok(StorageBytes::Owned(b.clone()));
        }
        let name = format!("{}{}", self.data_prefix, key);
        if let Some((start, end)) = self.mapped_slice(&name, dtype, max_bytes)? {
            if self.mapped_keys.insert(key.to_string()) {
                self.loaded += end - start;
            }
            if let Some(map) = self.mapped {
                return Ok(StorageBytes::Mapped { map, start, end });
            }
        }
        let path = self.path;
        let f = self.zip.by_name(&name).map_err(|e| match e {
            zip::result::ZipError::FileNotFound => {
                CheckpointError::format(path, format!("storage record `{name}` is missing"))
            }
            e => CheckpointError::Zip {
                path: path.to_path_buf(),
                msg: format!("record `{name}`: {e}"),
            },
        })?;
        let size = f.size();
        let mut buf = read_member(path, f, size, &name, max_bytes)?;
        self.loaded += buf.len();
        check_elements(path, &name, buf.len(), dtype)?;
        let es = dtype.size();
        if self.big_endian && es > 1 {
            for c in buf.chunks_exact_mut(es) {
                c.reverse();
            }
        }
        let rc = Rc::new(buf);
        self.cache.insert(key.to_string(), rc.clone());
        Ok(StorageBytes::Owned(rc))
    }
}

/// Writes `value` as a torch zip checkpoint loadable with
/// `torch.load(path, weights_only=True)`.
///
/// Dicts whose keys are all strings and values all tensors are written as
/// `collections.OrderedDict` (like `state_dict()`), other dicts as `dict`.
/// Every tensor gets its own storage. The file is written to a temporary file
/// in the same directory and renamed into place.
pub fn save_pth(path: impl AsRef<Path>, value: &Value) -> Result<()> {
    let path = path.as_ref();
    let archive = archive_name(path);
    let (pkl, storages) = pickle_value(value);
    let mut serial_hash = Fnv::default();
    serial_hash.update(&pkl);
    write_atomic(path, CheckpointError::io, |w| {
        let mut zw = TorchZipWriter::new(w, path);
        zw.record(&format!("{archive}/data.pkl"), &pkl)?;
        zw.record(&format!("{archive}/.format_version"), b"1")?;
        zw.record(&format!("{archive}/.storage_alignment"), b"64")?;
        zw.record(&format!("{archive}/byteorder"), b"little")?;
        for (i, t) in storages.iter().enumerate() {
            serial_hash.update(&t.bytes[..t.bytes.len().min(4096)]);
            let expected = t.numel() * t.dtype.size();
            if t.bytes.len() != expected {
                return Err(CheckpointError::format(
                    path,
                    format!(
                        "tensor #{i} ({} {:?}) has {} bytes, expected {expected}",
                        t.dtype,
                        t.shape,
                        t.bytes.len()
                    ),
                ));
            }
            zw.record(&format!("{archive}/data/{i}"), &t.bytes)?;
        }
        zw.record(&format!("{archive}/version"), b"3\n")?;
        let id = serial_hash.serialization_id();
        zw.record(&format!("{archive}/.data/serialization_id"), id.as_bytes())?;
        let w = zw.finish()?;
        w.flush().map_err(|e| CheckpointError::io(path, e))
    })
}

/// torch uses the file stem as the archive folder name.
fn archive_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !stem.is_empty()
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        stem
    } else {
        "archive".to_string()
    }
}

#[derive(Clone, Copy)]
struct Fnv(u64, u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf29ce484222325, 0x84222325cbf29ce4)
    }
}

impl Fnv {
    fn update(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x100000001b3);
            self.1 = (self.1 ^ x as u64).wrapping_mul(0x100000001b3 ^ 0x5bd1e995);
        }
    }
    /// 40 decimal digits, like torch's serialization ids.
    fn serialization_id(&self) -> String {
        format!(
            "{:020}{:020}",
            self.0 % 10u64.pow(19),
            self.1 % 10u64.pow(19)
        )
    }
}

const ALIGNMENT: u64 = 64;

struct CentralEntry {
    name: String,
    crc: u32,
    size: u32,
    offset: u32,
    flags: u16,
}

/// A zip writer that reproduces the record layout of torch's
/// `PyTorchStreamWriter` (miniz): stored entries, zero timestamps, `FB` padding
/// extra field aligning each payload to 64 bytes, data descriptors after
/// non-empty payloads, and zip64 end-of-central-directory records.
/// Archives of 4 GiB or more are refused.
struct TorchZipWriter<'p, W: Write> {
    w: W,
    path: &'p Path,
    cursor: u64,
    entries: Vec<CentralEntry>,
}

impl<'p, W: Write> TorchZipWriter<'p, W> {
    fn new(w: W, path: &'p Path) -> Self {
        TorchZipWriter {
            w,
            path,
            cursor: 0,
            entries: Vec::new(),
        }
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w
            .write_all(b)
            .map_err(|e| CheckpointError::io(self.path, e))?;
        self.cursor += b.len() as u64;
        Ok(())
    }

    fn too_big(&self) -> CheckpointError {
        CheckpointError::format(
            self.path,
            "checkpoints of 4 GiB or more are not supported by this writer",
        )
    }

    fn record(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let offset = self.cursor;
        if offset + data.len() as u64 + 1024 >= u32::MAX as u64 {
            return Err(self.too_big());
        }
        let start = offset + 30 + name.len() as u64 + 4;
        let pad = (ALIGNMENT - start % ALIGNMENT) % ALIGNMENT;
        let crc = crc32(data);
        let flags: u16 = if data.is_empty() { 0x0800 } else { 0x0808 };
        let mut h = Vec::with_capacity(30 + name.len() + 4 + pad as usize);
        h.extend_from_slice(&0x04034b50u32.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // version needed
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // method: stored
        h.extend_from_slice(&0u16.to_le_bytes()); // time
        h.extend_from_slice(&0u16.to_le_bytes()); // date
        h.extend_from_slice(&0u32.to_le_bytes()); // crc (in descriptor)
        h.extend_from_slice(&0u32.to_le_bytes()); // compressed size
        h.extend_from_slice(&0u32.to_le_bytes()); // uncompressed size
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&(4 + pad as u16).to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(b"FB");
        h.extend_from_slice(&(pad as u16).to_le_bytes());
        h.resize(h.len() + pad as usize, b'Z');
        self.put(&h)?;
        self.put(data)?;
        if !data.is_empty() {
            let mut d = Vec::with_capacity(16);
            d.extend_from_slice(&0x08074b50u32.to_le_bytes());
            d.extend_from_slice(&crc.to_le_bytes());
            d.extend_from_slice(&(data.len() as u32).to_le_bytes());
            d.extend_from_slice(&(data.len() as u32).to_le_bytes());
            self.put(&d)?;
        }
        self.entries.push(CentralEntry {
            name: name.to_string(),
            crc,
            size: data.len() as u32,
            offset: offset as u32,
            flags,
        });
        Ok(())
    }

    fn finish(mut self) -> Result<W> {
        let cd_start = self.cursor;
        let entries = std::mem::take(&mut self.entries);
        for e in &entries {
            let mut c = Vec::with_capacity(46 + e.name.len());
            c.extend_from_slice(&0x02014b50u32.to_le_bytes());
            c.extend_from_slice(&0u16.to_le_bytes()); // version made by
            c.extend_from_slice(&0u16.to_le_bytes()); // version needed
            c.extend_from_slice(&e.flags.to_le_bytes());
            c.extend_from_slice(&0u16.to_le_bytes()); // method
            c.extend_from_slice(&0u16.to_le_bytes()); // time
            c.extend_from_slice(&0u16.to_le_bytes()); // date
            c.extend_from_slice(&e.crc.to_le_bytes());
            c.extend_from_slice(&e.size.to_le_bytes());
            c.extend_from_slice(&e.size.to_le_bytes());
            c.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            c.extend_from_slice(&0u16.to_le_bytes()); // extra
            c.extend_from_slice(&0u16.to_le_bytes()); // comment
            c.extend_from_slice(&0u16.to_le_bytes()); // disk
            c.extend_from_slice(&0u16.to_le_bytes()); // internal attrs
            c.extend_from_slice(&0u32.to_le_bytes()); // external attrs
            c.extend_from_slice(&e.offset.to_le_bytes());
            c.extend_from_slice(e.name.as_bytes());
            self.put(&c)?;
        }
        let cd_size = self.cursor - cd_start;
        let zip64_eocd = self.cursor;
        if zip64_eocd + 128 >= u32::MAX as u64 {
            return Err(self.too_big());
        }
        let n = entries.len() as u64;
        let mut t = Vec::with_capacity(56 + 20 + 22);
        // zip64 end of central directory record
        t.extend_from_slice(&0x06064b50u32.to_le_bytes());
        t.extend_from_slice(&44u64.to_le_bytes());
        t.extend_from_slice(&0x031eu16.to_le_bytes()); // made by: unix, 3.0
        t.extend_from_slice(&0x002du16.to_le_bytes()); // needed: 4.5
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&n.to_le_bytes());
        t.extend_from_slice(&n.to_le_bytes());
        t.extend_from_slice(&cd_size.to_le_bytes());
        t.extend_from_slice(&cd_start.to_le_bytes());
        // zip64 end of central directory locator
        t.extend_from_slice(&0x07064b50u32.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&zip64_eocd.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        // end of central directory
        t.extend_from_slice(&0x06054b50u32.to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&(n.min(0xffff) as u16).to_le_bytes());
        t.extend_from_slice(&(n.min(0xffff) as u16).to_le_bytes());
        t.extend_from_slice(&(cd_size as u32).to_le_bytes());
        t.extend_from_slice(&(cd_start as u32).to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes());
        self.put(&t)?;
        Ok(self.w)
    }
}

fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[[u32; 256]; 4]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [[0u32; 256]; 4];
        for i in 0..256u32 {
            let mut c = i;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb88320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            t[0][i as usize] = c;
        }
        for i in 0..256 {
            for k in 1..4 {
                let p = t[k - 1][i];
                t[k][i] = (p >> 8) ^ t[0][(p & 0xff) as usize];
            }
        }
        t
    });
    let mut c = !0u32;
    let mut chunks = data.chunks_exact(4);
    for ch in &mut chunks {
        let x = c ^ u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]);
        c = t[3][(x & 0xff) as usize]
            ^ t[2][((x >> 8) & 0xff) as usize]
            ^ t[1][((x >> 16) & 0xff) as usize]
            ^ t[0][(x >> 24) as usize];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf43926);
        assert_eq!(crc32(b"little"), 0x19e33d85);
    }
}
