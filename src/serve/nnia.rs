//! The `NNIA` array encoding of the nnInteractive v2 protocol (`serialization.py` of
//! `nninteractive-client`): `"NNIA"`, version 1, codec id (1 ZSTD, 2 LZ4), ndim, dtype-name
//! length, the numpy dtype name ("uint8", "float32", …), `ndim` int64 little-endian dims, then
//! `nchunks` (u32) and per chunk `ulen` (u64), `clen` (u64) and a blosc2 chunk. Arrays are
//! C-ordered and little-endian.

use super::blosc2;

/// Element types the protocol carries (numpy names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    F32,
    F64,
}

impl DType {
    pub fn parse(name: &str) -> Option<DType> {
        Some(match name {
            "bool" => DType::Bool,
            "uint8" => DType::U8,
            "int8" => DType::I8,
            "uint16" => DType::U16,
            "int16" => DType::I16,
            "uint32" => DType::U32,
            "int32" => DType::I32,
            "uint64" => DType::U64,
            "int64" => DType::I64,
            "float16" => DType::F16,
            "float32" => DType::F32,
            "float64" => DType::F64,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::U16 => "uint16",
            DType::I16 => "int16",
            DType::U32 => "uint32",
            DType::I32 => "int32",
            DType::U64 => "uint64",
            DType::I64 => "int64",
            DType::F16 => "float16",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }

    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    /// Whether a target buffer (a label mask) may have this type.
    pub fn is_integral(self) -> bool {
        !matches!(self, DType::F16 | DType::F32 | DType::F64)
    }

    /// Element `i` of little-endian `bytes` as f64.
    pub fn read_f64(self, bytes: &[u8], i: usize) -> f64 {
        let s = self.size();
        let b = &bytes[i * s..(i + 1) * s];
        match self {
            DType::Bool | DType::U8 => b[0] as f64,
            DType::I8 => b[0] as i8 as f64,
            DType::U16 => u16::from_le_bytes([b[0], b[1]]) as f64,
            DType::I16 => i16::from_le_bytes([b[0], b[1]]) as f64,
            DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
            DType::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            DType::U64 => u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f64,
            DType::I64 => i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f64,
            DType::F64 => f64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
        }
    }
}

/// A decoded array: shape, element type and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: Vec<u8>,
}

impl Array {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize, what: &str) -> Result<&'a [u8], String> {
    let s = pos
        .checked_add(n)
        .and_then(|end| buf.get(*pos..end))
        .ok_or_else(|| {
            format!(
                "NNIA array: {what} at byte {} runs past the end ({} bytes)",
                *pos,
                buf.len()
            )
        })?;
    *pos += n;
    Ok(s)
}

/// Decodes an `NNIA` array of at most `max_bytes` uncompressed bytes.
pub fn unpack(buf: &[u8], max_bytes: usize) -> Result<Array, String> {
    let mut pos = 0;
    let head = take(buf, &mut pos, 8, "header")?;
    if &head[..4] != b"NNIA" {
        return Err(format!(
            "NNIA array: bad magic {:?} (expected \"NNIA\")",
            String::from_utf8_lossy(&head[..4])
        ));
    }
    if head[4] != 1 {
        return Err(format!(
            "NNIA array: wire version {} (only 1 is known)",
            head[4]
        ));
    }
    if head[5] != 1 && head[5] != 2 {
        return Err(format!(
            "NNIA array: codec id {} (1 = ZSTD, 2 = LZ4)",
            head[5]
        ));
    }
    let ndim = head[6] as usize;
    let name = take(buf, &mut pos, head[7] as usize, "dtype name")?;
    let name = std::str::from_utf8(name).map_err(|_| "NNIA array: dtype name is not ASCII")?;
    let dtype =
        DType::parse(name).ok_or_else(|| format!("NNIA array: dtype {name:?} is not supported"))?;
    let mut shape = Vec::with_capacity(ndim);
    for d in 0..ndim {
        let b = take(buf, &mut pos, 8, "shape")?;
        let v = i64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        let v = usize::try_from(v).map_err(|_| format!("NNIA array: dim {d} is negative ({v})"))?;
        shape.push(v);
    }
    let total = shape
        .iter()
        .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
        .filter(|&t| t <= max_bytes)
        .ok_or_else(|| {
            format!("NNIA array: shape {shape:?} of {name} exceeds the limit of {max_bytes} bytes")
        })?;
    let nchunks = take(buf, &mut pos, 4, "chunk count")?;
    let nchunks = u32::from_le_bytes(nchunks.try_into().unwrap_or([0; 4])) as usize;
    // Grown as chunks arrive: the declared size is not trusted for an allocation.
    let mut data = Vec::new();
    for c in 0..nchunks {
        let lens = take(buf, &mut pos, 16, "chunk lengths")?;
        let ulen = u64::from_le_bytes(lens[..8].try_into().unwrap_or([0; 8])) as usize;
        let clen = u64::from_le_bytes(lens[8..].try_into().unwrap_or([0; 8])) as usize;
        if ulen > total - data.len() {
            return Err(format!(
                "NNIA array: chunk {c} holds {ulen} bytes, more than the shape leaves ({})",
                total - data.len()
            ));
        }
        let chunk = take(buf, &mut pos, clen, "chunk")?;
        let bytes = blosc2::decompress(chunk, ulen).map_err(|e| format!("NNIA chunk {c}: {e}"))?;
        if bytes.len() != ulen {
            return Err(format!(
                "NNIA array: chunk {c} decodes to {} bytes, its header says {ulen}",
                bytes.len()
            ));
        }
        data.extend_from_slice(&bytes);
    }
    if data.len() != total {
        return Err(format!(
            "NNIA array: {} bytes of data for shape {shape:?} of {name} ({total} bytes)",
            data.len()
        ));
    }
    Ok(Array { shape, dtype, data })
}

/// Encodes an array (memcpyed blosc2 chunks, codec id ZSTD in the header).
pub fn pack(a: &Array) -> Result<Vec<u8>, String> {
    let name = a.dtype.name().as_bytes();
    let mut out = Vec::with_capacity(a.data.len() + 64);
    out.extend_from_slice(b"NNIA");
    out.extend_from_slice(&[1, 1, a.shape.len() as u8, name.len() as u8]);
    out.extend_from_slice(name);
    for &d in &a.shape {
        out.extend_from_slice(&(d as i64).to_le_bytes());
    }
    // Chunks of 1 GiB like the client's, well inside one blosc2 chunk's int32 sizes.
    let chunk = 1usize << 30;
    let pieces: Vec<&[u8]> = if a.data.is_empty() {
        Vec::new()
    } else {
        a.data.chunks(chunk).collect()
    };
    out.extend_from_slice(&(pieces.len() as u32).to_le_bytes());
    for p in pieces {
        let c = blosc2::compress_memcpy(p, a.dtype.size()).map_err(|e| e.to_string())?;
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(&(c.len() as u64).to_le_bytes());
        out.extend_from_slice(&c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let a = Array {
            shape: vec![2, 3, 4],
            dtype: DType::I16,
            data: (0..48u8).collect(),
        };
        assert_eq!(unpack(&pack(&a).unwrap(), 1 << 20).unwrap(), a);
    }

    #[test]
    fn bad_arrays_are_errors() {
        let a = Array {
            shape: vec![4],
            dtype: DType::U8,
            data: vec![1, 2, 3, 4],
        };
        let p = pack(&a).unwrap();
        assert!(unpack(&p, 3).is_err(), "over the cap");
        assert!(unpack(&p[..p.len() - 1], 100).is_err(), "truncated");
        let mut bad = p.clone();
        bad[0] = b'X';
        assert!(unpack(&bad, 100).is_err());
        let mut huge = p.clone();
        huge[13..21].copy_from_slice(&i64::MAX.to_le_bytes());
        assert!(unpack(&huge, usize::MAX).is_err(), "overflowing shape");
    }
}
