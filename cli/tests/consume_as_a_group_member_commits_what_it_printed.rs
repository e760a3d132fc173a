//! `weir consume --group` reads as a group member and commits exactly what it printed: with
//! --count, the records fetched but not printed are read by the next member; stopped with
//! Ctrl-C, it commits, leaves the group and exits 0.

#[path = "../../client/tests/fake/mod.rs"]
mod fake;
mod run;

use fake::groups::Event;
use run::{interrupt, lines, spawn, weir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_as_a_group_member_commits_what_it_printed() {
    let (store, addresses) = fake::start(1).await;
    let bootstrap = addresses[0].as_str();
    store.create_topic("t", 2);
    for partition in ["0", "1"] {
        let child = {
            let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"))
                .args(["--bootstrap", bootstrap, "produce", "t", "--partition", partition])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("weir runs");
            use tokio::io::AsyncWriteExt;
            let mut input = child.stdin.take().expect("piped");
            input.write_all(b"a\nb\nc\n").await.expect("written");
            drop(input);
            child
        };
        assert!(child.wait_with_output().await.expect("produced").status.success());
    }

    let format = ["--format", "{partition}/{offset}"];
    let first = weir(
        bootstrap,
        &[
            &["consume", "t", "--group", "g", "--from", "beginning", "--count", "4"],
            &format[..],
        ]
        .concat(),
    )
    .await;
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let mut printed: Vec<String> = first.stdout.lines().map(str::to_owned).collect();
    assert_eq!(printed.len(), 4);
    let committed = |partition| store.coordinator.committed("g", "t", partition).unwrap_or(0);
    assert_eq!(committed(0) + committed(1), 4, "exactly what was printed is committed");
    assert!(store.coordinator.members("g").is_empty(), "it left the group");

    let second = weir(
        bootstrap,
        &[&["consume", "t", "--group", "g", "--count", "2"], &format[..]].concat(),
    )
    .await;
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    printed.extend(second.stdout.lines().map(str::to_owned));
    printed.sort();
    assert_eq!(printed, ["0/0", "0/1", "0/2", "1/0", "1/1", "1/2"]);

    // Following until Ctrl-C.
    let mut follower = spawn(
        bootstrap,
        &[
            "consume",
            "t",
            "--group",
            "h",
            "--from",
            "beginning",
            "--output",
            "json",
        ],
    );
    let records = lines(&mut follower, 6).await;
    assert!(records.iter().all(|line| line.starts_with('{')), "{records:?}");
    let (code, stderr) = interrupt(follower).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(store.coordinator.committed("h", "t", 0), Some(3));
    assert_eq!(store.coordinator.committed("h", "t", 1), Some(3));
    assert!(store
        .coordinator
        .events()
        .iter()
        .any(|event| matches!(event, Event::Leave { epoch: -1, .. })));
    assert!(store.coordinator.members("h").is_empty());

    let usage = weir(bootstrap, &["consume", "t", "--group", "g", "--partition", "0"]).await;
    assert_eq!(usage.code, Some(2), "a group member does not pick partitions");
}
