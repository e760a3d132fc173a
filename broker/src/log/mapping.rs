//! A memory mapping of one segment file, shared by the log (the only writer) and by the
//! zero-copy views that reads hand out.

use std::fs::File;
use std::io;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

/// One mapping of a segment file: read-write over the whole file for the active segment (of
/// which only the allocated prefix may be written, see `Segment::allocated`), read-only over the
/// data for a sealed one.
///
/// Aliasing rules. The log writes only through [`Mapping::bytes_mut`], only while it holds the
/// `PartitionLog` mutably, and normally only past the data length, where no reader looks. The
/// exception is truncation (and the recycling of a truncated segment), which zeroes bytes that a
/// view of a truncated entry may still cover: such a view can observe the change. Raft truncates
/// only uncommitted entries, which fetches never serve, so only raft-internal readers could hold
/// one, and they do not keep views across a truncation.
pub(super) struct Mapping {
    raw: MmapRaw,
    writable: bool,
}

fn to_usize(len: u64) -> io::Result<usize> {
    usize::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mapping too large"))
}

impl Mapping {
    /// Maps `[0, len)` of `file` read-write. The file must be at least `len` bytes long; only its
    /// allocated blocks (see `fsutil::allocate`) may be written, so that no write faults.
    pub(super) fn read_write(file: &File, len: u64) -> io::Result<Self> {
        let raw = MmapOptions::new().len(to_usize(len)?).map_raw(file)?;
        Ok(Self { raw, writable: true })
    }

    /// Maps `[0, len)` of `file` read-only.
    pub(super) fn read_only(file: &File, len: u64) -> io::Result<Self> {
        let raw = MmapOptions::new().len(to_usize(len)?).map_raw_read_only(file)?;
        Ok(Self { raw, writable: false })
    }

    pub(super) fn len(&self) -> u64 {
        self.raw.len() as u64
    }

    pub(super) fn is_writable(&self) -> bool {
        self.writable
    }

    /// The bytes in `[start, end)`.
    pub(super) fn bytes(&self, start: u64, end: u64) -> &[u8] {
        assert!(
            start <= end && end <= self.len(),
            "range {start}..{end} outside mapping of {}",
            self.len()
        );
        // SAFETY: the range lies inside the mapping, which outlives the returned borrow. The log
        // writes only under `&mut PartitionLog` and only where no shared borrow points (see the
        // type's doc for the truncation exception, which concerns views, not these borrows).
        unsafe { std::slice::from_raw_parts(self.raw.as_ptr().add(start as usize), (end - start) as usize) }
    }

    /// The bytes in `[start, end)`, writable.
    ///
    /// # Safety
    /// The caller holds the owning log mutably (it is the only writer) and no slice returned by
    /// [`Mapping::bytes`] that overlaps the range is alive.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn bytes_mut(&self, start: u64, end: u64) -> &mut [u8] {
        assert!(self.writable, "write through a read-only mapping");
        assert!(
            start <= end && end <= self.len(),
            "range {start}..{end} outside mapping of {}",
            self.len()
        );
        // SAFETY: in bounds as asserted; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.raw.as_mut_ptr().add(start as usize), (end - start) as usize) }
    }

    /// Writes zeros over `[start, end)`.
    ///
    /// # Safety
    /// As for [`Mapping::bytes_mut`].
    pub(super) unsafe fn zero(&self, start: u64, end: u64) {
        // SAFETY: forwarded contract.
        unsafe { self.bytes_mut(start, end) }.fill(0);
    }

    /// msync(MS_SYNC) of `[start, end)`: returns once those bytes are on stable storage.
    pub(super) fn flush_range(&self, start: u64, end: u64) -> io::Result<()> {
        if end <= start {
            return Ok(());
        }
        self.raw.flush_range(to_usize(start)?, to_usize(end - start)?)
    }

    /// Faults the pages of `[start, end)` in for writing, so that the appends that land there
    /// copy into resident pages instead of taking one page fault per 4 KiB (which costs more than
    /// the copy). Best effort: kernels before 5.14 lack MADV_POPULATE_WRITE and skip it. The
    /// pages stay zero; the kernel only maps them. Only for allocated ranges: on a hole it
    /// would allocate blocks (and fail on a full disk).
    pub(super) fn prefault(&self, start: u64, end: u64) {
        let end = end.min(self.len());
        if !self.writable || end <= start {
            return;
        }
        const PAGE: u64 = 4096;
        let aligned = start - start % PAGE;
        // SAFETY: the range is inside the mapping; MADV_POPULATE_WRITE does not change contents.
        let result = unsafe {
            libc::madvise(
                self.raw.as_mut_ptr().add(aligned as usize).cast(),
                (end - aligned) as usize,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if result != 0 {
            tracing::trace!(error = %io::Error::last_os_error(), "prefault skipped");
        }
    }
}

/// The owner behind a [`Bytes`] view: keeps the mapping alive while any slice of it exists.
struct View {
    map: Arc<Mapping>,
    start: u64,
    end: u64,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        self.map.bytes(self.start, self.end)
    }
}

/// A zero-copy view of `[start, end)` of `map`; the data is copied only when someone encodes it.
pub(super) fn view(map: &Arc<Mapping>, start: u64, end: u64) -> Bytes {
    Bytes::from_owner(View {
        map: Arc::clone(map),
        start,
        end,
    })
}

/// Least and most bytes the background prefaulter keeps faulted in ahead of the tail of an active
/// segment; in between, twice what the writer advanced since the previous request, so that idle
/// partitions do not pin dirty (zero) pages.
pub(super) const PREFAULT_WINDOW_MIN_BYTES: u64 = 128 << 10;
pub(super) const PREFAULT_WINDOW_MAX_BYTES: u64 = 8 << 20;
/// Bound of the prefaulter's queue; requests beyond it are dropped (prefaulting is best effort).
const PREFAULT_QUEUE_MAX: usize = 256;

struct PrefaultRequest {
    map: Arc<Mapping>,
    start: u64,
    end: u64,
}

/// One process-wide thread that faults pages in ahead of the writers: first-touch page faults
/// cost more than the copy itself (about 0.6 µs per 4 KiB), so doing them off the raft thread
/// lets appends run at memcpy speed. Safe to run concurrently with writes to the same pages:
/// MADV_POPULATE_WRITE never changes contents.
static PREFAULTER: OnceLock<Option<SyncSender<PrefaultRequest>>> = OnceLock::new();

/// Asks the prefaulter to fault `[start, end)` of `map` in; false if it could not take the request.
pub(super) fn prefault_async(map: &Arc<Mapping>, start: u64, end: u64) -> bool {
    let sender = PREFAULTER.get_or_init(|| {
        let (sender, receiver) = sync_channel::<PrefaultRequest>(PREFAULT_QUEUE_MAX);
        let spawned = std::thread::Builder::new().name("weir-prefault".into()).spawn(move || {
            for request in receiver {
                request.map.prefault(request.start, request.end);
            }
        });
        match spawned {
            Ok(_) => Some(sender),
            Err(error) => {
                tracing::warn!(%error, "no prefault thread: appends take their own page faults");
                None
            }
        }
    });
    let request = PrefaultRequest {
        map: Arc::clone(map),
        start,
        end,
    };
    sender.as_ref().is_some_and(|sender| sender.try_send(request).is_ok())
}
