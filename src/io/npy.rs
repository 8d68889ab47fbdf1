//! Reading and writing NumPy `.npy` files (format versions 1.0, 2.0 and 3.0).
//!
//! * Reading accepts little- and big-endian data of the dtypes in [`NpyData`]; arrays stored in
//!   Fortran order are transposed to C order on load, so [`NpyArray::data`] is always C order
//!   (last axis fastest).
//! * Writing always produces a version 1.0 header (version 2.0 if the header would not fit),
//!   little-endian, C order, padded so the data starts on a 64-byte boundary as NumPy does.
//!   The bytes go to a temporary file in the destination directory which is then renamed over
//!   the destination, so a crash never leaves a half-written `.npy` behind.

use crate::io::atomic::write_atomic;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Errors from `.npy` I/O; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: I/O error: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a .npy file (bad magic string)")]
    BadMagic { path: PathBuf },
    #[error("{path}: unsupported .npy format version {major}.{minor}")]
    Version { path: PathBuf, major: u8, minor: u8 },
    #[error("{path}: malformed header field `{field}`: {detail}")]
    Header {
        path: PathBuf,
        field: &'static str,
        detail: String,
    },
    #[error("{path}: unsupported dtype `{descr}`")]
    Dtype { path: PathBuf, descr: String },
    #[error("{path}: data truncated: header promises {expected} bytes, file has {actual}")]
    Truncated {
        path: PathBuf,
        expected: usize,
        actual: usize,
    },
    #[error("{path}: shape {shape:?} holds {expected} elements but {actual} were given")]
    ShapeMismatch {
        path: PathBuf,
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },
}

pub type Result<T> = std::result::Result<T, NpyError>;

crate::error::wrap_into_error!(NpyError);

/// Element storage of an [`NpyArray`], always C order.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    F64(Vec<f64>),
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

/// `$body` for the vector `$v` of whichever variant `$self` is; with `wrap`, the result is put
/// back into that same variant.
macro_rules! for_each_variant {
    ($self:expr, $v:ident => wrap $body:expr) => {
        for_each_variant!(@arms $self, $v, $body, [wrap], F64 F32 F16 U8 I8 U16 I16 U32 I32 U64 I64 Bool)
    };
    ($self:expr, $v:ident => $body:expr) => {
        for_each_variant!(@arms $self, $v, $body, [], F64 F32 F16 U8 I8 U16 I16 U32 I32 U64 I64 Bool)
    };
    (@arms $self:expr, $v:ident, $body:expr, [], $($variant:ident)*) => {
        match $self {
            $(NpyData::$variant($v) => $body,)*
        }
    };
    (@arms $self:expr, $v:ident, $body:expr, [wrap], $($variant:ident)*) => {
        match $self {
            $(NpyData::$variant($v) => NpyData::$variant($body),)*
        }
    };
}

impl NpyData {
    pub fn len(&self) -> usize {
        for_each_variant!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// NumPy dtype string written to the header (`'<f8'`, `'|u1'`, ...).
    pub fn descr(&self) -> &'static str {
        match self {
            NpyData::F64(_) => "<f8",
            NpyData::F32(_) => "<f4",
            NpyData::F16(_) => "<f2",
            NpyData::U8(_) => "|u1",
            NpyData::I8(_) => "|i1",
            NpyData::U16(_) => "<u2",
            NpyData::I16(_) => "<i2",
            NpyData::U32(_) => "<u4",
            NpyData::I32(_) => "<i4",
            NpyData::U64(_) => "<u8",
            NpyData::I64(_) => "<i8",
            NpyData::Bool(_) => "|b1",
        }
    }

    fn elem_size(&self) -> usize {
        match self {
            NpyData::F64(_) | NpyData::U64(_) | NpyData::I64(_) => 8,
            NpyData::F32(_) | NpyData::U32(_) | NpyData::I32(_) => 4,
            NpyData::F16(_) | NpyData::U16(_) | NpyData::I16(_) => 2,
            NpyData::U8(_) | NpyData::I8(_) | NpyData::Bool(_) => 1,
        }
    }

    /// Element `i` as f64 (exact for every type but 64-bit integers beyond 2^53).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            NpyData::F64(v) => v[i],
            NpyData::F32(v) => v[i] as f64,
            NpyData::F16(v) => v[i].to_f64(),
            NpyData::U8(v) => v[i] as f64,
            NpyData::I8(v) => v[i] as f64,
            NpyData::U16(v) => v[i] as f64,
            NpyData::I16(v) => v[i] as f64,
            NpyData::U32(v) => v[i] as f64,
            NpyData::I32(v) => v[i] as f64,
            NpyData::U64(v) => v[i] as f64,
            NpyData::I64(v) => v[i] as f64,
            NpyData::Bool(v) => v[i] as u8 as f64,
        }
    }

    /// Little-endian bytes of the data.
    fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * self.elem_size());
        macro_rules! le {
            ($v:expr) => {
                $v.iter()
                    .for_each(|x| out.extend_from_slice(&x.to_le_bytes()))
            };
        }
        match self {
            NpyData::U8(v) => out.extend_from_slice(v),
            NpyData::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
            NpyData::Bool(v) => out.extend(v.iter().map(|&x| x as u8)),
            NpyData::F64(v) => le!(v),
            NpyData::F32(v) => le!(v),
            NpyData::F16(v) => le!(v),
            NpyData::U16(v) => le!(v),
            NpyData::I16(v) => le!(v),
            NpyData::U32(v) => le!(v),
            NpyData::I32(v) => le!(v),
            NpyData::U64(v) => le!(v),
            NpyData::I64(v) => le!(v),
        }
        out
    }

    /// Reorders elements: `out[i] = self[perm[i]]`.
    fn gather(&self, perm: &[usize]) -> NpyData {
        for_each_variant!(self, v => wrap perm.iter().map(|&p| v[p]).collect())
    }
}

/// An n-dimensional array in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    /// Whether the elements are uint8 (images stored 0–255).
    pub fn is_u8(&self) -> bool {
        matches!(self.data, NpyData::U8(_))
    }

    /// Label maps: integers 0–255 as u8; anything else (fractions, negatives, > 255) is an error.
    pub fn to_u8(&self) -> std::result::Result<Vec<u8>, String> {
        if let NpyData::U8(v) = &self.data {
            return Ok(v.clone());
        }
        self.to_f64()
            .into_iter()
            .map(|x| {
                if x.fract() == 0.0 && (0.0..=255.0).contains(&x) {
                    Ok(x as u8)
                } else {
                    Err(format!("label value {x} is not an integer in 0..=255"))
                }
            })
            .collect()
    }

    pub fn new(shape: Vec<usize>, data: NpyData) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(NpyError::ShapeMismatch {
                path: PathBuf::from("<memory>"),
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(NpyArray { shape, data })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Elements converted to f32 (numeric cast; bool → 0/1).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            NpyData::F32(v) => v.clone(),
            d => (0..d.len()).map(|i| d.get_f64(i) as f32).collect(),
        }
    }

    /// Elements converted to f64 (numeric cast; bool → 0/1).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            NpyData::F64(v) => v.clone(),
            d => (0..d.len()).map(|i| d.get_f64(i)).collect(),
        }
    }
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a `.npy` file.
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray> {
    let path = path.as_ref();
    let limits = crate::io::limits::Limits::current_or_default();
    // The header (at most 4 GiB by format, far less in practice) plus the largest array.
    let max = limits.max_voxels.saturating_mul(8).saturating_add(1 << 20);
    let io = |source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    // The preamble and header first (a stream such as /dev/zero fails here), then only as many
    // bytes as the header's shape needs.
    let mut bytes = Vec::new();
    (&mut file).take(12).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() >= 10 && bytes.starts_with(MAGIC) {
        let header_len = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as u64).saturating_sub(2),
            _ if bytes.len() == 12 => {
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as u64
            }
            _ => 0,
        };
        (&mut file)
            .take(header_len.min(1 << 20))
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let want = match parse_npy(&bytes, path) {
            Err(NpyError::Truncated { expected, .. }) => expected as u64,
            _ => bytes.len() as u64,
        };
        if want > bytes.len() as u64 {
            (&mut file)
                .take(want.min(max.saturating_add(1)) - bytes.len() as u64)
                .read_to_end(&mut bytes)
                .map_err(io)?;
        }
    }
    if bytes.len() as u64 > max {
        return Err(NpyError::Header {
            path: path.to_path_buf(),
            field: "file",
            detail: format!(
                "larger than {max} bytes, the limit for {} elements (MEDSAM_MAX_VOXELS)",
                limits.max_voxels
            ),
        });
    }
    parse_npy(&bytes, path)
}

/// Parses the bytes of a `.npy` file; `path` is only used in error messages.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<NpyArray> {
    let p = || path.to_path_buf();
    let header_err = |field: &'static str, detail: String| NpyError::Header {
        path: p(),
        field,
        detail,
    };
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(NpyError::BadMagic { path: p() });
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(NpyError::Truncated {
                    path: p(),
                    expected: 12,
                    actual: bytes.len(),
                });
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        _ => {
            return Err(NpyError::Version {
                path: p(),
                major,
                minor,
            })
        }
    };
    let data_start = header_start + header_len;
    if bytes.len() < data_start {
        return Err(NpyError::Truncated {
            path: p(),
            expected: data_start,
            actual: bytes.len(),
        });
    }
    let header = std::str::from_utf8(&bytes[header_start..data_start])
        .map_err(|e| header_err("header", format!("not UTF-8: {e}")))?;
    let descr = dict_value(header, "descr").ok_or_else(|| header_err("descr", "missing".into()))?;
    let descr = descr
        .trim()
        .trim_matches(|c| c == '\'' || c == '"')
        .to_string();
    let fortran = match dict_value(header, "fortran_order").map(str::trim) {
        Some("False") => false,
        Some("True") => true,
        other => {
            return Err(header_err(
                "fortran_order",
                format!("expected True or False, got {other:?}"),
            ))
        }
    };
    let shape_str =
        dict_value(header, "shape").ok_or_else(|| header_err("shape", "missing".into()))?;
    let shape = parse_shape(shape_str).map_err(|detail| header_err("shape", detail))?;
    let max_voxels = crate::io::limits::Limits::current_or_default().max_voxels;
    let n = crate::io::limits::checked_product(&shape)
        .filter(|&n| n as u64 <= max_voxels)
        .ok_or_else(|| {
            header_err(
                "shape",
                format!("{shape:?} holds more than {max_voxels} elements (MEDSAM_MAX_VOXELS)"),
            )
        })?;

    let (endian, kind) = descr.split_at(1.min(descr.len()));
    let big = match endian {
        "<" | "|" | "=" => false,
        ">" => true,
        _ => return Err(NpyError::Dtype { path: p(), descr }),
    };
    let esize = match kind {
        "f8" | "u8" | "i8" => 8,
        "f4" | "u4" | "i4" => 4,
        "f2" | "u2" | "i2" => 2,
        "u1" | "i1" | "b1" => 1,
        _ => return Err(NpyError::Dtype { path: p(), descr }),
    };
    let payload = &bytes[data_start..];
    let needed = n.saturating_mul(esize);
    if payload.len() < needed {
        return Err(NpyError::Truncated {
            path: p(),
            expected: data_start + needed,
            actual: bytes.len(),
        });
    }
    let payload = &payload[..needed];
    macro_rules! decode {
        ($t:ty, $n:expr, $variant:ident) => {
            NpyData::$variant(
                payload
                    .chunks_exact($n)
                    .map(|c| {
                        let arr: [u8; $n] = c.try_into().unwrap();
                        if big {
                            <$t>::from_be_bytes(arr)
                        } else {
                            <$t>::from_le_bytes(arr)
                        }
                    })
                    .collect(),
            )
        };
    }
    let data = match kind {
        "f8" => decode!(f64, 8, F64),
        "f4" => decode!(f32, 4, F32),
        "f2" => decode!(half::f16, 2, F16),
        "u8" => decode!(u64, 8, U64),
        "i8" => decode!(i64, 8, I64),
        "u4" => decode!(u32, 4, U32),
        "i4" => decode!(i32, 4, I32),
        "u2" => decode!(u16, 2, U16),
        "i2" => decode!(i16, 2, I16),
        "u1" => NpyData::U8(payload.to_vec()),
        "i1" => NpyData::I8(payload.iter().map(|&b| b as i8).collect()),
        "b1" => NpyData::Bool(payload.iter().map(|&b| b != 0).collect()),
        _ => unreachable!(),
    };
    let data = if fortran && shape.len() > 1 {
        data.gather(&fortran_to_c_perm(&shape))
    } else {
        data
    };
    Ok(NpyArray { shape, data })
}

/// For a Fortran-ordered buffer of `shape`, the source index of every C-order position.
fn fortran_to_c_perm(shape: &[usize]) -> Vec<usize> {
    let n: usize = shape.iter().product();
    let nd = shape.len();
    // Fortran strides: first axis fastest.
    let mut fstride = vec![1usize; nd];
    for a in 1..nd {
        fstride[a] = fstride[a - 1] * shape[a - 1];
    }
    let mut perm = Vec::with_capacity(n);
    let mut idx = vec![0usize; nd];
    for _ in 0..n {
        perm.push(idx.iter().zip(&fstride).map(|(i, s)| i * s).sum());
        for a in (0..nd).rev() {
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    perm
}

/// Raw text of the value of `'key'` in a Python dict literal (up to the next top-level comma).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pats = [format!("'{key}'"), format!("\"{key}\"")];
    let pos = pats
        .iter()
        .find_map(|p| header.find(p.as_str()).map(|i| i + p.len()))?;
    let rest = header[pos..].trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

fn parse_shape(s: &str) -> std::result::Result<Vec<usize>, String> {
    let s = s.trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a tuple, got `{s}`"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|e| format!("bad dimension `{t}`: {e}"))
        })
        .collect()
}

/// Builds the full preamble (magic, version, length, header) for `descr`/`shape`.
fn build_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_txt = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    for (major, len_bytes) in [(1u8, 2usize), (2u8, 4usize)] {
        let pre = 6 + 2 + len_bytes;
        let unpadded = pre + dict.len() + 1; // + '\n'
        let total = unpadded.div_ceil(64) * 64;
        let hlen = total - pre;
        if major == 1 && hlen > u16::MAX as usize {
            continue;
        }
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(MAGIC);
        out.push(major);
        out.push(0);
        if major == 1 {
            out.extend_from_slice(&(hlen as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(hlen as u32).to_le_bytes());
        }
        out.extend_from_slice(dict.as_bytes());
        out.resize(total - 1, b' ');
        out.push(b'\n');
        return out;
    }
    unreachable!("a version 2.0 header always fits")
}

fn io_error(path: &Path, source: std::io::Error) -> NpyError {
    NpyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes an array (little-endian, C order) to `path` atomically.
pub fn write_npy(path: impl AsRef<Path>, array: &NpyArray) -> Result<()> {
    let d = &array.data;
    write_raw(
        path.as_ref(),
        d.descr(),
        &array.shape,
        d.len(),
        &d.to_le_bytes(),
    )
}

fn write_raw(path: &Path, descr: &str, shape: &[usize], n: usize, body: &[u8]) -> Result<()> {
    let expected: usize = shape.iter().product();
    if expected != n {
        return Err(NpyError::ShapeMismatch {
            path: path.to_path_buf(),
            shape: shape.to_vec(),
            expected,
            actual: n,
        });
    }
    let header = build_header(descr, shape);
    write_atomic(path, io_error, |w| {
        w.write_all(&header).map_err(|e| io_error(path, e))?;
        w.write_all(body).map_err(|e| io_error(path, e))
    })
}

/// Writes f64 data of `shape` (C order) without copying it into an [`NpyArray`].
pub fn write_npy_f64(path: impl AsRef<Path>, shape: &[usize], data: &[f64]) -> Result<()> {
    let body: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_raw(path.as_ref(), "<f8", shape, data.len(), &body)
}

/// Writes f32 data of `shape` (C order).
pub fn write_npy_f32(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<()> {
    let body: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_raw(path.as_ref(), "<f4", shape, data.len(), &body)
}

/// The bytes of a `.npy` file holding u8 data of `shape` (C order), e.g. for an `.npz` member;
/// the caller has checked that `data` has `shape`'s element count.
pub fn encode_npy_u8(shape: &[usize], data: &[u8]) -> Vec<u8> {
    let mut bytes = build_header("|u1", shape);
    bytes.extend_from_slice(data);
    bytes
}

/// The bytes of a `.npy` file holding `array` (little-endian, C order), e.g. for an `.npz` member.
pub fn encode_npy(array: &NpyArray) -> Vec<u8> {
    let mut bytes = build_header(array.data.descr(), &array.shape);
    bytes.extend_from_slice(&array.data.to_le_bytes());
    bytes
}

/// Writes u8 data of `shape` (C order).
pub fn write_npy_u8(path: impl AsRef<Path>, shape: &[usize], data: &[u8]) -> Result<()> {
    write_raw(path.as_ref(), "|u1", shape, data.len(), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_64_aligned_and_parses() {
        let h = build_header("<f8", &[3, 4, 5]);
        assert_eq!(h.len() % 64, 0);
        assert_eq!(*h.last().unwrap(), b'\n');
        let mut bytes = h.clone();
        bytes.extend(std::iter::repeat_n(0u8, 60 * 8));
        let a = parse_npy(&bytes, Path::new("x")).unwrap();
        assert_eq!(a.shape, vec![3, 4, 5]);
    }

    #[test]
    fn fortran_perm_2d() {
        // shape (2,3) stored F order: memory = a00 a10 a01 a11 a02 a12
        assert_eq!(fortran_to_c_perm(&[2, 3]), vec![0, 2, 4, 1, 3, 5]);
    }

    #[test]
    fn scalar_and_1d_shapes() {
        assert_eq!(parse_shape("()").unwrap(), Vec::<usize>::new());
        assert_eq!(parse_shape("(7,)").unwrap(), vec![7]);
        assert!(parse_shape("[7]").is_err());
    }
}
