//! `.npy` read/write (format versions 1–3). Reading accepts the dtypes MedSAM's data uses (f64,
//! f32, u8) and the other common numeric ones, either byte order, C or Fortran order (the latter
//! is transposed to C order). Writing goes to a temp file in the target directory, then renames,
//! so a reader never sees a half-written array.

use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a .npy file ({detail})")]
    Format { path: String, detail: String },
    #[error("{path}: unsupported dtype '{descr}'")]
    Dtype { path: String, descr: String },
    #[error("{path}: {detail}")]
    Shape { path: String, detail: String },
}

/// The element data of an array, in C order.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    F64(Vec<f64>),
    F32(Vec<f32>),
    U8(Vec<u8>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I16(Vec<i16>),
    U16(Vec<u16>),
    Bool(Vec<bool>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    pub fn is_u8(&self) -> bool {
        matches!(self.data, NpyData::U8(_))
    }
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Every element as f32 (values, not rescaled).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            NpyData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::F32(v) => v.clone(),
            NpyData::U8(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I16(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U16(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::Bool(v) => v.iter().map(|&x| x as u8 as f32).collect(),
        }
    }
    /// Every element as f64.
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            NpyData::F64(v) => v.clone(),
            _ => self.to_f32().into_iter().map(|x| x as f64).collect(),
        }
    }
    /// Label maps: integers 0–255 as u8; anything else (fractions, negatives, > 255) is an error.
    pub fn to_u8(&self) -> Result<Vec<u8>, String> {
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
}

fn fmt_err(path: &Path, detail: impl Into<String>) -> NpyError {
    NpyError::Format { path: path.display().to_string(), detail: detail.into() }
}

/// A value of the header dict, as text: `'descr': '<f8'` → `<f8`.
fn header_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}']).unwrap_or(rest.len()) };
    Some(rest[..end].trim().trim_matches('\''))
}

fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    inner.split(',').map(str::trim).filter(|t| !t.is_empty()).map(|t| t.parse().ok()).collect()
}

/// Reverses the axes order of a Fortran-ordered buffer into C order.
fn fortran_to_c<T: Copy>(v: Vec<T>, shape: &[usize]) -> Vec<T> {
    let n = v.len();
    if shape.len() < 2 {
        return v;
    }
    let mut out = Vec::with_capacity(n);
    let nd = shape.len();
    let mut idx = vec![0usize; nd];
    for _ in 0..n {
        // C-order index → Fortran offset.
        let (mut off, mut stride) = (0, 1);
        for d in 0..nd {
            off += idx[d] * stride;
            stride *= shape[d];
        }
        out.push(v[off]);
        for d in (0..nd).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

macro_rules! decode {
    ($bytes:expr, $t:ty, $n:expr, $big:expr) => {{
        const W: usize = std::mem::size_of::<$t>();
        $bytes[..$n * W]
            .chunks_exact(W)
            .map(|c| {
                let a: [u8; W] = c.try_into().expect("width");
                if $big {
                    <$t>::from_be_bytes(a)
                } else {
                    <$t>::from_le_bytes(a)
                }
            })
            .collect::<Vec<$t>>()
    }};
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<NpyArray, NpyError> {
    let bytes = std::fs::read(path).map_err(|e| NpyError::Io { path: path.display().to_string(), source: e })?;
    parse_npy(&bytes, path)
}

/// Parses `.npy` bytes; `path` names the source in errors.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<NpyArray, NpyError> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(fmt_err(path, "missing the \\x93NUMPY magic"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(fmt_err(path, format!("unknown format version {v}"))),
    };
    let header = bytes.get(start..start + hlen).ok_or_else(|| fmt_err(path, "truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| fmt_err(path, "header is not text"))?;
    let descr = header_field(header, "descr").ok_or_else(|| fmt_err(path, "header has no 'descr'"))?.to_string();
    let fortran = header_field(header, "fortran_order").ok_or_else(|| fmt_err(path, "header has no 'fortran_order'"))? == "True";
    let shape = header_field(header, "shape").and_then(parse_shape).ok_or_else(|| fmt_err(path, "header has no valid 'shape'"))?;
    let n: usize = shape.iter().product();
    let body = &bytes[start + hlen..];
    let big = descr.starts_with('>');
    let kind = descr.trim_start_matches(['<', '>', '|', '=']);
    let width = kind[1..].parse::<usize>().unwrap_or(0);
    if body.len() < n * width.max(1) {
        return Err(NpyError::Shape {
            path: path.display().to_string(),
            detail: format!("truncated data: shape {shape:?} needs {} bytes, file has {}", n * width, body.len()),
        });
    }
    let dtype_err = || NpyError::Dtype { path: path.display().to_string(), descr: descr.clone() };
    let mut data = match kind {
        "f8" => NpyData::F64(decode!(body, f64, n, big)),
        "f4" => NpyData::F32(decode!(body, f32, n, big)),
        "u1" => NpyData::U8(body[..n].to_vec()),
        "i8" => NpyData::I64(decode!(body, i64, n, big)),
        "i4" => NpyData::I32(decode!(body, i32, n, big)),
        "i2" => NpyData::I16(decode!(body, i16, n, big)),
        "u2" => NpyData::U16(decode!(body, u16, n, big)),
        "i1" => NpyData::I16(body[..n].iter().map(|&b| b as i8 as i16).collect()),
        "b1" => NpyData::Bool(body[..n].iter().map(|&b| b != 0).collect()),
        _ => return Err(dtype_err()),
    };
    if fortran {
        data = match data {
            NpyData::F64(v) => NpyData::F64(fortran_to_c(v, &shape)),
            NpyData::F32(v) => NpyData::F32(fortran_to_c(v, &shape)),
            NpyData::U8(v) => NpyData::U8(fortran_to_c(v, &shape)),
            NpyData::I64(v) => NpyData::I64(fortran_to_c(v, &shape)),
            NpyData::I32(v) => NpyData::I32(fortran_to_c(v, &shape)),
            NpyData::I16(v) => NpyData::I16(fortran_to_c(v, &shape)),
            NpyData::U16(v) => NpyData::U16(fortran_to_c(v, &shape)),
            NpyData::Bool(v) => NpyData::Bool(fortran_to_c(v, &shape)),
        };
    }
    Ok(NpyArray { shape, data })
}

/// The `.npy` bytes of a C-order array (format 1.0, header padded to 64 bytes as numpy does).
fn encode(descr: &str, shape: &[usize], body: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if shape.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + body.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

/// Writes `bytes` to `path` through a temp file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NpyError> {
    let io = |e| NpyError::Io { path: path.display().to_string(), source: e };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

fn check_len(path: &Path, shape: &[usize], len: usize) -> Result<(), NpyError> {
    let n: usize = shape.iter().product();
    if n != len {
        return Err(NpyError::Shape { path: path.display().to_string(), detail: format!("{len} values for shape {shape:?}") });
    }
    Ok(())
}

pub fn write_npy_f64(path: &Path, shape: &[usize], data: &[f64]) -> Result<(), NpyError> {
    check_len(path, shape, data.len())?;
    let body: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_atomic(path, &encode("<f8", shape, &body))
}

pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    check_len(path, shape, data.len())?;
    let body: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_atomic(path, &encode("<f4", shape, &body))
}

pub fn write_npy_u8(path: &Path, shape: &[usize], data: &[u8]) -> Result<(), NpyError> {
    check_len(path, shape, data.len())?;
    write_atomic(path, &encode("|u1", shape, data))
}
