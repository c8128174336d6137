//! The deployment files work, checked with the tools that use them: the Docker build context
//! (recreated from deploy/Dockerfile.dockerignore) holds what cargo needs; the kustomize base
//! renders, every object passes kubernetes-validate (strict, a current Kubernetes), and its
//! embedded config passes `portcullis check`; every Portcullis config in config/ and deploy/
//! passes check-jsonschema against config/portcullis.schema.json, which is what
//! `portcullis schema` prints today.
//!
//! The Python tools come from the venv `make py` makes (tests/deploy/requirements.txt), found
//! beside `PORTCULLIS_TEST_PYTHON` (the Makefile sets it) or in target/py; kubectl from PATH
//! (`make deps` installs Debian's kubernetes-client when there is none).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_yaml::Value;

use crate::support::dockerignore::DockerIgnore;
use crate::support::BIN;

/// The Kubernetes version the objects are validated against: the newest kubernetes-validate
/// (tests/deploy/requirements.txt) knows.
const KUBERNETES_VERSION: &str = "1.37.0";

const SCHEMA: &str = "config/portcullis.schema.json";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A tool of the test venv.
fn venv_tool(name: &str) -> PathBuf {
    let python = std::env::var_os("PORTCULLIS_TEST_PYTHON")
        .map_or_else(|| root().join("target/py/bin/python"), PathBuf::from);
    let tool = python.with_file_name(name);
    assert!(
        tool.exists(),
        "{} is missing: the deploy tests need it; `make py` installs it (tests/deploy/requirements.txt)",
        tool.display()
    );
    tool
}

fn run(command: &mut Command) -> Output {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl kustomize DIR`, offline.
fn kustomize(dir: &Path) -> String {
    let out = run(Command::new("kubectl").arg("kustomize").arg(dir));
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed (`make deps` installs kubectl when missing):\n{}",
        dir.display(),
        text(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<_> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected");
    found[0]
}

/// kubernetes-validate, strict, on every object of `yaml`; the objects it passed.
fn kubernetes_validate(yaml: &str) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("objects.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = run(Command::new(venv_tool("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(&path));
    let report = text(&out);
    assert!(out.status.success(), "kubernetes-validate:\n{report}");
    let passed = report.matches(" passed for resource ").count();
    assert_eq!(
        passed,
        documents(yaml).len(),
        "every object passed:\n{report}"
    );
    passed
}

fn base() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// The docker build context is exactly what Dockerfile.dockerignore lets in: recreated in a
/// temporary folder, cargo can read the package and its lock from it, offline. Fails when a
/// path cargo needs (vendor/ for `[patch.crates-io]`, build.rs, the benches Cargo.toml names)
/// is left out.
#[test]
fn the_docker_build_context_holds_what_cargo_needs() {
    let ignore = DockerIgnore::parse(
        &std::fs::read_to_string(root().join("deploy/Dockerfile.dockerignore")).unwrap(),
    );
    let files = ignore.context_files(root());
    let context = tempfile::tempdir().unwrap();
    for file in &files {
        let to = context.path().join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root().join(file), &to).unwrap();
    }
    for needed in ["Cargo.toml", "Cargo.lock", "src/main.rs"] {
        assert!(context.path().join(needed).exists(), "{needed} left out");
    }
    if root().join("build.rs").exists() {
        assert!(
            context.path().join("build.rs").exists(),
            "build.rs left out"
        );
    }
    for unwanted in ["target", ".git", "fuzz", "config"] {
        assert!(
            !files.iter().any(|f| f.starts_with(unwanted)),
            "{unwanted} is in the context"
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // For this machine's platform: a build here fetched the crates of its own platform only,
    // not the Windows- or macOS-only ones the lock also lists (as the image build would).
    let rustc = run(Command::new("rustc").arg("-vV"));
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .unwrap();
    let out = run(Command::new(cargo)
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .args(["--filter-platform", &host])
        .current_dir(context.path())
        // The package's own target folder, not the one of the tests' cargo.
        .env_remove("CARGO_TARGET_DIR"));
    assert!(
        out.status.success(),
        "`cargo metadata --locked --offline` fails in the build context that \
         deploy/Dockerfile.dockerignore makes ({} files):\n{}",
        files.len(),
        text(&out)
    );
}

/// The kustomize base renders offline to the objects the README lists, each valid for a
/// current Kubernetes (strict: an unknown field fails), with a pinned image, topology spread,
/// the admin port kept to the monitoring namespace, and an HPA owning the replica count.
#[test]
fn the_kustomize_base_renders_and_every_object_validates() {
    let rendered = kustomize(&base());
    let objects = documents(&rendered);
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    let want: BTreeSet<&str> = [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
    ]
    .into();
    assert_eq!(kinds, want);
    assert_eq!(kubernetes_validate(&rendered), objects.len());

    let deployment = one(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let image = pod["containers"][0]["image"].as_str().unwrap();
    assert_eq!(
        image,
        format!("portcullis:{}", env!("CARGO_PKG_VERSION")),
        "a pinned tag, the package's version"
    );
    assert!(
        pod["topologySpreadConstraints"]
            .as_sequence()
            .is_some_and(|c| c.len() >= 2),
        "spread over zones and nodes"
    );
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "the HPA owns the count"
    );
    let hpa = one(&objects, "HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );

    // The admin port is reachable only from the monitoring namespace; the proxy port from
    // anywhere; and the Service does not expose the admin port at all.
    let policy = one(&objects, "NetworkPolicy");
    let rules = policy["spec"]["ingress"].as_sequence().unwrap();
    for rule in rules {
        let ports: Vec<&str> = rule["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|p| p["port"].as_str())
            .collect();
        if ports.contains(&"admin") {
            assert_eq!(ports, ["admin"], "{rule:?}");
            assert_eq!(
                rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                "monitoring"
            );
        } else {
            assert_eq!(ports, ["http"], "{rule:?}");
        }
    }
    let service = one(&objects, "Service");
    assert!(
        service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .all(|p| p["targetPort"] != "admin" && p["targetPort"] != 9901),
        "{service:?}"
    );
}

/// The requests-per-second HPA of examples/ works as its comment says: as a patch in an
/// overlay over the base, it renders to a valid HPA on CPU and the prometheus-adapter metric.
#[test]
fn the_requests_per_second_hpa_example_patches_the_base() {
    let overlay = tempfile::tempdir().unwrap();
    std::fs::copy(
        base().join("examples/hpa-requests-per-second.yaml"),
        overlay.path().join("hpa-requests-per-second.yaml"),
    )
    .unwrap();
    // kustomize takes a base by relative path only. `bases` and `patchesStrategicMerge`:
    // what kubectl before 1.21 reads too (a newer one warns and takes them).
    let up = overlay.path().components().count() - 1;
    let to_base = format!(
        "{}{}",
        "../".repeat(up),
        base().to_str().unwrap().trim_start_matches('/')
    );
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!(
            "bases:\n  - {to_base}\npatchesStrategicMerge:\n  - hpa-requests-per-second.yaml\n"
        ),
    )
    .unwrap();
    let rendered = kustomize(overlay.path());
    kubernetes_validate(&rendered);
    let objects = documents(&rendered);
    let metrics = &one(&objects, "HorizontalPodAutoscaler")["spec"]["metrics"];
    assert_eq!(metrics[0]["resource"]["name"], "cpu", "{metrics:?}");
    assert_eq!(
        metrics[1]["pods"]["metric"]["name"], "portcullis_requests_per_second",
        "{metrics:?}"
    );
    let values =
        std::fs::read_to_string(base().join("examples/prometheus-adapter-values.yaml")).unwrap();
    assert!(
        values.contains("as: \"portcullis_requests_per_second\""),
        "the adapter serves the metric the HPA asks for"
    );
}

/// The config the base's ConfigMap carries, as rendered, passes `portcullis check` (offline:
/// its target is a cluster Service name no resolver here knows) and fits the Deployment: the
/// file the container is told to read, the ports it exposes and probes.
#[test]
fn the_kustomize_base_s_config_passes_check() {
    let objects = documents(&kustomize(&base()));
    let configmap = one(&objects, "ConfigMap");
    let config = configmap["data"]["portcullis.yaml"].as_str().unwrap();
    assert!(config.contains(".svc.cluster.local:"), "{config}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, config).unwrap();
    let out = run(Command::new(BIN).args(["check", path.to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ok (1 listeners"), "{}", text(&out));

    let pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == configmap["metadata"]["name"])
        .expect("the ConfigMap is mounted");
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .unwrap();
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args,
        [
            "run",
            "--config",
            &format!("{}/portcullis.yaml", mount["mountPath"].as_str().unwrap())
        ]
    );
    let parsed: Value = serde_yaml::from_str(config).unwrap();
    let port_of = |name: &str| {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap()
    };
    assert_eq!(
        parsed["listeners"][0]["address"].as_str().unwrap(),
        format!("0.0.0.0:{}", port_of("http"))
    );
    assert_eq!(
        parsed["admin"]["address"].as_str().unwrap(),
        format!("0.0.0.0:{}", port_of("admin"))
    );
}

/// The Portcullis configs in `config/` (all its YAML files) and `deploy/` (YAML files whose
/// top-level keys are all config sections, and the config the kustomize base renders into its
/// ConfigMap).
fn portcullis_configs(scratch: &Path) -> Vec<PathBuf> {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join(SCHEMA)).unwrap()).unwrap();
    let sections = schema["properties"].as_object().unwrap();
    let is_yaml = |p: &Path| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    let mut configs: Vec<PathBuf> = std::fs::read_dir(root().join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| is_yaml(p))
        .collect();
    let mut stack = vec![root().join("deploy")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if !is_yaml(&path) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let is_config = documents(&text).iter().all(|doc| {
                doc.as_mapping().is_some_and(|m| {
                    !m.is_empty()
                        && m.keys()
                            .all(|k| k.as_str().is_some_and(|k| sections.contains_key(k)))
                })
            });
            if is_config {
                configs.push(path);
            }
        }
    }
    let objects = documents(&kustomize(&base()));
    let rendered = scratch.join("kustomize-configmap-portcullis.yaml");
    std::fs::write(
        &rendered,
        one(&objects, "ConfigMap")["data"]["portcullis.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    configs.push(rendered);
    configs.sort();
    configs
}

fn check_jsonschema(files: &[PathBuf]) -> Output {
    run(Command::new(venv_tool("check-jsonschema"))
        .arg("--schemafile")
        .arg(root().join(SCHEMA))
        .args(files))
}

/// Every Portcullis config in config/ and deploy/ validates against the committed schema, as
/// an editor would validate it; and a broken config does not (the schema is not vacuous).
#[test]
fn every_config_validates_against_the_schema() {
    let scratch = tempfile::tempdir().unwrap();
    let configs = portcullis_configs(scratch.path());
    for expected in [
        "config/example.yaml",
        "config/minimal.yaml",
        "deploy/kubernetes/portcullis.yaml",
    ] {
        assert!(
            configs.contains(&root().join(expected)),
            "{expected} not found among {configs:?}"
        );
    }
    let out = check_jsonschema(&configs);
    assert!(out.status.success(), "check-jsonschema:\n{}", text(&out));

    let broken = scratch.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "listeners:\n  - adress: \"0.0.0.0:8080\"\nserver:\n  grace_period: 5\n\
         routes:\n  - name: r\n    upstream: u\n    rate_limit: { per_ip: { rate: fast } }\n",
    )
    .unwrap();
    let out = check_jsonschema(&[broken]);
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    for path in [
        "listeners[0]",
        "server.grace_period",
        "routes[0].rate_limit",
    ] {
        assert!(report.contains(path), "{path} not reported:\n{report}");
    }
}

/// config/portcullis.schema.json is what `portcullis schema` prints from the config types
/// today: a field added without regenerating it fails here.
#[test]
fn the_committed_schema_is_current() {
    let out = run(Command::new(BIN).arg("schema"));
    assert!(out.status.success(), "{}", text(&out));
    let committed = std::fs::read_to_string(root().join(SCHEMA)).unwrap();
    assert!(
        committed == String::from_utf8_lossy(&out.stdout),
        "{SCHEMA} is not current; regenerate it with\n  \
         cargo run --bin portcullis -- schema > {SCHEMA}"
    );
}

/// Editors find the schema: config/example.yaml (and every other config file) names it on its
/// `yaml-language-server` line, by a path that leads to it.
#[test]
fn the_configs_name_the_schema_for_editors() {
    let scratch = tempfile::tempdir().unwrap();
    let schema = root().join(SCHEMA).canonicalize().unwrap();
    for config in portcullis_configs(scratch.path()) {
        if config.starts_with(scratch.path()) {
            continue;
        }
        let text = std::fs::read_to_string(&config).unwrap();
        let target = text
            .lines()
            .find_map(|l| l.strip_prefix("# yaml-language-server: $schema="))
            .unwrap_or_else(|| panic!("{} has no yaml-language-server line", config.display()));
        let named = config.parent().unwrap().join(target.trim());
        assert_eq!(
            named.canonicalize().ok().as_ref(),
            Some(&schema),
            "{}: $schema={target}",
            config.display()
        );
    }
}
