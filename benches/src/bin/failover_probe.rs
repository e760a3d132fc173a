//! `failover-probe BOOTSTRAP TOPIC PARTITION [SECONDS]`: one producer (the `weir-client` crate
//! with its default timeouts and retry backoff, acks=all, no linger) that sends one record at a
//! time to one partition, for at most SECONDS (default 900), and prints a line per outcome:
//!
//! ```text
//! ok  SEND_NS ACK_NS OFFSET
//! err SEND_NS END_NS MESSAGE
//! ```
//!
//! Times are wall-clock nanoseconds since the Unix epoch (the clock `date +%s%N` reads), so a
//! script can place its own events (a leader killed, a node restarted) on the same time line.
//! `benches/e2e-cluster.sh` runs it while it kills and stops partition leaders.

use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weir_client::{Acks, Client, ClientConfig, ProducerConfig, ProducerRecord};

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 || args.len() > 4 {
        eprintln!("usage: failover-probe BOOTSTRAP TOPIC PARTITION [SECONDS]");
        std::process::exit(2);
    }
    let (Ok(partition), Ok(seconds)) = (
        args[2].parse::<u32>(),
        args.get(3).map_or(Ok(900), |s| s.parse::<u64>()),
    ) else {
        eprintln!("PARTITION and SECONDS are whole numbers");
        std::process::exit(2);
    };
    let client = match ClientConfig::new(&args[0]).and_then(Client::new) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("failover-probe: {error}");
            std::process::exit(1);
        }
    };
    let producer = match client.producer(ProducerConfig::default().acks(Acks::All).linger_ms(0)) {
        Ok(producer) => producer,
        Err(error) => {
            eprintln!("failover-probe: {error}");
            std::process::exit(1);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let stdout = std::io::stdout();
    let mut sequence = 0u64;
    while Instant::now() < deadline {
        sequence += 1;
        let record = ProducerRecord::new(args[1].clone())
            .with_partition(partition)
            .with_value(format!("probe {sequence}"));
        let sent = now_ns();
        let line = match producer.send(record).await {
            Ok(metadata) => format!("ok {sent} {} {}\n", now_ns(), metadata.offset),
            Err(error) => {
                let message = error.to_string().replace('\n', " ");
                // An error that comes back at once (no node answers) would otherwise spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                format!("err {sent} {} {message}\n", now_ns())
            }
        };
        let mut out = stdout.lock();
        if out.write_all(line.as_bytes()).and_then(|()| out.flush()).is_err() {
            return; // the reader is gone
        }
    }
}
