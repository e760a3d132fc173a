//! `weir produce`: one record per input line; exits 0 only once every record is acknowledged.
//!
//! Lines are read as bytes (not necessarily UTF-8); a trailing `\r` is dropped. With
//! `--key-separator`, a line is split at the first separator into key and value, and a line
//! without one is sent with no key. Records are queued as fast as the producer's buffer takes
//! them, so batches fill; the first failure stops reading, and the records already queued are
//! still waited for, so the summary is exact.

use std::path::Path;
use std::pin::Pin;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use weir_client::{Client, Error, ProducerConfig, ProducerRecord};

use crate::args::{Output, ProduceArgs};
use crate::output::print_json;

/// Counts of what happened to the records read.
#[derive(Debug, Default)]
struct Tally {
    read: u64,
    acknowledged: u64,
    failed: u64,
    first_error: Option<Error>,
}

impl Tally {
    fn fail(&mut self, error: Error) {
        self.failed += 1;
        self.first_error.get_or_insert(error);
    }
}

pub async fn run(client: &Client, output: Output, args: ProduceArgs) -> Result<()> {
    let input: Pin<Box<dyn AsyncRead + Send>> = match &args.file {
        Some(path) => Box::pin(open(path).await?),
        None => Box::pin(tokio::io::stdin()),
    };
    let config = ProducerConfig::default()
        .acks(args.acks.into())
        .linger_ms(args.linger_ms);
    let producer = client.producer(config)?;
    let started = Instant::now();
    let mut lines = BufReader::with_capacity(256 * 1024, input).split(b'\n');
    let mut deliveries = FuturesUnordered::new();
    let mut tally = Tally::default();
    let mut reading = true;
    while reading || !deliveries.is_empty() {
        tokio::select! {
            line = lines.next_segment(), if reading => {
                match line.context("reading input")? {
                    Some(line) => {
                        tally.read += 1;
                        match producer.enqueue(record(&args, line)).await {
                            Ok(delivery) => deliveries.push(delivery),
                            Err(error) => {
                                tally.fail(error);
                                reading = false;
                            }
                        }
                    }
                    None => reading = false,
                }
            }
            Some(result) = deliveries.next() => match result {
                Ok(_) => tally.acknowledged += 1,
                Err(error) => {
                    tally.fail(error);
                    reading = false;
                }
            },
        }
    }
    report(&args.topic, output, &tally, started.elapsed().as_secs_f64());
    if let Some(error) = tally.first_error {
        bail!(
            "{} of {} records failed; first error: {error}",
            tally.failed,
            tally.read
        );
    }
    Ok(())
}

async fn open(path: &Path) -> Result<tokio::fs::File> {
    tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))
}

fn record(args: &ProduceArgs, mut line: Vec<u8>) -> ProducerRecord {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let mut record = ProducerRecord::new(args.topic.clone());
    if let Some(partition) = args.partition {
        record = record.with_partition(partition);
    }
    let separator = args
        .key_separator
        .as_deref()
        .map(str::as_bytes)
        .filter(|s| !s.is_empty());
    match separator.and_then(|separator| find(&line, separator).map(|at| (at, separator.len()))) {
        Some((at, length)) => {
            let line = Bytes::from(line);
            record.with_key(line.slice(..at)).with_value(line.slice(at + length..))
        }
        None => record.with_value(line),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn report(topic: &str, output: Output, tally: &Tally, seconds: f64) {
    let rate = if seconds > 0.0 {
        tally.acknowledged as f64 / seconds
    } else {
        0.0
    };
    eprintln!(
        "produced {} of {} records to {topic} in {seconds:.2}s ({rate:.0} records/s){}",
        tally.acknowledged,
        tally.read,
        if tally.failed > 0 {
            format!(", {} failed", tally.failed)
        } else {
            String::new()
        }
    );
    if output == Output::Json {
        print_json(&json!({
            "topic": topic,
            "records": tally.read,
            "acknowledged": tally.acknowledged,
            "failed": tally.failed,
            "error": tally.first_error.as_ref().map(ToString::to_string),
            "elapsed_ms": (seconds * 1000.0).round() as u64,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::AcksArg;

    fn args(separator: Option<&str>) -> ProduceArgs {
        ProduceArgs {
            topic: "t".into(),
            file: None,
            key_separator: separator.map(str::to_owned),
            partition: Some(1),
            acks: AcksArg::All,
            linger_ms: 5,
        }
    }

    #[test]
    fn lines_split_into_key_and_value() {
        let keyed = record(&args(Some("::")), b"user-1::hello::world\r".to_vec());
        assert_eq!(keyed.key.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(keyed.value.as_deref(), Some(&b"hello::world"[..]));
        assert_eq!(keyed.partition, Some(1));
        let no_separator = record(&args(Some("::")), b"plain".to_vec());
        assert_eq!(no_separator.key, None);
        assert_eq!(no_separator.value.as_deref(), Some(&b"plain"[..]));
        let unsplit = record(&args(None), b"a::b".to_vec());
        assert_eq!(unsplit.value.as_deref(), Some(&b"a::b"[..]));
    }
}
