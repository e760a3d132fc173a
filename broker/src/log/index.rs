//! Per-segment sparse indexes, kept in memory and persisted as `.index` and `.timeindex` files
//! when a segment is sealed and at a clean close. The byte layouts are in the module doc of
//! [`super`]. All positions and relative numbers fit in u32 because a segment is at most
//! `u32::MAX` bytes and every batch is at least `batch::HEADER_LEN` bytes.

use weir_proto::batch::{BatchHeader, BatchKind};

use crate::types::{Offset, RaftIndex, Term};

/// One sparse entry: the batch at `position` has Raft index `base_index + rel_index` and base
/// offset `base_offset + rel_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IndexEntry {
    pub(super) rel_index: u32,
    pub(super) rel_offset: u32,
    pub(super) position: u32,
}

/// One time entry: every batch up to and including the one at `position` has records with
/// timestamps at most `max_timestamp_ms`. Written when that running maximum grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TimeEntry {
    pub(super) max_timestamp_ms: i64,
    pub(super) rel_offset: u32,
    pub(super) position: u32,
}

/// Entries from `index` on (up to the next `TermStart`) have term `term`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TermStart {
    pub(super) index: RaftIndex,
    pub(super) term: Term,
}

/// The in-memory indexes of one segment.
#[derive(Debug, Clone)]
pub(super) struct SegmentIndex {
    base_index: RaftIndex,
    base_offset: Offset,
    /// Sorted by position; one at the first batch, at every term change and then at least every
    /// `index_interval_bytes`. Lookups by index or offset land at most one interval before the
    /// batch, then hop headers.
    pub(super) entries: Vec<IndexEntry>,
    /// Sorted by position, `max_timestamp_ms` strictly increasing.
    pub(super) times: Vec<TimeEntry>,
    /// Sorted by index, terms non-decreasing; the first is the first batch's term.
    pub(super) terms: Vec<TermStart>,
    /// Largest record timestamp in the segment; `i64::MIN` while it holds no records.
    pub(super) max_timestamp_ms: i64,
}

fn rel(value: u64, base: u64) -> u32 {
    u32::try_from(value.saturating_sub(base)).unwrap_or(u32::MAX)
}

impl SegmentIndex {
    pub(super) fn new(base_index: RaftIndex, base_offset: Offset) -> Self {
        Self {
            base_index,
            base_offset,
            entries: Vec::new(),
            times: Vec::new(),
            terms: Vec::new(),
            max_timestamp_ms: i64::MIN,
        }
    }

    /// Records the batch at `position`; batches must be observed in file order.
    pub(super) fn observe(&mut self, position: u64, header: &BatchHeader, interval_bytes: u32) {
        let position_u32 = u32::try_from(position).unwrap_or(u32::MAX);
        let rel_offset = rel(header.base_offset, self.base_offset.0);
        let term_changed = self.terms.last().is_none_or(|last| last.term.0 != header.term);
        if term_changed {
            self.terms.push(TermStart {
                index: RaftIndex(header.index),
                term: Term(header.term),
            });
        }
        let spaced = |last: Option<u32>| last.is_none_or(|p| position_u32.saturating_sub(p) >= interval_bytes);
        if term_changed || spaced(self.entries.last().map(|e| e.position)) {
            self.entries.push(IndexEntry {
                rel_index: rel(header.index, self.base_index.0),
                rel_offset,
                position: position_u32,
            });
        }
        let has_records = header.kind == BatchKind::Records && header.record_count > 0;
        if has_records && header.max_timestamp_ms > self.max_timestamp_ms {
            self.max_timestamp_ms = header.max_timestamp_ms;
            if spaced(self.times.last().map(|t| t.position)) {
                self.times.push(TimeEntry {
                    max_timestamp_ms: header.max_timestamp_ms,
                    rel_offset,
                    position: position_u32,
                });
            }
        }
    }

    /// Forgets the batches from `position` on (whose first one has index `index`). The caller
    /// recomputes `max_timestamp_ms` (see [`SegmentIndex::time_restart`]).
    pub(super) fn truncate(&mut self, index: RaftIndex, position: u64) {
        let keep = self.entries.partition_point(|e| u64::from(e.position) < position);
        self.entries.truncate(keep);
        let keep = self.times.partition_point(|t| u64::from(t.position) < position);
        self.times.truncate(keep);
        let keep = self.terms.partition_point(|t| t.index < index);
        self.terms.truncate(keep);
    }

    /// Where to start hopping to recompute the running maximum timestamp after a truncation:
    /// the last time entry (position, its maximum), or the segment start.
    pub(super) fn time_restart(&self) -> (u64, i64) {
        self.times
            .last()
            .map_or((0, i64::MIN), |t| (u64::from(t.position), t.max_timestamp_ms))
    }

    /// Position of an indexed batch at or before the batch with Raft index `index`.
    pub(super) fn seek_index(&self, index: RaftIndex) -> u64 {
        let target = index.0.saturating_sub(self.base_index.0);
        let after = self.entries.partition_point(|e| u64::from(e.rel_index) <= target);
        after.checked_sub(1).map_or(0, |i| u64::from(self.entries[i].position))
    }

    /// Position of an indexed batch at or before the batch that holds record `offset`.
    pub(super) fn seek_offset(&self, offset: Offset) -> u64 {
        let target = offset.0.saturating_sub(self.base_offset.0);
        let after = self.entries.partition_point(|e| u64::from(e.rel_offset) <= target);
        after.checked_sub(1).map_or(0, |i| u64::from(self.entries[i].position))
    }

    /// Position at or before the first batch holding a record with timestamp >= `timestamp_ms`.
    pub(super) fn seek_timestamp(&self, timestamp_ms: i64) -> u64 {
        let after = self.times.partition_point(|t| t.max_timestamp_ms < timestamp_ms);
        after.checked_sub(1).map_or(0, |i| u64::from(self.times[i].position))
    }

    /// Term of entry `index` (which the segment must hold).
    pub(super) fn term_of(&self, index: RaftIndex) -> Option<Term> {
        let after = self.terms.partition_point(|t| t.index <= index);
        after.checked_sub(1).map(|i| self.terms[i].term)
    }
}

/// What an `.index` file says about its segment besides the entries. `last_position` and
/// `last_crc` identify the segment's last batch, so that an index left over from other contents
/// of the same file is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IndexFileMeta {
    pub(super) base_index: RaftIndex,
    pub(super) base_offset: Offset,
    pub(super) segment_bytes: u64,
    pub(super) last_index: RaftIndex,
    pub(super) next_offset: Offset,
    pub(super) max_timestamp_ms: i64,
    pub(super) last_position: u64,
    pub(super) last_crc: u32,
}

const INDEX_MAGIC: [u8; 4] = *b"WIDX";
const TIME_INDEX_MAGIC: [u8; 4] = *b"WTIX";
const INDEX_VERSION: u8 = 1;
const INDEX_HEADER_LEN: usize = 72;
const TIME_HEADER_LEN: usize = 32;
const ENTRY_LEN: usize = 12;
const TERM_LEN: usize = 16;
const TIME_ENTRY_LEN: usize = 16;

pub(super) fn encode_index(meta: &IndexFileMeta, index: &SegmentIndex) -> Vec<u8> {
    let mut buf =
        Vec::with_capacity(INDEX_HEADER_LEN + ENTRY_LEN * index.entries.len() + TERM_LEN * index.terms.len() + 4);
    buf.extend_from_slice(&INDEX_MAGIC);
    buf.extend_from_slice(&[INDEX_VERSION, 0, 0, 0]);
    for field in [
        meta.base_index.0,
        meta.base_offset.0,
        meta.segment_bytes,
        meta.last_index.0,
        meta.next_offset.0,
        meta.max_timestamp_ms as u64,
    ] {
        buf.extend_from_slice(&field.to_le_bytes());
    }
    for field in [
        u32::try_from(meta.last_position).unwrap_or(u32::MAX),
        meta.last_crc,
        index.entries.len() as u32,
        index.terms.len() as u32,
    ] {
        buf.extend_from_slice(&field.to_le_bytes());
    }
    for entry in &index.entries {
        for field in [entry.rel_index, entry.rel_offset, entry.position] {
            buf.extend_from_slice(&field.to_le_bytes());
        }
    }
    for term in &index.terms {
        buf.extend_from_slice(&term.index.0.to_le_bytes());
        buf.extend_from_slice(&term.term.0.to_le_bytes());
    }
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

pub(super) fn encode_time_index(meta: &IndexFileMeta, index: &SegmentIndex) -> Vec<u8> {
    let mut buf = Vec::with_capacity(TIME_HEADER_LEN + TIME_ENTRY_LEN * index.times.len() + 4);
    buf.extend_from_slice(&TIME_INDEX_MAGIC);
    buf.extend_from_slice(&[INDEX_VERSION, 0, 0, 0]);
    buf.extend_from_slice(&meta.base_index.0.to_le_bytes());
    buf.extend_from_slice(&meta.segment_bytes.to_le_bytes());
    buf.extend_from_slice(&(index.times.len() as u32).to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    for time in &index.times {
        buf.extend_from_slice(&time.max_timestamp_ms.to_le_bytes());
        buf.extend_from_slice(&time.rel_offset.to_le_bytes());
        buf.extend_from_slice(&time.position.to_le_bytes());
    }
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

/// Reads little-endian fields from a byte slice without ever panicking.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let bytes = self.buf.get(self.at..self.at + N).ok_or("truncated")?;
        self.at += N;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}

/// Checks length, trailing CRC, magic and version; returns a reader positioned after them.
fn open_file<'a>(buf: &'a [u8], magic: [u8; 4], header_len: usize) -> Result<Reader<'a>, &'static str> {
    if buf.len() < header_len + 4 {
        return Err("shorter than its header");
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err("CRC mismatch");
    }
    if body[..4] != magic {
        return Err("wrong magic");
    }
    if body[4] != INDEX_VERSION {
        return Err("unsupported version");
    }
    Ok(Reader { buf: body, at: 8 })
}

/// Decodes an `.index` file into its meta and an index (without time entries). Rejects anything
/// inconsistent, so that lookups over a decoded index never misbehave.
pub(super) fn decode_index(buf: &[u8]) -> Result<(IndexFileMeta, SegmentIndex), &'static str> {
    let mut reader = open_file(buf, INDEX_MAGIC, INDEX_HEADER_LEN)?;
    let meta = IndexFileMeta {
        base_index: RaftIndex(reader.u64()?),
        base_offset: Offset(reader.u64()?),
        segment_bytes: reader.u64()?,
        last_index: RaftIndex(reader.u64()?),
        next_offset: Offset(reader.u64()?),
        max_timestamp_ms: reader.u64()? as i64,
        last_position: u64::from(reader.u32()?),
        last_crc: reader.u32()?,
    };
    let entry_count = reader.u32()? as usize;
    let term_count = reader.u32()? as usize;
    let expected = entry_count
        .checked_mul(ENTRY_LEN)
        .and_then(|e| term_count.checked_mul(TERM_LEN).and_then(|t| e.checked_add(t)))
        .and_then(|n| n.checked_add(INDEX_HEADER_LEN));
    if expected != Some(reader.buf.len()) {
        return Err("entry counts do not match the file length");
    }
    let mut index = SegmentIndex::new(meta.base_index, meta.base_offset);
    index.max_timestamp_ms = meta.max_timestamp_ms;
    for _ in 0..entry_count {
        let (rel_index, rel_offset, position) = (reader.u32()?, reader.u32()?, reader.u32()?);
        index.entries.push(IndexEntry {
            rel_index,
            rel_offset,
            position,
        });
    }
    for _ in 0..term_count {
        let (at, term) = (reader.u64()?, reader.u64()?);
        index.terms.push(TermStart {
            index: RaftIndex(at),
            term: Term(term),
        });
    }
    check_index(&meta, &index)?;
    Ok((meta, index))
}

fn check_index(meta: &IndexFileMeta, index: &SegmentIndex) -> Result<(), &'static str> {
    let entries = &index.entries;
    let ordered = entries.windows(2).all(|w| {
        w[0].position < w[1].position && w[0].rel_index < w[1].rel_index && w[0].rel_offset <= w[1].rel_offset
    });
    let span = meta
        .last_index
        .0
        .checked_sub(meta.base_index.0)
        .ok_or("last index below base")?;
    let inside = entries.iter().all(|e| {
        u64::from(e.position) < meta.segment_bytes
            && u64::from(e.rel_index) <= span
            && meta.base_offset.0.saturating_add(u64::from(e.rel_offset)) <= meta.next_offset.0
    });
    if !ordered || !inside || meta.next_offset < meta.base_offset {
        return Err("entries out of order or out of range");
    }
    if meta.segment_bytes > 0 && entries.first().is_none_or(|e| e.position != 0) {
        return Err("no entry for the first batch");
    }
    let terms = &index.terms;
    let terms_ordered = terms
        .windows(2)
        .all(|w| w[0].index < w[1].index && w[0].term < w[1].term);
    let terms_inside = terms
        .iter()
        .all(|t| t.index >= meta.base_index && t.index <= meta.last_index);
    let first_ok = meta.segment_bytes == 0 || terms.first().is_some_and(|t| t.index == meta.base_index);
    if !terms_ordered || !terms_inside || !first_ok {
        return Err("term list out of order or out of range");
    }
    if meta.last_position >= meta.segment_bytes.max(1) || meta.segment_bytes > u64::from(u32::MAX) {
        return Err("last batch position out of range");
    }
    Ok(())
}

/// Decodes a `.timeindex` file into `index.times` after checking it belongs to the same segment
/// as `meta`.
pub(super) fn decode_time_index(
    buf: &[u8],
    meta: &IndexFileMeta,
    index: &mut SegmentIndex,
) -> Result<(), &'static str> {
    let mut reader = open_file(buf, TIME_INDEX_MAGIC, TIME_HEADER_LEN)?;
    if reader.u64()? != meta.base_index.0 || reader.u64()? != meta.segment_bytes {
        return Err("time index belongs to other segment contents");
    }
    let count = reader.u32()? as usize;
    let _reserved = reader.u32()?;
    if count
        .checked_mul(TIME_ENTRY_LEN)
        .and_then(|n| n.checked_add(TIME_HEADER_LEN))
        != Some(reader.buf.len())
    {
        return Err("entry count does not match the file length");
    }
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let max_timestamp_ms = reader.u64()? as i64;
        let (rel_offset, position) = (reader.u32()?, reader.u32()?);
        times.push(TimeEntry {
            max_timestamp_ms,
            rel_offset,
            position,
        });
    }
    let ordered = times
        .windows(2)
        .all(|w| w[0].position < w[1].position && w[0].max_timestamp_ms < w[1].max_timestamp_ms);
    let inside = times
        .iter()
        .all(|t| u64::from(t.position) < meta.segment_bytes && t.max_timestamp_ms <= meta.max_timestamp_ms);
    if !ordered || !inside {
        return Err("time entries out of order or out of range");
    }
    index.times = times;
    Ok(())
}
