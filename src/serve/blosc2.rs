//! Blosc2 chunks (the output of `blosc2.compress2`), as the nnInteractive protocol ships arrays.
//!
//! Decoding covers what that protocol's clients produce: the 16- and 32-byte headers, chunks
//! stored as a plain copy ("memcpyed"), whole-chunk special values (zeros, NaN, a repeated value,
//! uninitialised), blocks split into one stream per byte of the type or not, streams that are a
//! run of zeros, a run of one byte, stored raw, or compressed with Zstandard or LZ4, and the
//! byte-shuffle filter. Anything else (BloscLZ, zlib, bit-shuffle, delta, dictionaries, lazy or
//! variable-length-block chunks) is refused with an error naming it. Every offset and length is
//! checked against the buffer before use: a malformed chunk is an error, never a panic.
//!
//! Encoding writes the one form every decoder reads: a memcpyed chunk (header + raw bytes).
//! The chunk format is described in c-blosc2's `README_CHUNK_FORMAT.rst`.

use std::io::Read;

/// A chunk that cannot be decoded; the message names the field and the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blosc2Error(pub String);

impl std::fmt::Display for Blosc2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "blosc2 chunk: {}", self.0)
    }
}

impl std::error::Error for Blosc2Error {}

type Result<T> = std::result::Result<T, Blosc2Error>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Blosc2Error(msg.into()))
}

const MIN_HEADER: usize = 16;
const EXTENDED_HEADER: usize = 32;
const FLAG_SHUFFLE: u8 = 0x01;
const FLAG_MEMCPYED: u8 = 0x02;
const FLAG_BITSHUFFLE: u8 = 0x04;
const FLAG_DELTA: u8 = 0x08;
const FLAG_DONT_SPLIT: u8 = 0x10;
const CODEC_LZ4: u8 = 1;
const CODEC_ZSTD: u8 = 4;
const FILTER_NONE: u8 = 0;
const FILTER_SHUFFLE: u8 = 1;
const FILTER_TRUNC_PREC: u8 = 4;

/// The fields of a chunk header that decoding needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub flags: u8,
    pub typesize: usize,
    /// Uncompressed size in bytes.
    pub nbytes: usize,
    pub blocksize: usize,
    /// Compressed size including the header.
    pub cbytes: usize,
    pub header_len: usize,
    pub filters: [u8; 6],
    pub filters_meta: [u8; 6],
    /// Bits 4–6 of `blosc2_flags`: 0 none, 1 zeros, 2 NaN, 3 repeated value, 4 uninitialised.
    pub special: u8,
}

fn i32_at(buf: &[u8], at: usize, field: &str) -> Result<i32> {
    match buf.get(at..at + 4) {
        Some(b) => Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        None => err(format!(
            "{field} at byte {at} lies past the end ({} bytes)",
            buf.len()
        )),
    }
}

fn non_negative(v: i32, field: &str) -> Result<usize> {
    usize::try_from(v).or_else(|_| err(format!("{field} is negative ({v})")))
}

/// Reads and checks a chunk header.
pub fn parse_header(buf: &[u8]) -> Result<ChunkHeader> {
    if buf.len() < MIN_HEADER {
        return err(format!(
            "{} bytes, shorter than the 16-byte header",
            buf.len()
        ));
    }
    let flags = buf[2];
    let typesize = buf[3] as usize;
    let nbytes = non_negative(i32_at(buf, 4, "nbytes")?, "nbytes")?;
    let blocksize = non_negative(i32_at(buf, 8, "blocksize")?, "blocksize")?;
    let cbytes = non_negative(i32_at(buf, 12, "cbytes")?, "cbytes")?;
    let extended = flags & (FLAG_SHUFFLE | FLAG_BITSHUFFLE) == (FLAG_SHUFFLE | FLAG_BITSHUFFLE);
    let (header_len, mut filters, filters_meta, special) = if extended {
        if buf.len() < EXTENDED_HEADER {
            return err(format!(
                "{} bytes, shorter than the 32-byte extended header",
                buf.len()
            ));
        }
        let mut f = [0u8; 6];
        let mut m = [0u8; 6];
        f.copy_from_slice(&buf[16..22]);
        m.copy_from_slice(&buf[24..30]);
        let flags2 = buf[30];
        let b2flags = buf[31];
        if flags2 != 0 {
            return err(format!(
                "variable-length blocks (flags2 = {flags2:#04x}) are not supported"
            ));
        }
        if b2flags & 0x01 != 0 {
            return err("dictionary-compressed chunks are not supported");
        }
        if b2flags & 0x02 != 0 {
            return err("chunks with a second header extension are not supported");
        }
        if b2flags & 0x08 != 0 {
            return err("lazy chunks (data left on disk) cannot be decoded from a buffer");
        }
        (EXTENDED_HEADER, f, m, (b2flags >> 4) & 0x07)
    } else {
        // Blosc1 header: the filter is in the flags.
        let mut f = [0u8; 6];
        if flags & FLAG_SHUFFLE != 0 {
            f[0] = FILTER_SHUFFLE;
        }
        if flags & FLAG_BITSHUFFLE != 0 {
            return err("the bit-shuffle filter is not supported");
        }
        (MIN_HEADER, f, [0u8; 6], 0)
    };
    if !extended && flags & FLAG_DELTA != 0 {
        return err("the delta filter is not supported");
    }
    for f in filters.iter_mut() {
        match *f {
            FILTER_NONE | FILTER_SHUFFLE => {}
            // Truncating precision is lossy at compression; nothing to undo.
            FILTER_TRUNC_PREC => *f = FILTER_NONE,
            2 => return err("the bit-shuffle filter is not supported"),
            3 => return err("the delta filter is not supported"),
            other => return err(format!("filter {other} is not supported")),
        }
    }
    if typesize == 0 {
        return err("typesize is 0");
    }
    if cbytes > buf.len() {
        return err(format!(
            "cbytes says {cbytes} bytes but the buffer holds {}",
            buf.len()
        ));
    }
    if nbytes > 0 && blocksize == 0 && special == 0 && flags & FLAG_MEMCPYED == 0 {
        return err("blocksize is 0");
    }
    Ok(ChunkHeader {
        flags,
        typesize,
        nbytes,
        blocksize,
        cbytes,
        header_len,
        filters,
        filters_meta,
        special,
    })
}

/// Decompresses one chunk; `max_nbytes` caps the uncompressed size (checked before allocating).
pub fn decompress(buf: &[u8], max_nbytes: usize) -> Result<Vec<u8>> {
    let h = parse_header(buf)?;
    if h.nbytes > max_nbytes {
        return err(format!(
            "nbytes {} exceeds the limit of {max_nbytes} bytes",
            h.nbytes
        ));
    }
    let chunk = &buf[..h.cbytes];
    match h.special {
        0 => {}
        1 => return Ok(vec![0u8; h.nbytes]),
        2 => return nan_run(&h),
        3 => {
            let value_len = h.cbytes.saturating_sub(h.header_len);
            let value = chunk
                .get(h.header_len..h.header_len + value_len)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Blosc2Error("repeated-value chunk without its value".into()))?;
            if !h.nbytes.is_multiple_of(value.len()) {
                return err(format!(
                    "repeated value of {} bytes does not divide nbytes {}",
                    value.len(),
                    h.nbytes
                ));
            }
            return Ok(value.repeat(h.nbytes / value.len()));
        }
        // Uninitialised: any content is valid; zeros keep it deterministic.
        4 => return Ok(vec![0u8; h.nbytes]),
        s => return err(format!("special value kind {s} is reserved")),
    }
    if h.flags & FLAG_MEMCPYED != 0 {
        let data = chunk
            .get(h.header_len..h.header_len + h.nbytes)
            .ok_or_else(|| {
                Blosc2Error(format!(
                    "memcpyed chunk holds {} bytes after the header, nbytes says {}",
                    h.cbytes - h.header_len,
                    h.nbytes
                ))
            })?;
        return Ok(data.to_vec());
    }
    let codec = h.flags >> 5;
    if codec != CODEC_ZSTD && codec != CODEC_LZ4 {
        let name = match codec {
            0 => "BloscLZ",
            3 => "zlib",
            6 => "a user-defined codec",
            _ => "an unknown codec",
        };
        return err(format!(
            "codec {codec} ({name}) is not supported; send ZSTD or LZ4"
        ));
    }
    let nblocks = h.nbytes.div_ceil(h.blocksize.max(1));
    let bstarts_end = h.header_len + 4 * nblocks;
    if bstarts_end > chunk.len() {
        return err(format!(
            "{nblocks} block offsets do not fit in {} bytes",
            chunk.len()
        ));
    }
    let mut out = vec![0u8; h.nbytes];
    let mut tmp = Vec::new();
    for b in 0..nblocks {
        let start = non_negative(i32_at(chunk, h.header_len + 4 * b, "bstart")?, "bstart")?;
        if start < bstarts_end || start >= chunk.len() {
            return err(format!(
                "block {b} starts at byte {start}, outside {bstarts_end}..{}",
                chunk.len()
            ));
        }
        let off = b * h.blocksize;
        let bsize = h.blocksize.min(h.nbytes - off);
        let leftover = bsize < h.blocksize;
        let nstreams = if h.flags & FLAG_DONT_SPLIT == 0 && !leftover {
            h.typesize
        } else {
            1
        };
        let shuffled = h.filters.contains(&FILTER_SHUFFLE);
        tmp.resize(bsize, 0);
        let dest: &mut [u8] = if shuffled {
            &mut tmp[..]
        } else {
            &mut out[off..off + bsize]
        };
        decode_block(chunk, start, dest, nstreams, codec, b)?;
        if shuffled {
            let idx = h
                .filters
                .iter()
                .position(|&f| f == FILTER_SHUFFLE)
                .unwrap_or(0);
            let group = match h.filters_meta[idx] {
                0 => h.typesize,
                m => m as usize,
            };
            unshuffle(group, &tmp, &mut out[off..off + bsize]);
        }
    }
    Ok(out)
}

fn nan_run(h: &ChunkHeader) -> Result<Vec<u8>> {
    let nan: Vec<u8> = match h.typesize {
        4 => f32::NAN.to_le_bytes().to_vec(),
        8 => f64::NAN.to_le_bytes().to_vec(),
        t => return err(format!("NaN run with typesize {t} (need 4 or 8)")),
    };
    if !h.nbytes.is_multiple_of(nan.len()) {
        return err("NaN run: nbytes is not a multiple of typesize");
    }
    Ok(nan.repeat(h.nbytes / nan.len()))
}

/// Decodes the `nstreams` streams of one block into `dest` (the block's bytes, still shuffled).
fn decode_block(
    chunk: &[u8],
    mut pos: usize,
    dest: &mut [u8],
    nstreams: usize,
    codec: u8,
    block: usize,
) -> Result<()> {
    let neblock = dest.len() / nstreams;
    if neblock == 0 || neblock * nstreams != dest.len() {
        return err(format!(
            "block {block}: {} bytes do not split into {nstreams} streams",
            dest.len()
        ));
    }
    for (s, d) in dest.chunks_exact_mut(neblock).enumerate() {
        let csize = i32_at(chunk, pos, "stream size")?;
        pos += 4;
        if csize == 0 {
            d.fill(0);
        } else if csize < 0 {
            let token = *chunk.get(pos).ok_or_else(|| {
                Blosc2Error(format!("block {block} stream {s}: token past the end"))
            })?;
            pos += 1;
            if token & 0x01 == 0 || csize < -255 {
                return err(format!(
                    "block {block} stream {s}: unsupported stream token {token:#04x} (size {csize})"
                ));
            }
            d.fill((-csize) as u8);
        } else {
            let n = csize as usize;
            let src = chunk.get(pos..pos + n).ok_or_else(|| {
                Blosc2Error(format!(
                    "block {block} stream {s}: {n} compressed bytes run past the end ({} bytes)",
                    chunk.len()
                ))
            })?;
            pos += n;
            if n == neblock {
                d.copy_from_slice(src);
            } else if codec == CODEC_ZSTD {
                zstd_into(src, d)
                    .map_err(|e| Blosc2Error(format!("block {block} stream {s}: zstd: {e}")))?;
            } else {
                let got = lz4_flex::block::decompress_into(src, d)
                    .map_err(|e| Blosc2Error(format!("block {block} stream {s}: lz4: {e}")))?;
                if got != neblock {
                    return err(format!(
                        "block {block} stream {s}: lz4 gave {got} bytes, expected {neblock}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// One Zstandard frame into exactly `dest.len()` bytes.
fn zstd_into(src: &[u8], dest: &mut [u8]) -> std::result::Result<(), String> {
    let mut dec = ruzstd::decoding::StreamingDecoder::new(src).map_err(|e| e.to_string())?;
    let mut filled = 0;
    while filled < dest.len() {
        let n = dec.read(&mut dest[filled..]).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("{filled} bytes, expected {}", dest.len()));
        }
        filled += n;
    }
    let mut extra = [0u8; 1];
    match dec.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(format!("more than the expected {} bytes", dest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// Undoes the byte shuffle of one block: byte `j` of element `i` was stored at `j·n + i`; a tail
/// shorter than one element was left in place.
pub fn unshuffle(typesize: usize, src: &[u8], dest: &mut [u8]) {
    let n = src.len() / typesize;
    transpose_bytes(typesize, n, src, dest);
}

/// The byte shuffle of one block (the inverse of [`unshuffle`]); for tests and encoders.
pub fn shuffle(typesize: usize, src: &[u8], dest: &mut [u8]) {
    let n = src.len() / typesize;
    transpose_bytes(n, typesize, src, dest);
}

/// `dest` = the `rows × cols` byte matrix at the start of `src`, transposed; the tail after it
/// is copied as it is.
#[inline(always)]
fn transpose_bytes(rows: usize, cols: usize, src: &[u8], dest: &mut [u8]) {
    for r in 0..rows {
        for c in 0..cols {
            dest[c * rows + r] = src[r * cols + c];
        }
    }
    let tail = rows * cols;
    dest[tail..].copy_from_slice(&src[tail..]);
}

/// The largest uncompressed size one chunk can carry (the header's fields are int32).
pub const MAX_CHUNK_NBYTES: usize = i32::MAX as usize - EXTENDED_HEADER;

/// A memcpyed chunk holding `data` (at most [`MAX_CHUNK_NBYTES`] bytes) with element size
/// `typesize`: the 32-byte extended header followed by the bytes as they are.
pub fn compress_memcpy(data: &[u8], typesize: usize) -> Result<Vec<u8>> {
    if data.len() > MAX_CHUNK_NBYTES {
        return err(format!(
            "{} bytes exceed one chunk's {MAX_CHUNK_NBYTES}",
            data.len()
        ));
    }
    let typesize = u8::try_from(typesize.clamp(1, 255)).unwrap_or(1);
    let mut out = Vec::with_capacity(EXTENDED_HEADER + data.len());
    out.push(5); // format version
    out.push(1); // codec format version
                 // Extended header (shuffle + bit-shuffle bits), memcpyed, not split, codec slot ZSTD.
    out.push(FLAG_SHUFFLE | FLAG_BITSHUFFLE | FLAG_MEMCPYED | FLAG_DONT_SPLIT | (CODEC_ZSTD << 5));
    out.push(typesize);
    let nbytes = data.len() as i32;
    out.extend_from_slice(&nbytes.to_le_bytes());
    // One block holding everything (blocksize may not be 0).
    out.extend_from_slice(&nbytes.max(1).to_le_bytes());
    out.extend_from_slice(&(nbytes + EXTENDED_HEADER as i32).to_le_bytes());
    out.extend_from_slice(&[0u8; 16]); // no filters, no codec meta, no flags
    out.extend_from_slice(data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memcpy_round_trip() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let c = compress_memcpy(&data, 4).unwrap();
        assert_eq!(decompress(&c, usize::MAX).unwrap(), data);
        assert_eq!(
            decompress(&compress_memcpy(&[], 1).unwrap(), 10).unwrap(),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn shuffle_round_trip_with_tail() {
        let src: Vec<u8> = (0..23u8).collect();
        let mut s = vec![0; 23];
        let mut back = vec![0; 23];
        shuffle(4, &src, &mut s);
        unshuffle(4, &s, &mut back);
        assert_eq!(back, src);
    }

    #[test]
    fn malformed_chunks_are_errors() {
        assert!(decompress(&[], 10).is_err());
        assert!(decompress(&[0u8; 15], 10).is_err());
        let mut c = compress_memcpy(&[1, 2, 3, 4], 1).unwrap();
        assert!(decompress(&c, 3).is_err(), "over the size cap");
        c.truncate(34);
        assert!(decompress(&c, 10).is_err(), "truncated");
        // A compressed chunk whose block offset points past the end.
        let mut h = vec![5u8, 1, 0x05 | (CODEC_ZSTD << 5), 1];
        h.extend_from_slice(&8i32.to_le_bytes());
        h.extend_from_slice(&8i32.to_le_bytes());
        h.extend_from_slice(&40i32.to_le_bytes());
        h.extend_from_slice(&[0u8; 16]);
        h.extend_from_slice(&1000i32.to_le_bytes());
        h.extend_from_slice(&[0u8; 4]);
        assert!(decompress(&h, 100).is_err());
    }
}
