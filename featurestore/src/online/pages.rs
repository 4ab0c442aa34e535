//! Pages: many records in one sled value.
//!
//! sled spends about 4 µs on every insert whatever the value's size, so a full
//! materialization of 100,000 keys spent most of its time in 100,000 inserts. A full
//! run now writes its records sorted into pages of up to [`PAGE_TARGET_BYTES`] (a few
//! hundred records each), plus one index of the pages' first keys; a read finds the page
//! by binary search in the index (kept in memory) and the record by binary search in the
//! page, without copying it. Incremental runs write single records to an overlay that
//! reads consult first (see `store.rs`).
//!
//! Page format (integers little-endian):
//!
//! ```text
//! u32 n | u32 offsets[n + 1] | [u128 short_keys[n]] | n entries: u32 key_len, key, value
//! ```
//!
//! The top bit of `n` says whether the short-key table is there: when every key is at
//! most 15 bytes, its order-preserving integer form (see [`PageIndex`]) lets the search
//! read one array instead of jumping between entries.
//!
//! `offsets[i]` is where entry `i` starts, counted from the first entry; `offsets[n]` is
//! the end, so the value of entry `i` runs to `offsets[i + 1]`.

use std::ops::Range;

use crate::{Error, Result};

/// A page closes when it holds this many bytes of records.
pub(crate) const PAGE_TARGET_BYTES: usize = 32 << 10;
/// ... or this many records.
pub(crate) const PAGE_MAX_RECORDS: usize = 512;

/// The order of encoded entity keys (byte order), without a `memcmp` call for the
/// common single-integer key (a tag byte and 8 big-endian bytes): reads compare keys
/// some thirty times per record.
#[inline]
pub(crate) fn cmp_keys(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    if let (Ok(a), Ok(b)) = (<&[u8; 9]>::try_from(a), <&[u8; 9]>::try_from(b)) {
        let word = |k: &[u8; 9]| u64::from_be_bytes(k[1..].try_into().expect("8 bytes"));
        return a[0].cmp(&b[0]).then_with(|| word(a).cmp(&word(b)));
    }
    a.cmp(b)
}

/// The first keys of a generation's pages, searched on every read.
pub(crate) enum PageIndex {
    /// Every first key is at most 15 bytes (integer keys, short strings): kept as
    /// order-preserving integers in one array, so a search touches a few cache lines.
    Short(Vec<u128>),
    /// Longer keys.
    Long(Vec<Vec<u8>>),
}

/// `key` as an integer with the same order as the bytes (for keys of at most 15
/// bytes): the bytes left-aligned, zero-padded, with the length in the last byte.
fn short(key: &[u8]) -> Option<u128> {
    if key.len() > 15 {
        return None;
    }
    let mut b = [0u8; 16];
    b[..key.len()].copy_from_slice(key);
    b[15] = key.len() as u8;
    Some(u128::from_be_bytes(b))
}

impl PageIndex {
    pub(crate) fn new(first_keys: Vec<Vec<u8>>) -> Self {
        match first_keys
            .iter()
            .map(|k| short(k))
            .collect::<Option<Vec<_>>>()
        {
            Some(words) => PageIndex::Short(words),
            None => PageIndex::Long(first_keys),
        }
    }

    /// The page that would hold `key`, if any.
    pub(crate) fn page_of(&self, key: &[u8]) -> Option<usize> {
        let p = match (self, short(key)) {
            (PageIndex::Short(w), Some(k)) => w.partition_point(|f| *f <= k),
            (PageIndex::Short(w), None) => {
                // A long key sorts after a short key exactly when the short key's bytes
                // are at most its first 15 bytes.
                let head = short(&key[..15]).expect("15 bytes");
                w.partition_point(|f| (*f & !0xff) <= (head & !0xff))
            }
            (PageIndex::Long(k), _) => k.partition_point(|f| cmp_keys(f, key).is_le()),
        };
        p.checked_sub(1)
    }
}

/// Split sorted, unique `records` into pages; returns (first key, page bytes) in order.
pub(crate) fn build(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut pages = Vec::new();
    let mut start = 0;
    while start < records.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < records.len()
            && end - start < PAGE_MAX_RECORDS
            && (end == start || bytes < PAGE_TARGET_BYTES)
        {
            bytes += records[end].0.len() + records[end].1.len() + 8;
            end += 1;
        }
        pages.push((records[start].0.clone(), encode(&records[start..end])));
        start = end;
    }
    pages
}

const SHORT_TABLE: u32 = 1 << 31;

fn encode(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let n = entries.len();
    let shorts: Option<Vec<u128>> = entries.iter().map(|(k, _)| short(k)).collect();
    let data: usize = entries.iter().map(|(k, v)| 4 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(4 + 4 * (n + 1) + 16 * n + data);
    let flag = if shorts.is_some() { SHORT_TABLE } else { 0 };
    out.extend_from_slice(&(n as u32 | flag).to_le_bytes());
    let mut off = 0u32;
    for (k, v) in entries {
        out.extend_from_slice(&off.to_le_bytes());
        off += (4 + k.len() + v.len()) as u32;
    }
    out.extend_from_slice(&off.to_le_bytes());
    for w in shorts.iter().flatten() {
        out.extend_from_slice(&w.to_le_bytes());
    }
    for (k, v) in entries {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    out
}

/// A page read back: bounds-checked views into its bytes.
pub(crate) struct Page<'a> {
    bytes: &'a [u8],
    n: usize,
    /// Where the short-key table starts, if there is one.
    shorts: Option<usize>,
    data: usize,
}

fn corrupt(message: impl Into<String>) -> Error {
    Error::Corrupt {
        what: "online store page".into(),
        message: message.into(),
    }
}

fn u32_at(b: &[u8], at: usize) -> Result<usize> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| corrupt(format!("truncated at byte {at}")))
}

impl<'a> Page<'a> {
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self> {
        let header = u32_at(bytes, 0)? as u32;
        let n = (header & !SHORT_TABLE) as usize;
        let table = 4 + 4 * (n + 1);
        let (shorts, data) = if header & SHORT_TABLE != 0 {
            (Some(table), table + 16 * n)
        } else {
            (None, table)
        };
        if data > bytes.len() {
            return Err(corrupt(format!(
                "{n} entries do not fit {} bytes",
                bytes.len()
            )));
        }
        Ok(Self {
            bytes,
            n,
            shorts,
            data,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// (key range, value range) of entry `i`, as positions in the page's bytes.
    pub(crate) fn entry(&self, i: usize) -> Result<(Range<usize>, Range<usize>)> {
        let start = self.data + u32_at(self.bytes, 4 + 4 * i)?;
        let end = self.data + u32_at(self.bytes, 8 + 4 * i)?;
        let key_len = u32_at(self.bytes, start)?;
        let key = start + 4..start + 4 + key_len;
        if key.end > end || end > self.bytes.len() {
            return Err(corrupt(format!("entry {i} runs past its end")));
        }
        Ok((key.clone(), key.end..end))
    }

    /// The value range of `key`, if the page holds it.
    pub(crate) fn find(&self, key: &[u8]) -> Result<Option<Range<usize>>> {
        if let Some(table) = self.shorts {
            // Every key of this page is short; a longer one is not here.
            let Some(probe) = short(key) else {
                return Ok(None);
            };
            let word = |i: usize| {
                let at = table + 16 * i;
                u128::from_le_bytes(self.bytes[at..at + 16].try_into().expect("16 bytes"))
            };
            let (mut lo, mut hi) = (0, self.n);
            while lo < hi {
                let mid = (lo + hi) / 2;
                match word(mid).cmp(&probe) {
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid,
                    std::cmp::Ordering::Equal => {
                        let (k, v) = self.entry(mid)?;
                        // The table and the entry must agree; a damaged page is an error.
                        return if &self.bytes[k] == key {
                            Ok(Some(v))
                        } else {
                            Err(corrupt(format!("entry {mid} disagrees with its key table")))
                        };
                    }
                }
            }
            return Ok(None);
        }
        let (mut lo, mut hi) = (0, self.n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (k, v) = self.entry(mid)?;
            match cmp_keys(&self.bytes[k], key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some(v)),
            }
        }
        Ok(None)
    }
}

/// Encode the list of page first keys (the index).
pub(crate) fn encode_index(first_keys: &[Vec<u8>]) -> Vec<u8> {
    let entries: Vec<(Vec<u8>, Vec<u8>)> =
        first_keys.iter().map(|k| (k.clone(), Vec::new())).collect();
    encode(&entries)
}

pub(crate) fn decode_index(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let page = Page::parse(bytes)?;
    let mut keys = Vec::with_capacity(page.len());
    for i in 0..page.len() {
        let (k, _) = page.entry(i)?;
        keys.push(bytes[k].to_vec());
    }
    if keys.windows(2).any(|w| w[0] >= w[1]) {
        return Err(corrupt("page index is not sorted"));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(n: usize, size: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n as u64)
            .map(|i| {
                (
                    i.to_be_bytes().to_vec(),
                    vec![i as u8; size + i as usize % 7],
                )
            })
            .collect()
    }

    #[test]
    fn every_record_is_found_in_its_page() {
        found_in_pages(recs(3_000, 100));
        // Keys over 15 bytes: pages without the short-key table.
        found_in_pages(
            recs(3_000, 100)
                .into_iter()
                .map(|(k, v)| ([b"a-long-key-prefix-".as_slice(), &k].concat(), v))
                .collect(),
        );
    }

    fn found_in_pages(records: Vec<(Vec<u8>, Vec<u8>)>) {
        let pages = build(&records);
        assert!(pages.len() > 5, "{} pages", pages.len());
        let firsts: Vec<Vec<u8>> = pages.iter().map(|p| p.0.clone()).collect();
        assert_eq!(decode_index(&encode_index(&firsts)).unwrap(), firsts);
        for (k, v) in &records {
            let p = firsts.partition_point(|f| f.as_slice() <= k.as_slice()) - 1;
            let page = Page::parse(&pages[p].1).unwrap();
            let r = page.find(k).unwrap().expect("found");
            assert_eq!(&pages[p].1[r], v.as_slice());
        }
        let page = Page::parse(&pages[0].1).unwrap();
        assert!(page.find(&[0xff; 8]).unwrap().is_none());
        assert!(page.find(&[0xff; 20]).unwrap().is_none());
    }

    #[test]
    fn the_page_index_agrees_with_byte_order() {
        let firsts: Vec<Vec<u8>> = vec![
            vec![1, 0, 0, 0, 0, 0, 0, 0, 1],
            vec![1, 0x80, 0, 0, 0, 0, 0, 0, 0],
            vec![2, 0, 0, 0, 2, b'a', b'b'],
            vec![2, 0, 0, 0, 20, b'x'],
        ];
        let index = PageIndex::new(firsts.clone());
        assert!(matches!(index, PageIndex::Short(_)));
        let long = PageIndex::Long(firsts.clone());
        let probes: Vec<Vec<u8>> = vec![
            vec![0],
            vec![1, 0, 0, 0, 0, 0, 0, 0, 1],
            vec![1, 0x7f, 0xff],
            vec![1, 0x80, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![2, 0, 0, 0, 2, b'a', b'b', b'c'],
            vec![
                2, 0, 0, 0, 20, b'x', 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
            ],
            vec![
                2, 0, 0, 0, 2, b'a', b'a', 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
            ],
            vec![3],
        ];
        for p in &probes {
            let expected = firsts.partition_point(|f| f <= p).checked_sub(1);
            assert_eq!(index.page_of(p), expected, "{p:?}");
            assert_eq!(long.page_of(p), expected, "{p:?}");
        }
    }

    #[test]
    fn key_order_is_byte_order() {
        let keys: Vec<Vec<u8>> = vec![
            vec![1, 0, 0, 0, 0, 0, 0, 0, 1],
            vec![1, 0, 0, 0, 0, 0, 0, 1, 0],
            vec![1, 0x80, 0, 0, 0, 0, 0, 0, 0],
            vec![2, 0, 0, 0, 0],
            vec![2, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![2, 0, 0, 0, 1, b'a'],
        ];
        for a in &keys {
            for b in &keys {
                assert_eq!(cmp_keys(a, b), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn a_record_larger_than_a_page_closes_its_page() {
        let mut records = recs(3, 10);
        records[1].1 = vec![1; PAGE_TARGET_BYTES * 3];
        let pages = build(&records);
        assert_eq!(pages.len(), 2);
    }

    #[test]
    fn damaged_pages_are_errors_not_panics() {
        let pages = build(&recs(50, 20));
        let bytes = &pages[0].1;
        for cut in 0..bytes.len() {
            if let Ok(p) = Page::parse(&bytes[..cut]) {
                for i in 0..p.len() {
                    let _ = p.entry(i);
                }
                let _ = p.find(&[0; 8]);
            }
        }
        let mut bad = bytes.clone();
        bad[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Page::parse(&bad).is_err());
    }
}
