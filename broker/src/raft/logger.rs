//! Routes raft-rs's slog output into `tracing`, keeping the logger's key-values (`raft_id`,
//! `group`): with one Raft group per partition, a line without them is useless.

use std::fmt::Write as _;

use slog::{Drain, Key, OwnedKVList, Record, Serializer, KV};

/// A slog drain that forwards every record to `tracing` at the matching level.
pub struct TracingDrain;

struct KeyValues(String);

impl Serializer for KeyValues {
    fn emit_arguments(&mut self, key: Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut kv = KeyValues(String::new());
        let _ = values.serialize(record, &mut kv);
        let _ = record.kv().serialize(record, &mut kv);
        let message = record.msg();
        let fields = kv.0;
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{message}{fields}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{message}{fields}"),
            slog::Level::Info => tracing::info!(target: "raft", "{message}{fields}"),
            slog::Level::Debug => tracing::debug!(target: "raft", "{message}{fields}"),
            slog::Level::Trace => tracing::trace!(target: "raft", "{message}{fields}"),
        }
        Ok(())
    }
}

/// The root logger for every RawNode of this process; groups add their own key-values.
pub fn root_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}
