//! Counts what goes into and comes out of the decompressor while it runs, so that a
//! decompression bomb stops early: headers promise sizes, but only counting the bytes read
//! bounds what hides where sizes are not summed (long names, pax records, padding) and how much
//! work one compressed byte may cost.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

/// Decompressed bytes allowed before the ratio is checked: small archives are harmless at any
/// ratio.
pub(crate) const RATIO_FREE: u64 = 8 << 20;
/// Decompressed bytes per compressed byte at most. Source trees compress 3–20×; gzip at best
/// reaches ~1000× (long runs of one byte), which is what bombs are made of.
pub(crate) const MAX_RATIO: u64 = 200;

/// Why the meter stopped the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trip {
    /// More decompressed bytes than the current entry's budget.
    Budget,
    /// More than [`MAX_RATIO`] decompressed bytes per compressed byte.
    Ratio,
}

#[derive(Debug, Default)]
pub(crate) struct Meter {
    compressed: Cell<u64>,
    unpacked: Cell<u64>,
    budget: Cell<u64>,
    tripped: Cell<Option<Trip>>,
}

impl Meter {
    pub(crate) fn new(budget: u64) -> Rc<Meter> {
        let m = Meter::default();
        m.budget.set(budget);
        Rc::new(m)
    }

    /// Allows the decompressed stream to reach `end` bytes in all.
    pub(crate) fn allow_until(&self, end: u64) {
        self.budget.set(end);
    }

    pub(crate) fn tripped(&self) -> Option<Trip> {
        self.tripped.get()
    }

    fn trip(&self, why: Trip) -> io::Error {
        self.tripped.set(Some(why));
        io::Error::other("stopped by the decompression meter")
    }
}

/// The compressed side: counts bytes read from the file.
#[derive(Debug)]
pub(crate) struct Compressed<R> {
    pub(crate) inner: R,
    pub(crate) meter: Rc<Meter>,
}

impl<R: Read> Read for Compressed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let m = &self.meter;
        m.compressed.set(m.compressed.get() + n as u64);
        Ok(n)
    }
}

/// The decompressed side: counts bytes handed to the tar reader and stops at the budget or the
/// ratio.
#[derive(Debug)]
pub(crate) struct Unpacked<R> {
    pub(crate) inner: R,
    pub(crate) meter: Rc<Meter>,
}

impl<R: Read> Read for Unpacked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = &self.meter;
        let left = m.budget.get().saturating_sub(m.unpacked.get());
        if left == 0 && !buf.is_empty() {
            // Spent: only the end of the stream may follow.
            return match self.inner.read(&mut [0u8; 1])? {
                0 => Ok(0),
                _ => Err(m.trip(Trip::Budget)),
            };
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        let unpacked = m.unpacked.get() + n as u64;
        m.unpacked.set(unpacked);
        if unpacked > RATIO_FREE && unpacked > m.compressed.get().saturating_mul(MAX_RATIO) {
            return Err(m.trip(Trip::Ratio));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }

    fn drain(compressed: &[u8], budget: u64) -> (io::Result<u64>, Rc<Meter>) {
        let meter = Meter::new(budget);
        let input = Compressed {
            inner: compressed,
            meter: meter.clone(),
        };
        let mut out = Unpacked {
            inner: flate2::read::GzDecoder::new(input),
            meter: meter.clone(),
        };
        (io::copy(&mut out, &mut io::sink()), meter)
    }

    #[test]
    fn a_bomb_stops_at_the_ratio_long_before_its_end() {
        let bomb = gz(&vec![0u8; 64 << 20]);
        let (result, meter) = drain(&bomb, u64::MAX);
        assert!(result.is_err());
        assert_eq!(meter.tripped(), Some(Trip::Ratio));
        assert!(
            meter.unpacked.get() < 2 * RATIO_FREE,
            "{}",
            meter.unpacked.get()
        );
    }

    #[test]
    fn the_budget_bounds_the_stream() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let (result, meter) = drain(&gz(&data), 1000);
        assert!(result.is_err());
        assert_eq!(meter.tripped(), Some(Trip::Budget));
        assert_eq!(meter.unpacked.get(), 1000);
        let (result, meter) = drain(&gz(&data), 100_000);
        assert_eq!(result.expect("exactly the budget"), 100_000);
        assert_eq!(meter.tripped(), None);
    }
}
