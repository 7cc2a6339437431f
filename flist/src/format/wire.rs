//! Byte-level primitives of the metadata body: LEB128 varints, zigzag deltas and length-prefixed
//! byte strings. The reader is bounds-checked everywhere, so hostile input yields an error, never a
//! panic or an unbounded allocation.

use super::DecodeError;

/// Appends values to one column of the body.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    pub(crate) fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub(crate) fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// Writes this column into `out` as a length-prefixed section.
    pub(crate) fn finish_into(self, out: &mut Writer) {
        out.bytes(&self.buf);
    }
}

/// Reads values back from one column, failing with the column's name on any inconsistency.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pub(crate) section: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], section: &'static str) -> Self {
        Reader { buf, section }
    }

    fn err(&self, what: &'static str) -> DecodeError {
        DecodeError::Corrupt { section: self.section, what }
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or_else(|| self.err("truncated varint"))?;
            self.buf = rest;
            let low = u64::from(b & 0x7f);
            if shift == 63 && low > 1 {
                return Err(self.err("varint overflows 64 bits"));
            }
            v |= low << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.u64()?).map_err(|_| self.err("value exceeds 32 bits"))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        let v = self.u64()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A count of items that each take at least `min_item_bytes` in this column: a count that
    /// cannot fit is refused before anything is allocated for it.
    pub(crate) fn count(&mut self, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.u64()?).map_err(|_| self.err("count too large"))?;
        if n.saturating_mul(min_item_bytes) > self.buf.len() {
            return Err(self.err("count larger than the data"));
        }
        Ok(n)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn raw(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(self.err("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(self.u64()?).map_err(|_| self.err("length too large"))?;
        self.raw(n)
    }

    pub(crate) fn array32(&mut self) -> Result<[u8; 32], DecodeError> {
        let s = self.raw(32)?;
        let mut a = [0u8; 32];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// The next length-prefixed section, as a reader of its own.
    pub(crate) fn section(&mut self, name: &'static str) -> Result<Reader<'a>, DecodeError> {
        Ok(Reader::new(self.bytes()?, name))
    }

    /// Every column must be consumed exactly: trailing bytes mean the writer and reader disagree.
    pub(crate) fn end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_round_trip(u in any::<u64>(), i in any::<i64>()) {
            let mut w = Writer::default();
            w.u64(u);
            w.i64(i);
            let mut r = Reader::new(&w.buf, "test");
            prop_assert_eq!(r.u64().unwrap(), u);
            prop_assert_eq!(r.i64().unwrap(), i);
            prop_assert!(r.end().is_ok());
        }
    }

    #[test]
    fn overlong_varint_is_refused() {
        let bytes = [0xffu8; 11];
        assert!(Reader::new(&bytes, "t").u64().is_err());
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&over, "t").u64().is_err());
    }

    #[test]
    fn count_cannot_exceed_data() {
        let mut w = Writer::default();
        w.u64(1 << 40);
        assert!(Reader::new(&w.buf, "t").count(1).is_err());
    }
}
