//! The deployment files in `deploy/` and the Dockerfile: each YAML file parses, the respite
//! config inside it (the ConfigMap's, the file Compose mounts) passes `respite check-config`
//! with the secrets written where the config expects them (the Secret's keys, the Compose
//! secrets' files, under their mount paths), and the probes ask what respite serves.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_norway::Value;

use crate::harness::TempDir;

/// The file, from the repository's root.
fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `--config FILE` among a container's arguments.
fn config_arg(args: &Value) -> String {
    let args: Vec<&str> = args
        .as_sequence()
        .expect("a list of arguments")
        .iter()
        .map(|a| a.as_str().expect("arguments are strings"))
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    args[at + 1].to_string()
}

/// `respite check-config` on `config`, whose secrets under `mounted` (their path in the
/// container) are the files `secrets` (name, content): they are written to a directory of
/// the test's and the config pointed there. Panics with check-config's output on failure.
fn check_config(what: &str, config: &str, mounted: &str, secrets: &[(String, String)]) {
    let dir = TempDir::new();
    let secret_dir = dir.0.join("secrets");
    std::fs::create_dir_all(&secret_dir).unwrap();
    for (name, content) in secrets {
        std::fs::write(secret_dir.join(name), content).unwrap();
    }
    let config = config.replace(mounted, &secret_dir.display().to_string());
    let file = dir.0.join("respite.toml");
    std::fs::write(&file, &config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_respite"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: respite check-config refused its config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `[admin] listen` port of a config (the secrets need not be there for this).
fn admin_port(config: &str) -> u64 {
    let table: toml::Table = toml::from_str(config).unwrap();
    let listen = table["admin"]["listen"].as_str().unwrap();
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

/// The documents of the sidecar example, by kind.
fn kubernetes() -> Vec<Value> {
    let text = std::fs::read_to_string(repo("deploy/kubernetes/sidecar.yaml")).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("each document parses"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn one_of<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in sidecar.yaml");
    found[0]
}

#[test]
fn the_kubernetes_sidecar_config_passes_check_config() {
    let docs = kubernetes();
    let config_map = one_of(&docs, "ConfigMap");
    let secret = one_of(&docs, "Secret");
    let pod = &one_of(&docs, "Deployment")["spec"]["template"]["spec"];

    // respite: a native sidecar (an init container that keeps running) or a container.
    let containers = [&pod["initContainers"], &pod["containers"]]
        .into_iter()
        .filter_map(|c| c.as_sequence())
        .flatten();
    let respite = containers
        .filter(|c| c["image"].as_str().unwrap_or("").contains("respite"))
        .collect::<Vec<_>>();
    assert_eq!(respite.len(), 1, "one respite container");
    let respite = respite[0];

    // Each mount, as (mount path, the ConfigMap or Secret behind it).
    let volume = |name: &Value| {
        let volumes = pod["volumes"].as_sequence().expect("volumes");
        volumes
            .iter()
            .find(|v| v["name"] == *name)
            .expect("a mount names a volume")
            .clone()
    };
    let mounts: Vec<(String, Value)> = respite["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            assert!(
                m["subPath"].is_null(),
                "a subPath mount is never updated in place"
            );
            (
                m["mountPath"].as_str().unwrap().to_string(),
                volume(&m["name"]),
            )
        })
        .collect();
    let mount_of = |kind: &str, name: &Value| {
        mounts
            .iter()
            .find(|(_, v)| v[kind]["name"] == *name || v[kind]["secretName"] == *name)
            .map(|(path, _)| path.clone())
            .unwrap_or_else(|| panic!("the {kind} is mounted"))
    };

    // The config: the key of the ConfigMap that --config names.
    let config_dir = mount_of("configMap", &config_map["metadata"]["name"]);
    let config_path = config_arg(&respite["args"]);
    let key = config_path
        .strip_prefix(&format!("{config_dir}/"))
        .expect("--config is a file of the ConfigMap's mount");
    let config = config_map["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("the ConfigMap has {key}"));

    // The passwords: the Secret's keys, under its mount.
    let secret_dir = mount_of("secret", &secret["metadata"]["name"]);
    let secrets: Vec<(String, String)> = secret["stringData"]
        .as_mapping()
        .expect("the Secret's stringData")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
        .collect();
    check_config("sidecar.yaml", config, &secret_dir, &secrets);

    // The probes ask the admin listener the config sets.
    let port = admin_port(config);
    let probe = |which: &str, path: &str| {
        let get = &respite[which]["httpGet"];
        assert_eq!(get["path"], path, "{which}");
        let named = respite["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == get["port"])
            .map_or(&get["port"], |p| &p["containerPort"]);
        assert_eq!(
            named.as_u64(),
            Some(port),
            "{which} asks [admin] listen's port"
        );
    };
    probe("readinessProbe", "/readyz");
    probe("livenessProbe", "/healthz");

    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(respite["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(respite["resources"]["requests"].is_mapping());
}

#[test]
fn the_compose_config_passes_check_config() {
    let text = std::fs::read_to_string(repo("deploy/compose.yaml")).unwrap();
    let compose: Value = serde_norway::from_str(&text).expect("compose.yaml parses");
    let respite = &compose["services"]["respite"];
    assert!(compose["services"]["redis"].is_mapping(), "a redis service");

    // The config: the file mounted where --config points.
    let config_path = config_arg(&respite["command"]);
    let mounted = respite["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .find_map(|v| {
            let mut parts = v.split(':');
            let (from, to) = (parts.next()?, parts.next()?);
            (to == config_path).then(|| from.to_string())
        })
        .expect("a volume mounts the config");
    let config = std::fs::read_to_string(repo("deploy").join(mounted)).unwrap();

    // The secrets: each one the service takes, from its file, at /run/secrets/<name>.
    let secrets: Vec<(String, String)> = respite["secrets"]
        .as_sequence()
        .expect("the service's secrets")
        .iter()
        .map(|s| {
            let name = s
                .as_str()
                .expect("secrets by name (mounted at /run/secrets/<name>)");
            let file = compose["secrets"][name]["file"]
                .as_str()
                .unwrap_or_else(|| panic!("secret {name} has a file"));
            let content = std::fs::read_to_string(repo("deploy").join(file)).unwrap();
            (name.to_string(), content)
        })
        .collect();
    check_config("compose.yaml", &config, "/run/secrets", &secrets);

    let health = respite["healthcheck"]["test"].as_sequence().unwrap();
    let health: Vec<&str> = health.iter().filter_map(|a| a.as_str()).collect();
    assert!(
        health.contains(&"healthcheck") && health.contains(&config_path.as_str()),
        "the healthcheck asks respite with its config: {health:?}"
    );
}

/// The image runs as a numeric non-root user (which Kubernetes' runAsNonRoot can check) and
/// checks its health with `respite healthcheck` on the config it ships.
#[test]
fn the_dockerfile_has_a_healthcheck_and_a_non_root_user() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let runtime = text.rsplit("\nFROM ").next().unwrap();
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric uid");
    assert_ne!(uid, 0);
    let shipped = runtime
        .lines()
        .find_map(|l| l.strip_prefix("COPY config/respite.example.toml "))
        .expect("the example config is copied in");
    let health = runtime
        .split("HEALTHCHECK")
        .nth(1)
        .expect("a HEALTHCHECK")
        .split("\nENTRYPOINT")
        .next()
        .unwrap();
    assert!(
        health.contains(r#""healthcheck", "--config", "#) && health.contains(shipped),
        "{health}"
    );
}

/// The image trusts the public CAs, as a `rediss://` URL without `ca_file` needs (a managed
/// Redis: its certificate chains to one): debian:bookworm-slim has no CA certificates of
/// its own, and respite reads the system's.
#[test]
fn the_image_has_the_system_ca_certificates() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let runtime = text.rsplit("\nFROM ").next().unwrap();
    let installs = runtime
        .split("\nRUN ")
        .skip(1)
        .any(|run| run.contains("apt-get install") && run.contains("ca-certificates"));
    assert!(
        installs,
        "the runtime stage installs ca-certificates:\n{runtime}"
    );
}
