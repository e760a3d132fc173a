//! The record batch: Weir's unit of storage, replication and transfer.
//!
//! A batch is both the wire format (producers send batches, fetches return stored batches as they
//! are) and the on-disk format (a segment file is a sequence of batches). One Raft entry holds one
//! batch. All integers are little-endian with explicit sizes.
//!
//! ```text
//! offset size field
//!  0     4    magic               b"WEIR"
//!  4     4    crc                 CRC-32 (IEEE) of bytes [8, length): everything after this field
//!  8     4    length              total batch length in bytes, this header included
//! 12     1    version             BatchVersion (1)
//! 13     1    kind                BatchKind: 0 records, 1 no-op, 2 conf change, 3 conf change v2
//! 14     2    attributes          bits 0-2 compression codec (0 = none); bit 3 compaction
//!                                  point (broker-written batches only, see
//!                                  [`ATTRIBUTE_COMPACTION_POINT`]); other bits zero
//! 16     8    term                Raft term of the entry      (stamped by the broker on append)
//! 24     8    index               Raft index of the entry     (stamped by the broker on append)
//! 32     8    base_offset         offset of the first record  (stamped by the broker on append)
//! 40     4    record_count        number of records; 0 for every kind but records
//! 44     4    reserved            zero
//! 48     8    first_timestamp_ms  timestamp of the first record (ms since the Unix epoch)
//! 56     8    max_timestamp_ms    largest record timestamp in the batch
//! 64     8    producer_id         -1 when the producer is not idempotent
//! 72     2    producer_epoch      -1 when not idempotent
//! 74     4    base_sequence       -1 when not idempotent
//! 78     2    reserved            zero
//! 80          body: records (kind 0) or the control payload (other kinds)
//! ```
//!
//! Each record of a records batch:
//!
//! ```text
//! 4  record_length     bytes of this record after this field
//! 4  offset_delta      record offset - base_offset (records are numbered 0, 1, 2, ... in a batch)
//! 8  timestamp_delta   record timestamp - first_timestamp_ms (signed)
//! 4  key_length        -1 = no key
//! .  key
//! 4  value_length      -1 = no value
//! .  value
//! 2  header_count
//!    per header: 2 key_length, key (UTF-8), 4 value_length (-1 = none), value
//! ```
//!
//! A batch is validated as a whole ([`validate`]) before it is trusted: magic, version, length,
//! CRC, and a walk over every record that checks it lies inside the batch and that the record
//! count matches. The broker validates each produced batch, and checks the CRC of each stored
//! batch again right after reading it from disk.

use bytes::{Buf, Bytes};

/// `b"WEIR"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"WEIR");
/// Attribute bit of a batch that restates everything a reader of its partition needs from
/// the batches before it (the group coordinator's checkpoint of `__consumer_offsets`): once
/// the batch is committed, every replica may delete whole segments below it. Only the broker
/// writes such batches; produce requests carrying it are refused.
pub const ATTRIBUTE_COMPACTION_POINT: u16 = 1 << 3;

/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 80;
/// Bytes of a record's fixed fields (length prefix included, no key, value or headers).
pub const RECORD_OVERHEAD: usize = 4 + 4 + 8 + 4 + 4 + 2;

const CRC_START: usize = 8;
const OFF_CRC: usize = 4;
const OFF_LENGTH: usize = 8;
const OFF_VERSION: usize = 12;
const OFF_KIND: usize = 13;
const OFF_ATTRIBUTES: usize = 14;
const OFF_TERM: usize = 16;
const OFF_INDEX: usize = 24;
const OFF_BASE_OFFSET: usize = 32;
const OFF_RECORD_COUNT: usize = 40;
const OFF_FIRST_TIMESTAMP: usize = 48;
const OFF_MAX_TIMESTAMP: usize = 56;
const OFF_PRODUCER_ID: usize = 64;
const OFF_PRODUCER_EPOCH: usize = 72;
const OFF_BASE_SEQUENCE: usize = 74;

/// Format versions. A change to the layout adds a variant and a golden fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BatchVersion {
    V1 = 1,
}

/// What a batch carries. Only `Records` batches hold records and advance offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BatchKind {
    Records = 0,
    /// An empty Raft entry (a new leader's first entry). Payload empty.
    Noop = 1,
    /// A Raft configuration change; payload is the encoded change, opaque to the log.
    ConfChange = 2,
    ConfChangeV2 = 3,
}

impl BatchKind {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Records),
            1 => Some(Self::Noop),
            2 => Some(Self::ConfChange),
            3 => Some(Self::ConfChangeV2),
            _ => None,
        }
    }
}

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: needs {needed} bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("not a Weir batch: magic {found:#010x}")]
    BadMagic { found: u32 },
    #[error("unsupported batch format version {found} (this build reads version 1)")]
    UnsupportedVersion { found: u8 },
    #[error("unknown batch kind {found}")]
    UnknownKind { found: u8 },
    #[error("unsupported attributes {found:#06x} (compression codecs are not supported yet)")]
    UnsupportedAttributes { found: u16 },
    #[error("batch length {length} is invalid (header is {HEADER_LEN} bytes, limit {limit})")]
    BadLength { length: usize, limit: usize },
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("malformed record {record} at byte {position}: {reason}")]
    MalformedRecord {
        record: u32,
        position: usize,
        reason: &'static str,
    },
    #[error("batch says {declared} records but holds {found}")]
    RecordCountMismatch { declared: u32, found: u32 },
}

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub crc: u32,
    pub length: u32,
    pub version: u8,
    pub kind: BatchKind,
    pub attributes: u16,
    pub term: u64,
    pub index: u64,
    pub base_offset: u64,
    pub record_count: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl BatchHeader {
    /// Offset after the last record of the batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}
fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}
fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// Reads the length field of a batch that starts at `buf[0]`, after checking the magic. Used to
/// hop from batch to batch without decoding the rest.
pub fn peek_length(buf: &[u8]) -> Result<usize, BatchError> {
    if buf.len() < 12 {
        return Err(BatchError::Truncated {
            needed: 12,
            available: buf.len(),
        });
    }
    let magic = u32_at(buf, 0);
    if magic != MAGIC {
        return Err(BatchError::BadMagic { found: magic });
    }
    Ok(u32_at(buf, OFF_LENGTH) as usize)
}

/// Decodes the fixed header of the batch at the start of `buf`. Checks magic, version, kind,
/// attributes and that the declared length fits in `buf`; does not check the CRC.
pub fn parse_header(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let length = peek_length(buf)?;
    if buf.len() < HEADER_LEN {
        return Err(BatchError::Truncated {
            needed: HEADER_LEN,
            available: buf.len(),
        });
    }
    if length < HEADER_LEN {
        return Err(BatchError::BadLength {
            length,
            limit: u32::MAX as usize,
        });
    }
    if length > buf.len() {
        return Err(BatchError::Truncated {
            needed: length,
            available: buf.len(),
        });
    }
    let version = buf[OFF_VERSION];
    if version != BatchVersion::V1 as u8 {
        return Err(BatchError::UnsupportedVersion { found: version });
    }
    let kind = BatchKind::from_u8(buf[OFF_KIND]).ok_or(BatchError::UnknownKind { found: buf[OFF_KIND] })?;
    let attributes = u16_at(buf, OFF_ATTRIBUTES);
    if attributes & !ATTRIBUTE_COMPACTION_POINT != 0 {
        return Err(BatchError::UnsupportedAttributes { found: attributes });
    }
    Ok(BatchHeader {
        crc: u32_at(buf, OFF_CRC),
        length: length as u32,
        version,
        kind,
        attributes,
        term: u64_at(buf, OFF_TERM),
        index: u64_at(buf, OFF_INDEX),
        base_offset: u64_at(buf, OFF_BASE_OFFSET),
        record_count: u32_at(buf, OFF_RECORD_COUNT),
        first_timestamp_ms: u64_at(buf, OFF_FIRST_TIMESTAMP) as i64,
        max_timestamp_ms: u64_at(buf, OFF_MAX_TIMESTAMP) as i64,
        producer_id: u64_at(buf, OFF_PRODUCER_ID) as i64,
        producer_epoch: u16_at(buf, OFF_PRODUCER_EPOCH) as i16,
        base_sequence: u32_at(buf, OFF_BASE_SEQUENCE) as i32,
    })
}

/// CRC of a batch as it should be stored in its crc field.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32fast::hash(&batch[CRC_START..])
}

/// Parses the header and checks the CRC of the batch at the start of `buf` (which may hold more
/// bytes after it). Does not walk the records: use this for batches that were fully validated
/// before they were stored.
pub fn check(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = parse_header(buf)?;
    let computed = compute_crc(&buf[..header.length as usize]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// CRC state of a batch's body (everything after the header), computed once while checking a
/// batch so that re-stamping its header does not read the body again.
#[derive(Clone)]
pub struct BodyCrc(crc32fast::Hasher);

/// Like [`check`], and also returns the body's CRC for [`stamp_with_body`].
pub fn check_with_body(buf: &[u8]) -> Result<(BatchHeader, BodyCrc), BatchError> {
    let header = parse_header(buf)?;
    let mut body = crc32fast::Hasher::new();
    body.update(&buf[HEADER_LEN..header.length as usize]);
    let computed = header_crc(buf, &body);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok((header, BodyCrc(body)))
}

/// The batch CRC from the header's covered bytes and the body's CRC.
fn header_crc(batch: &[u8], body: &crc32fast::Hasher) -> u32 {
    let mut whole = crc32fast::Hasher::new();
    whole.update(&batch[CRC_START..HEADER_LEN]);
    whole.combine(body);
    whole.finalize()
}

/// Fully validates one untrusted batch that must fill `buf` exactly: header, CRC, and every
/// record's framing, with the record count checked. `length_limit` bounds the batch size.
pub fn validate(buf: &[u8], length_limit: usize) -> Result<BatchHeader, BatchError> {
    let header = check(buf)?;
    let length = header.length as usize;
    if length != buf.len() || length > length_limit {
        return Err(BatchError::BadLength {
            length: buf.len(),
            limit: length_limit,
        });
    }
    let found = match header.kind {
        BatchKind::Records => walk_records(&buf[HEADER_LEN..length])?,
        _ => 0,
    };
    if found != header.record_count {
        return Err(BatchError::RecordCountMismatch {
            declared: header.record_count,
            found,
        });
    }
    Ok(header)
}

/// Checks the framing of every record in a records body; returns how many there are.
fn walk_records(body: &[u8]) -> Result<u32, BatchError> {
    let mut position = 0usize;
    let mut count = 0u32;
    while position < body.len() {
        let record = RawRecord::parse(&body[position..], count, position)?;
        if record.offset_delta != count {
            return Err(BatchError::MalformedRecord {
                record: count,
                position,
                reason: "offset delta out of sequence",
            });
        }
        position += record.total_length;
        count = count.checked_add(1).ok_or(BatchError::MalformedRecord {
            record: count,
            position,
            reason: "too many records",
        })?;
    }
    Ok(count)
}

/// Byte range inside a record.
type Span = (usize, usize);

/// Key range and value range of one record header.
type RawHeader = (Span, Option<Span>);

/// Positions of one record's parts inside a body slice.
struct RawRecord {
    total_length: usize,
    offset_delta: u32,
    timestamp_delta: i64,
    key: Option<(usize, usize)>,
    value: Option<(usize, usize)>,
    headers: Vec<RawHeader>,
}

impl RawRecord {
    fn parse(buf: &[u8], record: u32, base: usize) -> Result<Self, BatchError> {
        let bad = |reason| BatchError::MalformedRecord {
            record,
            position: base,
            reason,
        };
        if buf.len() < 4 {
            return Err(bad("record length prefix truncated"));
        }
        let record_length = u32_at(buf, 0) as usize;
        let total_length = 4usize
            .checked_add(record_length)
            .filter(|total| *total <= buf.len())
            .ok_or(bad("record runs past the end of the batch"))?;
        let rec = &buf[..total_length];
        let mut cursor = 4usize;
        let take = |cursor: &mut usize, n: usize| -> Result<usize, BatchError> {
            let start = *cursor;
            let end = start
                .checked_add(n)
                .filter(|end| *end <= rec.len())
                .ok_or(bad("field runs past the end of the record"))?;
            *cursor = end;
            Ok(start)
        };
        let at = take(&mut cursor, 4)?;
        let offset_delta = u32_at(rec, at);
        let at = take(&mut cursor, 8)?;
        let timestamp_delta = u64_at(rec, at) as i64;
        let optional_bytes = |cursor: &mut usize| -> Result<Option<(usize, usize)>, BatchError> {
            let at = take(cursor, 4)?;
            let length = u32_at(rec, at) as i32;
            if length == -1 {
                return Ok(None);
            }
            if length < 0 {
                return Err(bad("negative length"));
            }
            let start = take(cursor, length as usize)?;
            Ok(Some((start, start + length as usize)))
        };
        let key = optional_bytes(&mut cursor)?;
        let value = optional_bytes(&mut cursor)?;
        let at = take(&mut cursor, 2)?;
        let header_count = u16_at(rec, at) as usize;
        let mut headers = Vec::with_capacity(header_count.min(64));
        for _ in 0..header_count {
            let at = take(&mut cursor, 2)?;
            let key_length = u16_at(rec, at) as usize;
            let key_start = take(&mut cursor, key_length)?;
            if std::str::from_utf8(&rec[key_start..key_start + key_length]).is_err() {
                return Err(bad("header key is not UTF-8"));
            }
            let header_value = optional_bytes(&mut cursor)?;
            headers.push(((key_start, key_start + key_length), header_value));
        }
        if cursor != rec.len() {
            return Err(bad("record has trailing bytes"));
        }
        Ok(Self {
            total_length,
            offset_delta,
            timestamp_delta,
            key,
            value,
            headers,
        })
    }
}

/// Writes the broker-assigned fields into a stored batch and recomputes its CRC.
pub fn stamp(batch: &mut [u8], term: u64, index: u64, base_offset: u64) {
    write_stamp_fields(batch, term, index, base_offset);
    let crc = compute_crc(batch);
    batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// [`stamp`] for a batch whose body CRC is known (from [`check_with_body`]): only the header is
/// read again. `body` must be the CRC of this batch's body.
pub fn stamp_with_body(batch: &mut [u8], term: u64, index: u64, base_offset: u64, body: &BodyCrc) {
    write_stamp_fields(batch, term, index, base_offset);
    let crc = header_crc(batch, &body.0);
    batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

fn write_stamp_fields(batch: &mut [u8], term: u64, index: u64, base_offset: u64) {
    batch[OFF_TERM..OFF_TERM + 8].copy_from_slice(&term.to_le_bytes());
    batch[OFF_INDEX..OFF_INDEX + 8].copy_from_slice(&index.to_le_bytes());
    batch[OFF_BASE_OFFSET..OFF_BASE_OFFSET + 8].copy_from_slice(&base_offset.to_le_bytes());
}

/// Builds a batch with no records (`kind` other than `Records`) around an opaque payload.
pub fn control_batch(kind: BatchKind, term: u64, index: u64, base_offset: u64, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    write_header(&mut buf, kind, 0, 0, 0, -1, -1, -1);
    buf.extend_from_slice(payload);
    finish_length(&mut buf);
    stamp(&mut buf, term, index, base_offset);
    buf
}

#[allow(clippy::too_many_arguments)]
fn write_header(
    buf: &mut Vec<u8>,
    kind: BatchKind,
    record_count: u32,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) {
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes()); // crc, set by stamp
    buf.extend_from_slice(&0u32.to_le_bytes()); // length, set by finish_length
    buf.push(BatchVersion::V1 as u8);
    buf.push(kind as u8);
    buf.extend_from_slice(&0u16.to_le_bytes());
    buf.extend_from_slice(&[0u8; 24]); // term, index, base offset
    buf.extend_from_slice(&record_count.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    buf.extend_from_slice(&first_timestamp_ms.to_le_bytes());
    buf.extend_from_slice(&max_timestamp_ms.to_le_bytes());
    buf.extend_from_slice(&producer_id.to_le_bytes());
    buf.extend_from_slice(&producer_epoch.to_le_bytes());
    buf.extend_from_slice(&base_sequence.to_le_bytes());
    buf.extend_from_slice(&0u16.to_le_bytes());
    debug_assert_eq!(buf.len() % HEADER_LEN, 0);
}

fn finish_length(buf: &mut [u8]) {
    let length = buf.len() as u32;
    buf[OFF_LENGTH..OFF_LENGTH + 4].copy_from_slice(&length.to_le_bytes());
}

/// One header of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

/// A decoded record. Key, value and header values share the batch's buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// Accumulates records into a batch. The producer side of the format.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    record_count: u32,
    first_timestamp_ms: Option<i64>,
    max_timestamp_ms: i64,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::with_capacity(4096)
    }

    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes.max(HEADER_LEN));
        write_header(&mut buf, BatchKind::Records, 0, 0, 0, -1, -1, -1);
        Self {
            buf,
            record_count: 0,
            first_timestamp_ms: None,
            max_timestamp_ms: i64::MIN,
        }
    }

    /// Size of the batch if it were finished now.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes one record adds to a batch.
    pub fn record_size(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[(&str, Option<&[u8]>)]) -> usize {
        RECORD_OVERHEAD
            + key.map_or(0, <[u8]>::len)
            + value.map_or(0, <[u8]>::len)
            + headers
                .iter()
                .map(|(k, v)| 2 + k.len() + 4 + v.map_or(0, <[u8]>::len))
                .sum::<usize>()
    }

    /// Appends a record. Header keys longer than 65,535 bytes and more than 65,535 headers are
    /// rejected, as are fields over 2 GiB.
    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> Result<(), BatchError> {
        let bad = |reason| BatchError::MalformedRecord {
            record: self.record_count,
            position: self.buf.len(),
            reason,
        };
        if headers.len() > u16::MAX as usize || headers.iter().any(|(k, _)| k.len() > u16::MAX as usize) {
            return Err(bad("too many headers or header key too long"));
        }
        let too_big = |b: Option<&[u8]>| b.is_some_and(|b| b.len() > i32::MAX as usize);
        if too_big(key) || too_big(value) || headers.iter().any(|(_, v)| too_big(*v)) {
            return Err(bad("field larger than 2 GiB"));
        }
        let record_length = Self::record_size(key, value, headers) - 4;
        if record_length > u32::MAX as usize || self.buf.len() + record_length + 4 > u32::MAX as usize {
            return Err(bad("batch larger than 4 GiB"));
        }
        let first = *self.first_timestamp_ms.get_or_insert(timestamp_ms);
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        let buf = &mut self.buf;
        buf.extend_from_slice(&(record_length as u32).to_le_bytes());
        buf.extend_from_slice(&self.record_count.to_le_bytes());
        buf.extend_from_slice(&timestamp_ms.wrapping_sub(first).to_le_bytes());
        put_optional(buf, key);
        put_optional(buf, value);
        buf.extend_from_slice(&(headers.len() as u16).to_le_bytes());
        for (k, v) in headers {
            buf.extend_from_slice(&(k.len() as u16).to_le_bytes());
            buf.extend_from_slice(k.as_bytes());
            put_optional(buf, *v);
        }
        self.record_count += 1;
        Ok(())
    }

    /// Marks the batch as a compaction point (see [`ATTRIBUTE_COMPACTION_POINT`]).
    pub fn mark_compaction_point(&mut self) {
        self.buf[OFF_ATTRIBUTES..OFF_ATTRIBUTES + 2].copy_from_slice(&ATTRIBUTE_COMPACTION_POINT.to_le_bytes());
    }

    /// Sets the idempotent-producer fields.
    pub fn set_producer(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        self.buf[OFF_PRODUCER_ID..OFF_PRODUCER_ID + 8].copy_from_slice(&producer_id.to_le_bytes());
        self.buf[OFF_PRODUCER_EPOCH..OFF_PRODUCER_EPOCH + 2].copy_from_slice(&producer_epoch.to_le_bytes());
        self.buf[OFF_BASE_SEQUENCE..OFF_BASE_SEQUENCE + 4].copy_from_slice(&base_sequence.to_le_bytes());
    }

    /// Completes the header (count, timestamps, length, CRC) and returns the batch bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let first = self.first_timestamp_ms.unwrap_or(0);
        let max = if self.record_count == 0 {
            0
        } else {
            self.max_timestamp_ms
        };
        self.buf[OFF_RECORD_COUNT..OFF_RECORD_COUNT + 4].copy_from_slice(&self.record_count.to_le_bytes());
        self.buf[OFF_FIRST_TIMESTAMP..OFF_FIRST_TIMESTAMP + 8].copy_from_slice(&first.to_le_bytes());
        self.buf[OFF_MAX_TIMESTAMP..OFF_MAX_TIMESTAMP + 8].copy_from_slice(&max.to_le_bytes());
        finish_length(&mut self.buf);
        stamp(&mut self.buf, 0, 0, 0);
        self.buf
    }
}

fn put_optional(buf: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => buf.extend_from_slice(&(-1i32).to_le_bytes()),
        Some(b) => {
            buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
            buf.extend_from_slice(b);
        }
    }
}

/// One batch cut out of a buffer of concatenated batches; shares that buffer.
#[derive(Debug, Clone)]
pub struct Batch {
    pub header: BatchHeader,
    /// The whole batch, header included.
    pub bytes: Bytes,
}

impl Batch {
    /// Decodes the records of a records batch (none for other kinds). The batch must have
    /// passed [`validate`] or [`check`] (batches from [`BatchReader`] have).
    pub fn records(&self) -> Result<Vec<Record>, BatchError> {
        let mut records = Vec::with_capacity(self.header.record_count as usize);
        if self.header.kind != BatchKind::Records {
            return Ok(records);
        }
        let body = self.bytes.slice(HEADER_LEN..);
        let mut position = 0usize;
        let slice = |range: Option<(usize, usize)>, start: usize| range.map(|(a, b)| body.slice(start + a..start + b));
        while position < body.len() {
            let raw = RawRecord::parse(&body[position..], records.len() as u32, position)?;
            records.push(Record {
                offset: self.header.base_offset + u64::from(raw.offset_delta),
                timestamp_ms: self.header.first_timestamp_ms.wrapping_add(raw.timestamp_delta),
                key: slice(raw.key, position),
                value: slice(raw.value, position),
                headers: raw
                    .headers
                    .iter()
                    .map(|&((a, b), value)| Header {
                        key: String::from_utf8_lossy(&body[position + a..position + b]).into_owned(),
                        value: slice(value, position),
                    })
                    .collect(),
            });
            position += raw.total_length;
        }
        Ok(records)
    }
}

/// Iterates over the batches in a buffer of concatenated batches (a fetch response), checking
/// each batch's CRC and record framing. Stops with an error at the first bad batch.
pub struct BatchReader {
    buf: Bytes,
    length_limit: usize,
}

impl BatchReader {
    pub fn new(buf: Bytes) -> Self {
        Self {
            buf,
            length_limit: u32::MAX as usize,
        }
    }
}

impl Iterator for BatchReader {
    type Item = Result<Batch, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let result = peek_length(&self.buf).and_then(|length| {
            let batch = self.buf.get(..length).ok_or(BatchError::Truncated {
                needed: length,
                available: self.buf.len(),
            })?;
            validate(batch, self.length_limit).map(|header| (header, length))
        });
        match result {
            Ok((header, length)) => {
                let bytes = self.buf.split_to(length);
                Some(Ok(Batch { header, bytes }))
            }
            Err(error) => {
                self.buf.advance(self.buf.len());
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        builder
            .push(1_000, Some(b"k1"), Some(b"hello"), &[("h", Some(b"v"))])
            .unwrap();
        builder.push(999, None, Some(b""), &[]).unwrap();
        builder.push(1_005, Some(b""), None, &[("x", None)]).unwrap();
        builder.finish()
    }

    #[test]
    fn round_trip_with_stamp() {
        let mut batch = sample();
        stamp(&mut batch, 7, 42, 100);
        let header = validate(&batch, usize::MAX).unwrap();
        assert_eq!(
            (header.term, header.index, header.base_offset, header.record_count),
            (7, 42, 100, 3)
        );
        assert_eq!((header.first_timestamp_ms, header.max_timestamp_ms), (1_000, 1_005));
        let records: Vec<_> = BatchReader::new(Bytes::from(batch))
            .next()
            .unwrap()
            .unwrap()
            .records()
            .unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(records[0].headers[0].key, "h");
        assert_eq!(records[1].offset, 101);
        assert_eq!(records[1].timestamp_ms, 999);
        assert_eq!(records[1].key, None);
        assert_eq!(records[2].value, None);
        assert_eq!(records[2].headers[0].value, None);
    }

    #[test]
    fn stamping_with_the_body_crc_matches_a_full_stamp() {
        let mut full = sample();
        let (_, body) = check_with_body(&full).unwrap();
        let mut fast = full.clone();
        stamp(&mut full, 9, 10, 11);
        stamp_with_body(&mut fast, 9, 10, 11, &body);
        assert_eq!(full, fast);
        let mut bad = sample();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(check_with_body(&bad), Err(BatchError::CrcMismatch { .. })));
    }

    #[test]
    fn corruption_is_detected() {
        let batch = sample();
        for at in 0..batch.len() {
            let mut bad = batch.clone();
            bad[at] ^= 0x40;
            assert!(validate(&bad, usize::MAX).is_err(), "flip at byte {at} went unnoticed");
        }
        assert!(validate(&batch[..batch.len() - 1], usize::MAX).is_err());
        assert!(matches!(validate(&batch, 100), Err(BatchError::BadLength { .. })));
    }

    #[test]
    fn control_batches_hold_payload_and_no_records() {
        let batch = control_batch(BatchKind::ConfChange, 3, 9, 55, b"payload");
        let header = validate(&batch, usize::MAX).unwrap();
        assert_eq!(header.kind, BatchKind::ConfChange);
        assert_eq!(header.next_offset(), 55);
        assert_eq!(&batch[HEADER_LEN..], b"payload");
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = validate(&bytes, usize::MAX);
            for batch in BatchReader::new(Bytes::from(bytes)).flatten() {
                let _ = batch.records();
            }
        }

        #[test]
        fn decoder_never_panics_on_mutated_batches(at in 0usize..200, value in any::<u8>(), cut in 0usize..200) {
            let mut batch = sample();
            let len = batch.len();
            batch[at % len] = value;
            batch.truncate(len - cut % len);
            let _ = validate(&batch, usize::MAX);
            for batch in BatchReader::new(Bytes::from(batch)).flatten() {
                let _ = batch.records();
            }
        }

        #[test]
        fn records_round_trip(records in proptest::collection::vec(
            (any::<i64>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
             proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50))), 1..20)) {
            let mut builder = BatchBuilder::new();
            for (ts, key, value) in &records {
                builder.push(*ts, key.as_deref(), value.as_deref(), &[]).unwrap();
            }
            let batch = builder.finish();
            let decoded = BatchReader::new(Bytes::from(batch)).next().unwrap().unwrap().records().unwrap();
            prop_assert_eq!(decoded.len(), records.len());
            for (got, (ts, key, value)) in decoded.iter().zip(&records) {
                prop_assert_eq!(got.timestamp_ms, *ts);
                prop_assert_eq!(got.key.as_deref(), key.as_deref());
                prop_assert_eq!(got.value.as_deref(), value.as_deref());
            }
        }
    }
}
