//! The golden segment: a checked-in file in the current format (version 1) that must keep
//! decoding to exactly these contents, and that the current code must still produce byte for
//! byte. Regenerate (only after a deliberate format change, with a new version and a new
//! fixture) with `WEIR_REGENERATE_FIXTURES=1 cargo test -p weir-broker --lib log::tests::golden`.

use std::fs;

use weir_proto::batch::{BatchBuilder, BatchKind};

use super::*;

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden-v1.log")
}

const T0: i64 = 1_700_000_000_000;

/// Writes the golden entries into a fresh log in `dir`; returns the segment's data.
fn produce(dir: &Path) -> Vec<u8> {
    let (mut log, _) = open(dir, small_config(64 * 1024));
    let mut first = BatchBuilder::new();
    first
        .push(T0, Some(b"k0"), Some(b"hello"), &[("h", Some(b"v"))])
        .unwrap();
    first.push(T0 + 1, Some(b"k1"), Some(b"world"), &[]).unwrap();
    let mut second = BatchBuilder::new();
    second.push(T0 + 10, None, Some(b"x"), &[("empty", None)]).unwrap();
    second.set_producer(42, 1, 0);
    let mut third = BatchBuilder::new();
    for i in 0..3u8 {
        third
            .push(T0 + 20 - i64::from(i), Some(&[b'a' + i]), None, &[])
            .unwrap();
    }
    let entries: [(u64, BatchKind, Vec<u8>); 5] = [
        (1, BatchKind::Records, first.finish()),
        (1, BatchKind::Noop, Vec::new()),
        (2, BatchKind::Records, second.finish()),
        (2, BatchKind::ConfChange, b"conf-change".to_vec()),
        (3, BatchKind::Records, third.finish()),
    ];
    for (term, kind, data) in &entries {
        let index = log.last_index().next();
        log.append(AppendEntry {
            index,
            term: Term(*term),
            kind: *kind,
            data,
        })
        .unwrap();
    }
    let len = log.active().len as usize;
    let path = log.active().path.clone();
    log.close().unwrap();
    fs::read(path).unwrap()[..len].to_vec()
}

#[test]
fn golden_segment_decodes_to_known_contents() {
    let produced = produce(tempfile::tempdir().unwrap().path());
    if std::env::var_os("WEIR_REGENERATE_FIXTURES").is_some() {
        fs::create_dir_all(fixture_path().parent().unwrap()).unwrap();
        fs::write(fixture_path(), &produced).unwrap();
    }
    let golden = fs::read(fixture_path()).expect("fixture present (see the module doc to regenerate)");
    assert_eq!(
        produced, golden,
        "the current code no longer writes format version 1 byte for byte"
    );

    let dir = tempfile::tempdir().unwrap();
    fs::copy(fixture_path(), dir.path().join("00000000000000000001.log")).unwrap();
    let (log, report) = open(dir.path(), small_config(64 * 1024));
    assert_eq!((report.truncated_bytes, report.scanned_bytes), (0, golden.len() as u64));
    let entries = log.entries(index(1), index(6), None).unwrap();
    let shape: Vec<_> = entries.iter().map(|e| (e.index.0, e.term.0, e.kind)).collect();
    assert_eq!(
        shape,
        [
            (1, 1, BatchKind::Records),
            (2, 1, BatchKind::Noop),
            (3, 2, BatchKind::Records),
            (4, 2, BatchKind::ConfChange),
            (5, 3, BatchKind::Records)
        ]
    );
    assert!(entries[1].data.is_empty());
    assert_eq!(&entries[3].data[..], b"conf-change");
    assert_eq!(log.next_offset(), Offset(6));

    let records = read_records(&log, 0);
    let summary: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.offset,
                r.timestamp_ms - T0,
                r.key.as_deref().map(<[u8]>::to_vec),
                r.value.as_deref().map(<[u8]>::to_vec),
            )
        })
        .collect();
    let bytes = |s: &str| Some(s.as_bytes().to_vec());
    assert_eq!(
        summary,
        [
            (0, 0, bytes("k0"), bytes("hello")),
            (1, 1, bytes("k1"), bytes("world")),
            (2, 10, None, bytes("x")),
            (3, 20, bytes("a"), None),
            (4, 19, bytes("b"), None),
            (5, 18, bytes("c"), None),
        ]
    );
    assert_eq!(
        (
            records[0].headers[0].key.as_str(),
            records[0].headers[0].value.as_deref()
        ),
        ("h", Some(&b"v"[..]))
    );
    assert_eq!(
        (
            records[2].headers[0].key.as_str(),
            records[2].headers[0].value.as_deref()
        ),
        ("empty", None)
    );
    let producer = weir_proto::batch::parse_header(&entries[2].data).unwrap();
    assert_eq!(
        (producer.producer_id, producer.producer_epoch, producer.base_sequence),
        (42, 1, 0)
    );
    assert_eq!(log.offset_for_timestamp(T0 + 15).unwrap(), Some(Offset(3)));
    assert_eq!(log.offset_for_timestamp(T0 + 20).unwrap(), Some(Offset(3)));
    assert_eq!(log.offset_for_timestamp(T0 + 21).unwrap(), None);
}
