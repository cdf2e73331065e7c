//! Framed metadata files: every structure Sediment persists besides the Kafka
//! batches themselves is wrapped in the same envelope (see docs/FORMAT.md):
//!
//! ```text
//! magic   4 bytes   "SDMT"
//! kind    4 bytes   ASCII tag of the structure, e.g. "TOPC", "OIDX", "PSNP"
//! version u16 BE    format version of the payload
//! length  u32 BE    payload length (bounded by the caller's limit)
//! crc32c  u32 BE    of the payload
//! payload length bytes
//! ```
//!
//! Crash consistency: [`write_atomic`] writes a temporary file, fsyncs it,
//! renames it over the target and fsyncs the directory, so a reader sees
//! either the old file or the new one, never a mix. A reader that finds a bad
//! magic, an unknown version or a CRC mismatch gets an error, never "empty".

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

pub const MAGIC: &[u8; 4] = b"SDMT";
pub const HEADER_LEN: usize = 18;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("{what}: bad magic (not a Sediment file)")]
    BadMagic { what: String },
    #[error("{what}: expected kind {expected:?}, found {found:?}")]
    WrongKind {
        what: String,
        expected: String,
        found: String,
    },
    #[error("{what}: format version {found} is not supported (this build reads up to {max})")]
    UnsupportedVersion { what: String, found: u16, max: u16 },
    #[error("{what}: payload length {length} exceeds limit {limit}")]
    TooLong {
        what: String,
        length: usize,
        limit: usize,
    },
    #[error("{what}: truncated ({available} of {needed} bytes)")]
    Truncated {
        what: String,
        needed: usize,
        available: usize,
    },
    #[error("{what}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        what: String,
        stored: u32,
        computed: u32,
    },
}

/// Encodes `payload` in a frame of the given kind and version.
pub fn encode(kind: &[u8; 4], version: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(kind);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes a frame, checking magic, kind, version (`<= max_version`), length
/// bound and checksum. Returns the version and the payload.
pub fn decode<'a>(
    what: &str,
    buf: &'a [u8],
    kind: &[u8; 4],
    max_version: u16,
    limit: usize,
) -> Result<(u16, &'a [u8]), FrameError> {
    let (version, length) = peek_header(what, buf, kind, max_version)?;
    if length > limit {
        return Err(FrameError::TooLong {
            what: what.to_string(),
            length,
            limit,
        });
    }
    let stored = u32::from_be_bytes([buf[14], buf[15], buf[16], buf[17]]);
    let end = HEADER_LEN + length;
    if buf.len() < end {
        return Err(FrameError::Truncated {
            what: what.to_string(),
            needed: end,
            available: buf.len(),
        });
    }
    let payload = &buf[HEADER_LEN..end];
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Err(FrameError::Checksum {
            what: what.to_string(),
            stored,
            computed,
        });
    }
    Ok((version, payload))
}

/// Checks a frame's magic, kind and version from its first [`HEADER_LEN`]
/// bytes without reading (or checksumming) the payload; returns the version
/// and payload length. Used to read a summary at the start of a payload
/// cheaply; the full frame is verified when it is read whole.
pub fn peek_header(
    what: &str,
    buf: &[u8],
    kind: &[u8; 4],
    max_version: u16,
) -> Result<(u16, usize), FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Truncated {
            what: what.to_string(),
            needed: HEADER_LEN,
            available: buf.len(),
        });
    }
    if &buf[0..4] != MAGIC {
        return Err(FrameError::BadMagic {
            what: what.to_string(),
        });
    }
    if &buf[4..8] != kind {
        return Err(FrameError::WrongKind {
            what: what.to_string(),
            expected: String::from_utf8_lossy(kind).into_owned(),
            found: String::from_utf8_lossy(&buf[4..8]).into_owned(),
        });
    }
    let version = u16::from_be_bytes([buf[8], buf[9]]);
    if version == 0 || version > max_version {
        return Err(FrameError::UnsupportedVersion {
            what: what.to_string(),
            found: version,
            max: max_version,
        });
    }
    Ok((
        version,
        u32::from_be_bytes([buf[10], buf[11], buf[12], buf[13]]) as usize,
    ))
}

/// Reads a whole framed file, refusing files larger than `limit` plus header.
pub fn read_file(path: &Path, limit: usize) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len > (limit + HEADER_LEN) as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {len} bytes exceeds limit {limit}", path.display()),
        ));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync,
/// rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// fsyncs a directory so that renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip() {
        let f = encode(b"TEST", 1, b"hello");
        let (v, p) = decode("t", &f, b"TEST", 1, 100).unwrap();
        assert_eq!((v, p), (1, &b"hello"[..]));
    }

    #[test]
    fn unknown_version_is_rejected_not_guessed() {
        let f = encode(b"TEST", 2, b"x");
        assert!(matches!(
            decode("t", &f, b"TEST", 1, 100),
            Err(FrameError::UnsupportedVersion { found: 2, .. })
        ));
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let f = encode(b"TEST", 1, b"some payload bytes");
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x01;
            assert!(decode("t", &g, b"TEST", 1, 100).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let f = encode(b"TEST", 1, b"some payload bytes");
        for cut in 0..f.len() {
            assert!(decode("t", &f[..cut], b"TEST", 1, 100).is_err());
        }
    }

    #[test]
    fn length_is_bounded_before_allocation() {
        let mut f = encode(b"TEST", 1, b"x");
        f[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode("t", &f, b"TEST", 1, 1000),
            Err(FrameError::TooLong { .. })
        ));
    }
}
