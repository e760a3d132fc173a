//! Property tests: random operation sequences against an in-memory model, and open on random or
//! mutated files (never a panic: `Ok` or an error). Fixed seeds keep runs deterministic.

use std::fs;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use weir_proto::batch::{self, BatchKind};

use super::*;

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x5745_4952),
        failure_persistence: None,
        ..Config::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Records {
        count: usize,
        value_len: usize,
        new_term: bool,
    },
    Control {
        kind: BatchKind,
        new_term: bool,
    },
    Truncate {
        back: u64,
    },
    Reopen {
        clean: bool,
    },
    Flush,
    Reserve {
        bytes: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        Just(BatchKind::Noop),
        Just(BatchKind::ConfChange),
        Just(BatchKind::ConfChangeV2)
    ];
    prop_oneof![
        8 => (1usize..6, 0usize..300, prop::bool::weighted(0.1))
            .prop_map(|(count, value_len, new_term)| Op::Records { count, value_len, new_term }),
        2 => (kind, prop::bool::weighted(0.3)).prop_map(|(kind, new_term)| Op::Control { kind, new_term }),
        1 => (0u64..12).prop_map(|back| Op::Truncate { back }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        1 => Just(Op::Flush),
        1 => (0u64..4000).prop_map(|bytes| Op::Reserve { bytes }),
    ]
}

/// What the log should hold: one item per entry.
#[derive(Debug, Clone)]
struct Expected {
    term: u64,
    kind: BatchKind,
    /// Record values (records entries) or the payload as one value (control entries).
    values: Vec<Vec<u8>>,
}

fn apply(log: &mut PartitionLog, model: &mut Vec<Expected>, term: &mut u64, op: &Op, serial: u64) {
    match *op {
        Op::Records {
            count,
            value_len,
            new_term,
        } => {
            *term += u64::from(new_term);
            let batch = records_batch(count, serial, value_len, serial as i64);
            let entry = AppendEntry {
                index: log.last_index().next(),
                term: Term(*term),
                kind: BatchKind::Records,
                data: &batch,
            };
            log.append(entry).unwrap();
            let values = decode(&[Bytes::from(batch)])
                .into_iter()
                .map(|r| r.value.unwrap().to_vec())
                .collect();
            model.push(Expected {
                term: *term,
                kind: BatchKind::Records,
                values,
            });
        }
        Op::Control { kind, new_term } => {
            *term += u64::from(new_term);
            let payload = serial.to_le_bytes().repeat(serial as usize % 4);
            append_control(log, *term, kind, &payload);
            model.push(Expected {
                term: *term,
                kind,
                values: vec![payload],
            });
        }
        Op::Truncate { back } => {
            let keep = (model.len() as u64).saturating_sub(back);
            log.truncate_from(index(keep + 1)).unwrap();
            model.truncate(keep as usize);
            // Raft truncates only to append entries of a newer term.
            *term += 1;
        }
        Op::Flush => {
            let batch = log.pending_flush();
            batch.run().unwrap();
            log.mark_flushed(&batch).unwrap();
        }
        Op::Reserve { bytes } => log.reserve(bytes).unwrap(),
        Op::Reopen { .. } => unreachable!("handled by the caller"),
    }
}

fn check(log: &PartitionLog, model: &[Expected]) {
    assert_eq!(log.last_index(), index(model.len() as u64));
    let entries = log.entries(index(1), index(model.len() as u64 + 1), None).unwrap();
    let mut offset = 0u64;
    let mut all_values = Vec::new();
    for (entry, expected) in entries.iter().zip(model) {
        assert_eq!((entry.term.0, entry.kind), (expected.term, expected.kind));
        assert_eq!(log.term(entry.index).unwrap(), entry.term);
        if expected.kind == BatchKind::Records {
            let header = batch::validate(&entry.data, usize::MAX).unwrap();
            assert_eq!(
                (header.index, header.term, header.base_offset),
                (entry.index.0, expected.term, offset)
            );
            offset += expected.values.len() as u64;
            all_values.extend(expected.values.iter().cloned());
        } else {
            assert_eq!(&entry.data[..], &expected.values[0][..]);
        }
        assert_eq!(log.next_offset_after(entry.index).unwrap(), Offset(offset));
    }
    assert_eq!(entries.len(), model.len());
    assert_eq!(log.next_offset(), Offset(offset));
    let read: Vec<Vec<u8>> = read_records(log, 0)
        .into_iter()
        .map(|r| r.value.unwrap().to_vec())
        .collect();
    assert_eq!(read, all_values);
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn random_operations_match_the_model(ops in prop::collection::vec(op(), 1..60)) {
        run_model(&ops, LogConfig { index_interval_bytes: 128, ..small_config(2048) })?;
    }

    /// Segments allocated in many small steps (a step is at least a page).
    #[test]
    fn random_operations_match_the_model_with_allocation_steps(ops in prop::collection::vec(op(), 1..60)) {
        run_model(&ops, LogConfig {
            index_interval_bytes: 128,
            segment_allocation_step_bytes: 4096,
            ..small_config(24 << 10)
        })?;
    }

    #[test]
    fn open_never_panics_on_random_segment_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("00000000000000000001.log"), &bytes).unwrap();
        exercise(dir.path());
    }

    #[test]
    fn open_never_panics_on_mutated_files(
        mutations in prop::collection::vec((0usize..5, any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in prop::option::of((0usize..5, any::<prop::sample::Index>())),
        clean in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), small_config(2048));
        for i in 0..30u64 {
            append_records(&mut log, 1 + i / 10, 2, i, i as i64);
        }
        if clean { log.close().unwrap(); } else { drop(log); }
        let mut files: Vec<PathBuf> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for (file, at, value) in mutations {
            let path = &files[file % files.len()];
            let mut content = fs::read(path).unwrap();
            if !content.is_empty() {
                let at = at.index(content.len());
                content[at] = value;
                fs::write(path, &content).unwrap();
            }
        }
        if let Some((file, at)) = cut {
            let path = &files[file % files.len()];
            let content = fs::read(path).unwrap();
            fs::write(path, &content[..at.index(content.len() + 1)]).unwrap();
        }
        exercise(dir.path());
    }
}

fn run_model(ops: &[Op], log_config: LogConfig) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), log_config.clone());
    let (mut model, mut term) = (Vec::new(), 1u64);
    for (serial, op) in ops.iter().enumerate() {
        if let Op::Reopen { clean } = *op {
            if clean {
                log.close().unwrap();
            } else {
                drop(log);
            }
            let (reopened, report) = open(dir.path(), log_config.clone());
            prop_assert_eq!(report.truncated_bytes, 0);
            prop_assert_eq!(report.clean_shutdown, clean);
            log = reopened;
        } else {
            apply(&mut log, &mut model, &mut term, op, serial as u64);
        }
        check(&log, &model);
        super::allocation::check_allocation(&log);
    }
    Ok(())
}

/// Opens whatever is in `dir`; if that works, reads everything and appends.
fn exercise(dir: &Path) {
    let Ok((mut log, _)) = PartitionLog::open(dir, small_config(2048)) else {
        return;
    };
    let (first, last) = (log.first_index(), log.last_index());
    let _ = log.entries(first, last.next(), None);
    let _ = log.read(log.start_offset(), log.next_offset(), usize::MAX);
    let _ = log.offset_for_timestamp(5);
    for i in first.0..=last.0 {
        let _ = log.term(index(i));
    }
    let _ = log.append(AppendEntry {
        index: last.next(),
        term: log.last_term(),
        kind: BatchKind::Noop,
        data: b"",
    });
    let _ = log.truncate_from(first);
}
