//! The option list shared by IPv4 (RFC 791 §3.1) and TCP (RFC 9293 §3.1): after a 20-byte
//! header come at most 40 bytes of options, each a kind byte, a length byte (counting both) and
//! data, except the one-byte end of list (kind 0) and no-operation (kind 1). [`OptionsIter`]
//! walks encoded options zero-copy and [`Options`] holds a validated list inline in its encoded
//! form (no heap per packet). What each option means is the protocol's: its option enum
//! implements [`OptionFormat`], and the public names are aliases (`Ipv4Options =
//! Options<Ipv4Option<'static>>`, `TcpOptionsIter<'a> = OptionsIter<'a, TcpOption<'static>>`).
//!
//! Contract: the iterator never panics and yields `Err(Malformed)` once, then stops, for a
//! missing length byte, a length byte of 0 or 1, an option overrunning the area, or what the
//! protocol's decoder rejects; it stops after an end of list. [`Options`] only ever holds
//! options that parse back as themselves, without the end of list and its padding.
#![forbid(unsafe_code)]

use core::{fmt, marker::PhantomData};

use super::{Error, Result};

/// Largest options area (IHL or data offset 15 → 60-byte header).
pub const MAX_LEN: usize = 40;

/// Option kind 0: end of option list (both protocols).
const KIND_EOL: u8 = 0;
/// Option kind 1: no operation (both protocols).
const KIND_NOP: u8 = 1;

/// One protocol's options: implemented by its option enum at `'static`, `Item<'a>` being the
/// same enum borrowing the bytes it was parsed from.
pub trait OptionFormat {
    type Item<'a>: Copy + PartialEq + fmt::Debug;

    /// Kind 0.
    fn end_of_list<'a>() -> Self::Item<'a>;
    /// Kind 1.
    fn no_operation<'a>() -> Self::Item<'a>;
    /// Any other option, framing checked: `data` is what follows the length byte.
    fn decode(kind: u8, data: &[u8]) -> Result<Self::Item<'_>>;
    /// Encoded length, kind (and length) bytes included.
    fn encoded_len(option: &Self::Item<'_>) -> usize;
    /// Writes `option` (not an end of list) into `out`, exactly [`OptionFormat::encoded_len`]
    /// bytes; `Err(Malformed)` when it would not parse back as itself.
    fn encode(option: Self::Item<'_>, out: &mut [u8]) -> Result<()>;
}

/// Iterates over encoded options, zero-copy (see the module contract).
pub struct OptionsIter<'a, F> {
    rest: &'a [u8],
    format: PhantomData<F>,
}

impl<F> Clone for OptionsIter<'_, F> {
    fn clone(&self) -> Self {
        OptionsIter {
            rest: self.rest,
            format: PhantomData,
        }
    }
}

impl<F> fmt::Debug for OptionsIter<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OptionsIter")
            .field("rest", &self.rest)
            .finish()
    }
}

impl<'a, F: OptionFormat> OptionsIter<'a, F> {
    pub fn new(options: &'a [u8]) -> Self {
        OptionsIter {
            rest: options,
            format: PhantomData,
        }
    }

    fn next_option(&mut self) -> Result<F::Item<'a>> {
        let kind = self.rest[0];
        match kind {
            KIND_EOL => {
                self.rest = &[];
                return Ok(F::end_of_list());
            }
            KIND_NOP => {
                self.rest = &self.rest[1..];
                return Ok(F::no_operation());
            }
            _ => {}
        }
        let len = usize::from(*self.rest.get(1).ok_or(Error::Malformed)?);
        if len < 2 || len > self.rest.len() {
            return Err(Error::Malformed);
        }
        let (option, rest) = self.rest.split_at(len);
        self.rest = rest;
        F::decode(kind, &option[2..])
    }
}

impl<'a, F: OptionFormat> Iterator for OptionsIter<'a, F> {
    type Item = Result<F::Item<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = self.next_option();
        if item.is_err() {
            self.rest = &[];
        }
        Some(item)
    }
}

/// A validated list of options stored inline in their encoded form (at most 40 bytes).
///
/// The end of the list is implicit: [`Options::parse`] drops an end-of-list and the padding
/// after it, and the header's `emit` pads with zeros (end-of-list) to a multiple of 4, so a
/// parsed list emits and parses back to itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Options<F> {
    bytes: [u8; MAX_LEN],
    len: u8,
    format: PhantomData<F>,
}

impl<F: OptionFormat> Default for Options<F> {
    fn default() -> Self {
        Options::new()
    }
}

impl<F: OptionFormat> fmt::Debug for Options<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<F: OptionFormat> Options<F> {
    /// No options.
    pub const fn new() -> Self {
        Options {
            bytes: [0; MAX_LEN],
            len: 0,
            format: PhantomData,
        }
    }

    /// Validates encoded options (a header's options area). An end-of-list and the padding
    /// after it are not kept.
    pub fn parse(encoded: &[u8]) -> Result<Self> {
        if encoded.len() > MAX_LEN {
            return Err(Error::Malformed);
        }
        let mut end = 0;
        for option in OptionsIter::<F>::new(encoded) {
            let option = option?;
            if option == F::end_of_list() {
                break;
            }
            end += F::encoded_len(&option);
        }
        let mut out = Options::new();
        out.bytes[..end].copy_from_slice(&encoded[..end]);
        out.len = end as u8;
        Ok(out)
    }

    /// Appends an option; `Err(Malformed)` when it does not fit in 40 bytes, is an
    /// end-of-list (implicit, see above), or would not parse back as itself (an `Unknown`
    /// option of a kind the protocol knows).
    pub fn push(&mut self, option: F::Item<'_>) -> Result<()> {
        let len = F::encoded_len(&option);
        let start = usize::from(self.len);
        if start + len > MAX_LEN || option == F::end_of_list() {
            return Err(Error::Malformed);
        }
        // A refused option leaves no bytes behind: equality and hashing see all 40 bytes.
        if let Err(e) = F::encode(option, &mut self.bytes[start..start + len]) {
            self.bytes[start..start + len].fill(0);
            return Err(e);
        }
        self.len = (start + len) as u8;
        Ok(())
    }

    /// The options in order.
    pub fn iter(&self) -> OptionsIter<'_, F> {
        OptionsIter::new(self.as_bytes())
    }

    /// The encoded options (without padding).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Length on the wire, padded to a multiple of 4.
    pub fn padded_len(&self) -> usize {
        (usize::from(self.len) + 3) & !3
    }
}
