//! The versioned byte image a TCP connection exports to and imports from (paper §3.1: caching
//! moves "any data buffered for send and receive, and any protocol state").
//!
//! Layout: magic `MSTC`, a little-endian `u16` version, then the fields each component writes
//! in order, with one-byte section tags between components so that a reader out of step fails
//! at once instead of misreading. Integers are little-endian and fixed width; byte strings carry
//! a `u32` length.
//!
//! Time: every [`Instant`] is process-relative (each process picks its own epoch), so the writer
//! stores instants as signed offsets from its `now` and the reader rebases them onto its own
//! `now`. Deadlines, RTT-sample start times and the timestamp clock origin therefore survive the
//! move with the time that passed in transit counted as it should be.
//!
//! Contract: the image may come from another, untrusted process. Reading never panics; a short,
//! malformed or inconsistent image is an [`ImageError`]. Components validate their own
//! invariants on import and report violations as [`ImageError::Invalid`].
#![forbid(unsafe_code)]

use core::fmt;

use crate::stack::{Duration, Instant};
use crate::wire::tcp::TcpSeqNumber;

/// First bytes of every image.
pub const IMAGE_MAGIC: [u8; 4] = *b"MSTC";
/// Layout version written by this build; readers accept exactly this version.
pub const IMAGE_VERSION: u16 = 2;

/// Why an image could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageError {
    /// The image ends before a field it must contain.
    Truncated,
    /// The image does not start with [`IMAGE_MAGIC`].
    BadMagic,
    /// The image was written by a layout version this build does not read.
    UnsupportedVersion(u16),
    /// A field holds a value the component cannot accept (named by the string).
    Invalid(&'static str),
    /// Bytes remain after the last field.
    TrailingBytes,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Truncated => f.write_str("state image truncated"),
            ImageError::BadMagic => f.write_str("not a msock TCP state image"),
            ImageError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "state image version {v} is not supported (this build reads {IMAGE_VERSION})"
                )
            }
            ImageError::Invalid(what) => write!(f, "state image has an invalid {what}"),
            ImageError::TrailingBytes => f.write_str("state image has trailing bytes"),
        }
    }
}

impl std::error::Error for ImageError {}

/// Appends fields to an image.
#[derive(Debug)]
pub struct ImageWriter {
    buf: Vec<u8>,
    origin: Instant,
}

impl ImageWriter {
    /// Starts an image; `now` is the origin instants are stored relative to.
    pub fn new(now: Instant) -> ImageWriter {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&IMAGE_MAGIC);
        buf.extend_from_slice(&IMAGE_VERSION.to_le_bytes());
        ImageWriter { buf, origin: now }
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bool(&mut self, v: bool) {
        self.buf.push(u8::from(v));
    }

    pub fn usize(&mut self, v: usize) {
        self.u64(v as u64);
    }

    pub fn seq(&mut self, v: TcpSeqNumber) {
        self.u32(v.0);
    }

    /// A byte string with a `u32` length prefix.
    ///
    /// Panics if `v` is 4 GiB or longer (no engine buffer can be).
    pub fn bytes(&mut self, v: &[u8]) {
        let len = u32::try_from(v.len()).expect("image byte strings are shorter than 4 GiB");
        self.u32(len);
        self.buf.extend_from_slice(v);
    }

    /// The concatenation of `parts` as one length-prefixed byte string (ring buffers export
    /// their two halves without an intermediate copy).
    pub fn bytes_parts(&mut self, parts: &[&[u8]]) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(total).expect("image byte strings are shorter than 4 GiB");
        self.u32(len);
        for part in parts {
            self.buf.extend_from_slice(part);
        }
    }

    /// An instant, stored relative to the writer's origin.
    pub fn instant(&mut self, v: Instant) {
        let offset = if v >= self.origin {
            i64::try_from(v.0 - self.origin.0).unwrap_or(i64::MAX)
        } else {
            i64::try_from(self.origin.0 - v.0).map_or(i64::MIN, |d| -d)
        };
        self.i64(offset);
    }

    pub fn opt_instant(&mut self, v: Option<Instant>) {
        self.bool(v.is_some());
        if let Some(v) = v {
            self.instant(v);
        }
    }

    pub fn duration(&mut self, v: Duration) {
        self.u64(v.0);
    }

    pub fn opt_duration(&mut self, v: Option<Duration>) {
        self.bool(v.is_some());
        if let Some(v) = v {
            self.duration(v);
        }
    }

    /// A marker checked by [`ImageReader::read_section`].
    pub fn section(&mut self, tag: u8) {
        self.u8(tag);
    }

    /// The finished image.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields from an image in the order they were written.
#[derive(Debug)]
pub struct ImageReader<'a> {
    buf: &'a [u8],
    pos: usize,
    origin: Instant,
}

impl<'a> ImageReader<'a> {
    /// Checks the header; `now` is the origin instants are rebased onto.
    pub fn new(bytes: &'a [u8], now: Instant) -> Result<ImageReader<'a>, ImageError> {
        if bytes.len() < 6 {
            return Err(if bytes.len() >= 4 && bytes[..4] != IMAGE_MAGIC {
                ImageError::BadMagic
            } else {
                ImageError::Truncated
            });
        }
        if bytes[..4] != IMAGE_MAGIC {
            return Err(ImageError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != IMAGE_VERSION {
            return Err(ImageError::UnsupportedVersion(version));
        }
        Ok(ImageReader {
            buf: bytes,
            pos: 6,
            origin: now,
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ImageError> {
        let end = self.pos.checked_add(n).ok_or(ImageError::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(ImageError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ImageError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn read_u8(&mut self) -> Result<u8, ImageError> {
        Ok(self.take(1)?[0])
    }

    pub fn read_u16(&mut self) -> Result<u16, ImageError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn read_u32(&mut self) -> Result<u32, ImageError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn read_u64(&mut self) -> Result<u64, ImageError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn read_i64(&mut self) -> Result<i64, ImageError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub fn read_bool(&mut self) -> Result<bool, ImageError> {
        match self.read_u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ImageError::Invalid("boolean")),
        }
    }

    /// A size or count; values above 2⁴⁰ are rejected as no engine quantity is that large.
    pub fn read_usize(&mut self) -> Result<usize, ImageError> {
        let v = self.read_u64()?;
        if v > 1 << 40 {
            return Err(ImageError::Invalid("size"));
        }
        usize::try_from(v).map_err(|_| ImageError::Invalid("size"))
    }

    pub fn read_seq(&mut self) -> Result<TcpSeqNumber, ImageError> {
        Ok(TcpSeqNumber(self.read_u32()?))
    }

    pub fn read_bytes(&mut self) -> Result<&'a [u8], ImageError> {
        let len = self.read_u32()? as usize;
        self.take(len)
    }

    /// An instant written by [`ImageWriter::instant`], rebased onto this reader's origin
    /// (saturating at the epoch: a time before this process's epoch reads as the epoch).
    pub fn read_instant(&mut self) -> Result<Instant, ImageError> {
        let offset = self.read_i64()?;
        Ok(if offset >= 0 {
            Instant(self.origin.0.saturating_add(offset as u64))
        } else {
            Instant(self.origin.0.saturating_sub(offset.unsigned_abs()))
        })
    }

    pub fn read_opt_instant(&mut self) -> Result<Option<Instant>, ImageError> {
        Ok(if self.read_bool()? {
            Some(self.read_instant()?)
        } else {
            None
        })
    }

    pub fn read_duration(&mut self) -> Result<Duration, ImageError> {
        Ok(Duration(self.read_u64()?))
    }

    pub fn read_opt_duration(&mut self) -> Result<Option<Duration>, ImageError> {
        Ok(if self.read_bool()? {
            Some(self.read_duration()?)
        } else {
            None
        })
    }

    /// Checks a marker written by [`ImageWriter::section`].
    pub fn read_section(&mut self, tag: u8) -> Result<(), ImageError> {
        if self.read_u8()? == tag {
            Ok(())
        } else {
            Err(ImageError::Invalid("section marker"))
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Ends reading: every byte must have been consumed.
    pub fn finish(self) -> Result<(), ImageError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(ImageError::TrailingBytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_field_kind() {
        let mut w = ImageWriter::new(Instant::from_secs(100));
        w.u8(7);
        w.u16(0xbeef);
        w.u32(0xdead_beef);
        w.u64(u64::MAX - 1);
        w.i64(-5);
        w.bool(true);
        w.usize(123_456);
        w.seq(TcpSeqNumber(0xffff_fff0));
        w.bytes(b"hello");
        w.bytes_parts(&[b"ab", b"", b"cd"]);
        w.section(0x42);
        w.instant(Instant::from_secs(103));
        w.instant(Instant::from_secs(98));
        w.opt_instant(None);
        w.opt_instant(Some(Instant::from_secs(100)));
        w.duration(Duration::from_millis(200));
        w.opt_duration(Some(Duration::from_micros(1)));
        let image = w.finish();

        // Read in a process whose clock reads 5 s: instants keep their distance from "now".
        let mut r = ImageReader::new(&image, Instant::from_secs(5)).unwrap();
        assert_eq!(r.read_u8().unwrap(), 7);
        assert_eq!(r.read_u16().unwrap(), 0xbeef);
        assert_eq!(r.read_u32().unwrap(), 0xdead_beef);
        assert_eq!(r.read_u64().unwrap(), u64::MAX - 1);
        assert_eq!(r.read_i64().unwrap(), -5);
        assert!(r.read_bool().unwrap());
        assert_eq!(r.read_usize().unwrap(), 123_456);
        assert_eq!(r.read_seq().unwrap(), TcpSeqNumber(0xffff_fff0));
        assert_eq!(r.read_bytes().unwrap(), b"hello");
        assert_eq!(r.read_bytes().unwrap(), b"abcd");
        r.read_section(0x42).unwrap();
        assert_eq!(r.read_instant().unwrap(), Instant::from_secs(8));
        assert_eq!(r.read_instant().unwrap(), Instant::from_secs(3));
        assert_eq!(r.read_opt_instant().unwrap(), None);
        assert_eq!(r.read_opt_instant().unwrap(), Some(Instant::from_secs(5)));
        assert_eq!(r.read_duration().unwrap(), Duration::from_millis(200));
        assert_eq!(
            r.read_opt_duration().unwrap(),
            Some(Duration::from_micros(1))
        );
        r.finish().unwrap();
    }

    #[test]
    fn instants_before_the_readers_epoch_saturate() {
        let mut w = ImageWriter::new(Instant::from_secs(100));
        w.instant(Instant::from_secs(10));
        let image = w.finish();
        let mut r = ImageReader::new(&image, Instant::from_secs(1)).unwrap();
        assert_eq!(r.read_instant().unwrap(), Instant::ZERO);
    }

    #[test]
    fn bad_headers_and_short_images_are_errors() {
        assert_eq!(
            ImageReader::new(b"", Instant::ZERO).unwrap_err(),
            ImageError::Truncated
        );
        assert_eq!(
            ImageReader::new(b"MST", Instant::ZERO).unwrap_err(),
            ImageError::Truncated
        );
        assert_eq!(
            ImageReader::new(b"XXXX\x01\x00", Instant::ZERO).unwrap_err(),
            ImageError::BadMagic
        );
        assert_eq!(
            ImageReader::new(b"MSTC\x03\x00", Instant::ZERO).unwrap_err(),
            ImageError::UnsupportedVersion(3)
        );
        let mut w = ImageWriter::new(Instant::ZERO);
        w.bytes(b"0123456789");
        let image = w.finish();
        for cut in 6..image.len() {
            let mut r = ImageReader::new(&image[..cut], Instant::ZERO).unwrap();
            assert_eq!(r.read_bytes().unwrap_err(), ImageError::Truncated);
        }
    }

    #[test]
    fn invalid_values_and_trailing_bytes_are_rejected() {
        let mut w = ImageWriter::new(Instant::ZERO);
        w.u8(2);
        w.u64(1 << 50);
        w.u8(9);
        w.u8(0);
        let image = w.finish();
        let mut r = ImageReader::new(&image, Instant::ZERO).unwrap();
        assert_eq!(r.read_bool().unwrap_err(), ImageError::Invalid("boolean"));
        assert_eq!(r.read_usize().unwrap_err(), ImageError::Invalid("size"));
        assert_eq!(
            r.read_section(1).unwrap_err(),
            ImageError::Invalid("section marker")
        );
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.finish().unwrap_err(), ImageError::TrailingBytes);
    }
}
