//! The read path: the Raft storage view (terms, entries) and the record view (offsets, time).
//! Every batch is CRC-checked right after it is read; a mismatch is `Corrupt`, never served.

use bytes::Bytes;
use weir_proto::batch::{self, BatchHeader, BatchKind, HEADER_LEN};

use super::error::LogError;
use super::mapping::view;
use super::segment::{end_offset, Segment};
use super::{PartitionLog, ReadChunk, StoredEntry};
use crate::types::{Offset, RaftIndex, Term};

/// How many bytes a read may still return; the first batch is always allowed.
struct Budget {
    max_bytes: usize,
    used: usize,
}

impl Budget {
    fn admits(&self, length: usize) -> bool {
        self.used == 0 || self.used.saturating_add(length) <= self.max_bytes
    }
}

impl PartitionLog {
    /// Term of entry `index`; `log_start.index` answers `log_start.term`.
    pub fn term(&self, index: RaftIndex) -> Result<Term, LogError> {
        if index == self.log_start.index {
            return Ok(self.log_start.term);
        }
        let segment = self.stored_segment(index)?;
        segment
            .index
            .term_of(index)
            .ok_or_else(|| segment.corrupt(0, format!("no term recorded for entry {index}")))
    }

    /// Offset after the records of entry `index`; `log_start.index` answers `log_start.offset`.
    pub fn next_offset_after(&self, index: RaftIndex) -> Result<Offset, LogError> {
        if index == self.log_start.index {
            return Ok(self.log_start.offset);
        }
        if index == self.last_index() {
            return Ok(self.next_offset());
        }
        let segment = self.stored_segment(index)?;
        let header = segment.header_at(segment.find_index(index)?)?;
        Ok(Offset(end_offset(&header)))
    }

    /// The segment holding entry `index`, or why there is none.
    fn stored_segment(&self, index: RaftIndex) -> Result<&Segment, LogError> {
        let first = self.first_index();
        if index < first {
            return Err(LogError::Unavailable { index, first });
        }
        let last = self.last_index();
        if index > last {
            return Err(LogError::OutOfRange {
                requested: index.0,
                first: self.log_start.index.0,
                last: last.0,
            });
        }
        let at = self
            .segment_for_index(index)
            .ok_or_else(|| LogError::corrupt(&self.dir, 0, format!("no segment holds entry {index}")))?;
        Ok(&self.segments[at])
    }

    /// Entries `[low, high)`, at most `max_bytes` of batches but at least one entry when
    /// `low < high`.
    pub fn entries(
        &self,
        low: RaftIndex,
        high: RaftIndex,
        max_bytes: Option<u64>,
    ) -> Result<Vec<StoredEntry>, LogError> {
        self.collect(low, high, max_bytes, Payload::Checked)
    }

    /// Like [`Self::entries`], but records batches come without their bytes and unchecked:
    /// for a Raft layer that needs only the entries' kinds and the bytes of configuration
    /// changes (which are checked). Records data is never read, so it cannot fail on it.
    pub fn entry_kinds(
        &self,
        low: RaftIndex,
        high: RaftIndex,
        max_bytes: Option<u64>,
    ) -> Result<Vec<StoredEntry>, LogError> {
        self.collect(low, high, max_bytes, Payload::ControlOnly)
    }

    /// Headers of entries `[low, high)`, unchecked (for the producer table, which only takes
    /// hints from them).
    pub fn batch_headers(&self, low: RaftIndex, high: RaftIndex) -> Result<Vec<BatchHeader>, LogError> {
        let mut headers = Vec::with_capacity(((high.0.saturating_sub(low.0)) as usize).min(1 << 16));
        let mut index = low;
        while index < high {
            let segment = self.stored_segment(index)?;
            let mut position = segment.find_index(index)?;
            while index < high && position < segment.len {
                let header = segment.header_at(position)?;
                if header.index != index.0 {
                    return Err(segment.corrupt(position, format!("expected entry {index}, found {}", header.index)));
                }
                position += u64::from(header.length);
                headers.push(header);
                index = index.next();
            }
        }
        Ok(headers)
    }

    fn collect(
        &self,
        low: RaftIndex,
        high: RaftIndex,
        max_bytes: Option<u64>,
        payload: Payload,
    ) -> Result<Vec<StoredEntry>, LogError> {
        let first = self.first_index();
        if low < first {
            return Err(LogError::Unavailable { index: low, first });
        }
        let last = self.last_index();
        if high > last.next() || low > high {
            return Err(LogError::OutOfRange {
                requested: high.0,
                first: first.0,
                last: last.0,
            });
        }
        let mut budget = Budget {
            max_bytes: max_bytes.map_or(usize::MAX, |max| usize::try_from(max).unwrap_or(usize::MAX)),
            used: 0,
        };
        let mut entries = Vec::with_capacity(((high.0 - low.0) as usize).min(1024));
        let mut index = low;
        while index < high {
            let segment = self.stored_segment(index)?;
            if !collect_entries(segment, &mut index, high, &mut budget, payload, &mut entries)? {
                break;
            }
        }
        Ok(entries)
    }

    /// Records batches holding offsets in `[from, until)`: the first may start before `from`; a
    /// batch is included only if it ends at or before `until`; at least one batch is returned
    /// even if larger than `max_bytes`.
    pub fn read(&self, from: Offset, until: Offset, max_bytes: usize) -> Result<ReadChunk, LogError> {
        let (start, end) = (self.start_offset(), self.next_offset());
        if from < start || from > end {
            return Err(LogError::OutOfRange {
                requested: from.0,
                first: start.0,
                last: end.0,
            });
        }
        let mut chunk = ReadChunk {
            slices: Vec::new(),
            next_offset: from,
        };
        let until = until.min(end);
        let mut budget = Budget { max_bytes, used: 0 };
        let mut at = self.segments.partition_point(|segment| segment.next_offset <= from);
        let mut position = match self.segments.get(at) {
            Some(segment) if from < until => segment.find_offset(from)?,
            _ => return Ok(chunk),
        };
        while let Some(segment) = self.segments.get(at) {
            if !collect_records(segment, position, until, &mut budget, &mut chunk)? {
                break;
            }
            at += 1;
            position = 0;
        }
        Ok(chunk)
    }

    /// First offset whose record timestamp is at least `timestamp_ms` (`None`: no such record).
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<Offset>, LogError> {
        // Segments before the first one that reaches the timestamp hold no such record.
        let Some(segment) = self
            .segments
            .iter()
            .find(|segment| segment.index.max_timestamp_ms >= timestamp_ms)
        else {
            return Ok(None);
        };
        let mut position = segment.index.seek_timestamp(timestamp_ms);
        while position < segment.len {
            let header = segment.checked_at(position)?;
            let end = position + u64::from(header.length);
            let has_records = header.kind == BatchKind::Records && header.record_count > 0;
            if has_records && header.max_timestamp_ms >= timestamp_ms {
                let found = batch::Batch {
                    header,
                    bytes: view(&segment.map, position, end),
                }
                .records()
                .map_err(|error| segment.corrupt(position, error.to_string()))?
                .into_iter()
                .find(|record| record.timestamp_ms >= timestamp_ms);
                if let Some(record) = found {
                    return Ok(Some(Offset(record.offset)));
                }
            }
            position = end;
        }
        Ok(None)
    }
}

/// Appends the entries of `segment` from `*index` on to `out`. Returns whether the caller should
/// go on with the next segment.
/// What [`collect_entries`] returns of each entry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Payload {
    /// Every batch CRC-checked and returned.
    Checked,
    /// Records batches neither checked nor returned; control batches checked and returned.
    ControlOnly,
}

fn collect_entries(
    segment: &Segment,
    index: &mut RaftIndex,
    high: RaftIndex,
    budget: &mut Budget,
    payload: Payload,
    out: &mut Vec<StoredEntry>,
) -> Result<bool, LogError> {
    let start = segment.find_index(*index)?;
    let bytes = view(&segment.map, start, segment.len);
    let mut position = start;
    while *index < high && position < segment.len {
        let header = segment.header_at(position)?;
        let header = if payload == Payload::ControlOnly && header.kind == BatchKind::Records {
            header
        } else {
            segment.checked_at(position)?
        };
        if header.index != index.0 {
            return Err(segment.corrupt(position, format!("expected entry {index}, found {}", header.index)));
        }
        let length = header.length as usize;
        if !budget.admits(length) {
            return Ok(false);
        }
        budget.used += length;
        let at = (position - start) as usize;
        let data = match header.kind {
            BatchKind::Records if payload == Payload::ControlOnly => Bytes::new(),
            BatchKind::Records => bytes.slice(at..at + length),
            _ => bytes.slice(at + HEADER_LEN..at + length),
        };
        out.push(StoredEntry {
            index: *index,
            term: Term(header.term),
            kind: header.kind,
            data,
        });
        *index = index.next();
        position += length as u64;
    }
    Ok(true)
}

/// Appends runs of records batches of `segment`, from the batch at `start` on, to `chunk`.
/// Returns whether the caller should go on with the next segment.
fn collect_records(
    segment: &Segment,
    start: u64,
    until: Offset,
    budget: &mut Budget,
    chunk: &mut ReadChunk,
) -> Result<bool, LogError> {
    let mut bytes: Option<Bytes> = None;
    let mut run: Option<(u64, u64)> = None;
    let mut emit = |run: (u64, u64), chunk: &mut ReadChunk| {
        let bytes = bytes.get_or_insert_with(|| view(&segment.map, start, segment.len));
        chunk
            .slices
            .push(bytes.slice((run.0 - start) as usize..(run.1 - start) as usize));
    };
    let mut more = true;
    let mut position = start;
    while position < segment.len && chunk.next_offset < until {
        let header = segment.checked_at(position)?;
        let end = position + u64::from(header.length);
        if header.kind == BatchKind::Records && header.record_count > 0 {
            let next = end_offset(&header);
            if next > until.0 || !budget.admits(header.length as usize) {
                more = false;
                break;
            }
            budget.used += header.length as usize;
            chunk.next_offset = Offset(next);
            run = Some((run.map_or(position, |run| run.0), end));
        } else if let Some(done) = run.take() {
            emit(done, chunk);
        }
        position = end;
    }
    if let Some(done) = run {
        emit(done, chunk);
    }
    Ok(more && chunk.next_offset < until)
}
