//! The deployment files that cannot run here are at least checked for what they must say:
//!
//! - `deploy/k8s/*.yaml`: every document parses, has apiVersion, kind and a name; the
//!   StatefulSet's selector matches its pod labels, and so do both Services' and the
//!   PodDisruptionBudget's (maxUnavailable 1); its serviceName is the headless Service
//!   (clusterIP None, publishing not-ready pods so that peers find each other before they are
//!   ready); pods start in parallel with ordinals from 1 (node ids); the peers list names
//!   each pod under the headless Service; every probe's port is a container port; liveness is
//!   /healthz and readiness /readyz on the HTTP port the broker is told to listen on; every
//!   container requests CPU and memory; every volume mount has a claim template.
//!   (kubeconform is not installable on these machines: no registry for it.)
//! - `deploy/docker-compose.yml`: three services with distinct published ports, each with a
//!   named volume that is declared, a health check and a stop grace period, and the same
//!   peers list.
//! - `deploy/config/node{1,2,3}.toml`: the broker accepts each file (it validates its
//!   configuration before it starts anything and exits at once on an error): started with the
//!   file, a temporary data directory and free ports, it is still running after 3 s.
//! - `deploy/systemd/weir-broker.service`: the settings the graceful stop and the data
//!   directory need.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use serde_yaml::Value;

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate has a parent")
}

fn documents(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut documents = Vec::new();
    // Documents are separated by a line of "---" (none of these files has one inside a string).
    for (i, document) in text.split("\n---\n").enumerate() {
        let mut value: Value =
            serde_yaml::from_str(document).with_context(|| format!("parsing document {i} of {}", path.display()))?;
        value.apply_merge()?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// `value` at `path` (keys separated by '.'), failing with the path when it is missing.
fn at<'a>(value: &'a Value, path: &str) -> Result<&'a Value> {
    let mut current = value;
    for key in path.split('.') {
        current = current.get(key).with_context(|| format!("missing {path} (at {key})"))?;
    }
    Ok(current)
}

fn text<'a>(value: &'a Value, path: &str) -> Result<&'a str> {
    at(value, path)?
        .as_str()
        .with_context(|| format!("{path} is not a string"))
}

fn labels(value: &Value) -> Result<BTreeMap<String, String>> {
    let mapping = value.as_mapping().context("labels are not a mapping")?;
    mapping
        .iter()
        .map(|(k, v)| {
            Ok((
                k.as_str().context("label key")?.to_owned(),
                v.as_str().context("label value")?.to_owned(),
            ))
        })
        .collect()
}

/// Every label of `selector` is among `pod_labels` with the same value.
fn selects(selector: &BTreeMap<String, String>, pod_labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
}

#[test]
fn kubernetes_manifests_are_consistent() -> Result<()> {
    let dir = repository().join("deploy/k8s");
    let mut all = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            all.extend(documents(&path)?);
        }
    }
    for document in &all {
        text(document, "apiVersion")?;
        text(document, "kind")?;
        text(document, "metadata.name")?;
    }
    let of_kind = |kind: &str| -> Vec<&Value> {
        all.iter()
            .filter(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
            .collect()
    };
    let [statefulset] = of_kind("StatefulSet")[..] else {
        bail!("expected one StatefulSet");
    };
    let name = text(statefulset, "metadata.name")?;
    let pod_labels = labels(at(statefulset, "spec.template.metadata.labels")?)?;
    ensure!(
        selects(&labels(at(statefulset, "spec.selector.matchLabels")?)?, &pod_labels),
        "the StatefulSet's selector does not match its pod labels"
    );
    let replicas = at(statefulset, "spec.replicas")?.as_u64().context("replicas")?;
    ensure!(replicas == 3, "replicas: {replicas}");
    ensure!(text(statefulset, "spec.podManagementPolicy")? == "Parallel");
    let first_ordinal = at(statefulset, "spec.ordinals.start")?
        .as_u64()
        .context("ordinals.start")?;
    ensure!(first_ordinal == 1, "node ids start at 1: ordinals must too");

    // Services: a headless one the StatefulSet names, and one for clients; both select the pods.
    let services = of_kind("Service");
    ensure!(services.len() == 2, "expected a headless and a client Service");
    let headless_name = text(statefulset, "spec.serviceName")?;
    let headless = services
        .iter()
        .find(|s| s["metadata"]["name"].as_str() == Some(headless_name))
        .with_context(|| format!("no Service named {headless_name} (the StatefulSet's serviceName)"))?;
    ensure!(
        text(headless, "spec.clusterIP")? == "None",
        "{headless_name} is not headless"
    );
    ensure!(
        at(headless, "spec.publishNotReadyAddresses")?.as_bool() == Some(true),
        "{headless_name} must publish not-ready pods: peers must find each other before they are ready"
    );

    let pod = at(statefulset, "spec.template.spec")?;
    let containers = at(pod, "containers")?.as_sequence().context("containers")?;
    let broker = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("broker"))
        .context("no broker container")?;
    let mut ports: BTreeMap<String, u64> = BTreeMap::new();
    for port in at(broker, "ports")?.as_sequence().context("ports")? {
        let number = at(port, "containerPort")?.as_u64().context("containerPort")?;
        ports.insert(text(port, "name")?.to_owned(), number);
    }
    let port_number = |port: &Value| -> Result<u64> {
        match port {
            Value::String(name) => ports
                .get(name)
                .copied()
                .with_context(|| format!("no container port {name}")),
            Value::Number(number) => {
                let number = number.as_u64().context("port")?;
                ensure!(ports.values().any(|p| *p == number), "no container port {number}");
                Ok(number)
            }
            other => bail!("port {other:?}"),
        }
    };
    for service in &services {
        let service_name = text(service, "metadata.name")?;
        ensure!(
            selects(&labels(at(service, "spec.selector")?)?, &pod_labels),
            "Service {service_name} does not select the broker pods"
        );
        for port in at(service, "spec.ports")?.as_sequence().context("service ports")? {
            port_number(at(port, "targetPort")?).with_context(|| format!("Service {service_name}"))?;
        }
    }
    let [pdb] = of_kind("PodDisruptionBudget")[..] else {
        bail!("expected one PodDisruptionBudget");
    };
    ensure!(
        at(pdb, "spec.maxUnavailable")?.as_u64() == Some(1),
        "PDB maxUnavailable must be 1"
    );
    ensure!(
        selects(&labels(at(pdb, "spec.selector.matchLabels")?)?, &pod_labels),
        "the PodDisruptionBudget does not select the broker pods"
    );

    // Probes: health endpoints on the HTTP port the broker listens on.
    let args: Vec<&str> = at(broker, "args")?
        .as_sequence()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let http_listen = args
        .windows(2)
        .find(|pair| pair[0] == "--http-listen")
        .map(|pair| pair[1])
        .context("the broker is not given --http-listen")?;
    ensure!(
        http_listen.starts_with("0.0.0.0:"),
        "--http-listen {http_listen} is not reachable by the kubelet"
    );
    let http_port: u64 = http_listen.rsplit_once(':').context("port")?.1.parse()?;
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        let probe_value = at(broker, probe)?;
        ensure!(text(probe_value, "httpGet.path")? == path, "{probe} must get {path}");
        let port = port_number(at(probe_value, "httpGet.port")?)?;
        ensure!(
            port == http_port,
            "{probe} port {port}, the broker serves HTTP on {http_port}"
        );
    }
    for resource in ["cpu", "memory"] {
        at(broker, &format!("resources.requests.{resource}"))?;
    }
    ensure!(
        at(pod, "terminationGracePeriodSeconds")?.as_u64().unwrap_or(0) >= 20,
        "the graceful stop needs up to ~15 s"
    );

    // Node id from the pod ordinal, peers under the headless Service.
    let env = at(broker, "env")?.as_sequence().context("env")?;
    let var = |name: &str| env.iter().find(|e| e["name"].as_str() == Some(name));
    let node_id = var("WEIR_NODE_ID").context("no WEIR_NODE_ID")?;
    ensure!(
        text(node_id, "valueFrom.fieldRef.fieldPath")?.contains("apps.kubernetes.io/pod-index"),
        "WEIR_NODE_ID must come from the pod index"
    );
    let peers = text(var("WEIR_PEERS").context("no WEIR_PEERS")?, "value")?;
    let entries: Vec<&str> = peers.split(',').collect();
    ensure!(
        entries.len() as u64 == replicas,
        "peers {peers} do not name {replicas} nodes"
    );
    for (i, entry) in entries.iter().enumerate() {
        let id = i as u64 + first_ordinal;
        let expected = format!("{id}={name}-{id}.{headless_name}.");
        ensure!(entry.starts_with(&expected), "peer {entry} is not {expected}...");
        ensure!(
            entry.ends_with(&format!(":{}", ports["grpc"])),
            "peer {entry} is not on the gRPC port"
        );
    }
    let claims: Vec<&str> = at(statefulset, "spec.volumeClaimTemplates")?
        .as_sequence()
        .context("volumeClaimTemplates")?
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    for mount in at(broker, "volumeMounts")?.as_sequence().context("volumeMounts")? {
        let mount_name = text(mount, "name")?;
        ensure!(
            claims.contains(&mount_name),
            "volume mount {mount_name} has no claim template"
        );
    }
    Ok(())
}

#[test]
fn compose_file_has_three_nodes_with_volumes_and_health_checks() -> Result<()> {
    let [compose] = &documents(&repository().join("deploy/docker-compose.yml"))?[..] else {
        bail!("docker-compose.yml is not one document");
    };
    let services = at(compose, "services")?.as_mapping().context("services")?;
    ensure!(services.len() == 3, "expected three services");
    let declared = at(compose, "volumes")?.as_mapping().context("volumes")?;
    let mut published = Vec::new();
    let mut peer_lists = Vec::new();
    for (name, service) in services {
        let name = name.as_str().context("service name")?;
        text(service, "image")?;
        at(service, "healthcheck.test")?;
        text(service, "stop_grace_period")?;
        let ports = at(service, "ports")?.as_sequence().context("ports")?;
        ensure!(ports.len() == 1, "{name}: one published port");
        published.push(ports[0].as_str().context("port")?.to_owned());
        for volume in at(service, "volumes")?.as_sequence().context("volumes")? {
            let volume = volume.as_str().context("volume")?;
            let (source, target) = volume.split_once(':').context("volume is not SOURCE:TARGET")?;
            ensure!(target == "/var/lib/weir", "{name}: data volume at {target}");
            ensure!(declared.contains_key(source), "{name}: volume {source} is not declared");
        }
        peer_lists.push(text(service, "environment.WEIR_PEERS")?.to_owned());
        text(service, "environment.WEIR_NODE_ID")?;
    }
    published.sort();
    published.dedup();
    ensure!(published.len() == 3, "the nodes must publish different ports");
    ensure!(
        peer_lists.windows(2).all(|pair| pair[0] == pair[1]),
        "every node needs the same peers list"
    );
    Ok(())
}

#[test]
fn example_node_configs_are_accepted_by_the_broker() -> Result<()> {
    let broker = weir_tests::binaries::broker()?;
    let dir = tempfile::tempdir()?;
    let mut children = Vec::new();
    for node in 1..=3 {
        let config = repository().join(format!("deploy/config/node{node}.toml"));
        let text = std::fs::read_to_string(&config)?;
        ensure!(
            text.contains(&format!("node_id = {node}")),
            "node{node}.toml is not node {node}"
        );
        let data = dir.path().join(format!("n{node}"));
        let log = std::fs::File::create(dir.path().join(format!("n{node}.log")))?;
        let child = Command::new(&broker)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            // The file's HTTP port would collide between the three (and with other tests).
            .env("WEIR_HTTP_LISTEN", "off")
            .env("WEIR_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        children.push((node, child));
    }
    // A configuration error ends the broker within milliseconds; a valid file leaves it
    // running (waiting for its peers, which do not exist here).
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut failures = Vec::new();
    for (node, child) in &mut children {
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.path().join(format!("n{node}.log")))?;
                failures.push(format!("node{node}.toml: the broker exited ({status}):\n{log}"));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for (_, child) in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn systemd_unit_stops_gracefully_and_writes_only_its_data() -> Result<()> {
    let unit = std::fs::read_to_string(repository().join("deploy/systemd/weir-broker.service"))?;
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect();
    let get = |key: &str| settings.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    ensure!(get("KillSignal") == Some("SIGTERM"));
    ensure!(get("Restart") == Some("on-failure"));
    let stop: u64 = get("TimeoutStopSec").context("TimeoutStopSec")?.parse()?;
    ensure!(stop >= 15, "TimeoutStopSec={stop} is shorter than a graceful stop");
    ensure!(get("User") == Some("weir"));
    ensure!(get("LimitNOFILE").is_some());
    ensure!(get("ReadWritePaths") == Some("/var/lib/weir"));
    for node in 1..=3 {
        let config = std::fs::read_to_string(repository().join(format!("deploy/config/node{node}.toml")))?;
        ensure!(
            config.contains("data_dir = \"/var/lib/weir\""),
            "node{node}.toml must keep its data where the unit may write"
        );
    }
    Ok(())
}
