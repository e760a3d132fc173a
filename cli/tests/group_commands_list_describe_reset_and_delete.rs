//! `weir group list|describe|reset-offsets|delete`: tables and JSON; reset and delete are
//! refused (exit 1, with the reason) while the group has members; usage errors exit 2.

#[path = "../../client/tests/fake/mod.rs"]
mod fake;
mod run;

use run::{interrupt, lines, spawn, weir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commands_list_describe_reset_and_delete() {
    let (store, addresses) = fake::start(1).await;
    let bootstrap = addresses[0].as_str();
    store.create_topic("t", 1);
    let producer = weir_client::Client::new(weir_client::ClientConfig::new(bootstrap).unwrap())
        .unwrap()
        .producer(weir_client::ProducerConfig::default().linger_ms(0))
        .unwrap();
    for index in 0..5 {
        producer
            .send(weir_client::ProducerRecord::new("t").with_value(format!("{index}")))
            .await
            .unwrap();
    }
    let consumed = weir(
        bootstrap,
        &["consume", "t", "--group", "g", "--from", "beginning", "--count", "2"],
    )
    .await;
    assert_eq!(consumed.code, Some(0), "{}", consumed.stderr);

    let listed = weir(bootstrap, &["group", "list"]).await;
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    assert_eq!(
        listed.stdout,
        "GROUP  STATE  MEMBERS  COORDINATOR\ng      empty  0        1\n"
    );
    let listed = weir(bootstrap, &["--output", "json", "group", "list"]).await;
    let value: serde_json::Value = serde_json::from_str(&listed.stdout).expect("json");
    assert_eq!(value["groups"][0]["group"], "g");

    let described = weir(bootstrap, &["group", "describe", "g"]).await;
    assert_eq!(described.code, Some(0), "{}", described.stderr);
    assert!(described.stdout.contains("no members"), "{}", described.stdout);
    // Committed 2 of 5: lag 3 (the watermark comes from the partition's leader).
    assert!(
        described
            .stdout
            .contains("t      0          2          5               3    -"),
        "{}",
        described.stdout
    );
    assert!(described.stdout.ends_with("total lag: 3\n"), "{}", described.stdout);

    // While a member reads, reset and delete are refused.
    let mut member = spawn(bootstrap, &["consume", "t", "--group", "g"]);
    let _ = lines(&mut member, 3).await; // offsets 2..5: it is a member now
    let refused = weir(
        bootstrap,
        &["group", "reset-offsets", "g", "--topic", "t", "--to-earliest"],
    )
    .await;
    assert_eq!(refused.code, Some(1));
    assert!(refused.stderr.contains("not empty"), "{}", refused.stderr);
    let refused = weir(bootstrap, &["group", "delete", "g"]).await;
    assert_eq!(refused.code, Some(1));
    assert!(refused.stderr.contains("not empty"), "{}", refused.stderr);
    let described = weir(bootstrap, &["--output", "json", "group", "describe", "g"]).await;
    let value: serde_json::Value = serde_json::from_str(&described.stdout).expect("json");
    assert_eq!(value["members"].as_array().map(Vec::len), Some(1));
    assert_eq!(value["offsets"][0]["member_id"], value["members"][0]["member_id"]);
    let (code, stderr) = interrupt(member).await;
    assert_eq!(code, Some(0), "{stderr}");

    let reset = weir(
        bootstrap,
        &["group", "reset-offsets", "g", "--topic", "t", "--to-offset", "1"],
    )
    .await;
    assert_eq!(reset.code, Some(0), "{}", reset.stderr);
    assert_eq!(
        reset.stdout,
        "TOPIC  PARTITION  PREVIOUS_OFFSET  NEW_OFFSET\nt      0          5                1\n"
    );
    assert_eq!(store.coordinator.committed("g", "t", 0), Some(1));
    let reset = weir(
        bootstrap,
        &[
            "--output",
            "json",
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--partitions",
            "0",
            "--to-latest",
        ],
    )
    .await;
    let value: serde_json::Value = serde_json::from_str(&reset.stdout).expect("json");
    assert_eq!(value["offsets"][0]["offset"], 5);
    assert_eq!(value["offsets"][0]["previous"], 1);
    let missing = weir(
        bootstrap,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--partitions",
            "7",
            "--to-latest",
        ],
    )
    .await;
    assert_eq!(missing.code, Some(1));
    let usage = weir(bootstrap, &["group", "reset-offsets", "g", "--topic", "t"]).await;
    assert_eq!(usage.code, Some(2), "a --to-* target is required");

    let deleted = weir(bootstrap, &["group", "delete", "g"]).await;
    assert_eq!(
        (deleted.code, deleted.stdout.as_str()),
        (Some(0), "deleted consumer group g\n")
    );
    let gone = weir(bootstrap, &["group", "describe", "g"]).await;
    assert_eq!(gone.code, Some(1));
    assert!(gone.stderr.contains("not found"), "{}", gone.stderr);
}
