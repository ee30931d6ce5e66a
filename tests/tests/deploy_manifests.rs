//! The deployment files render and hold together: the Kubernetes base
//! (`kubectl kustomize deploy/k8s`, every object checked by
//! `deploy/k8s/validate.py`) and the Compose files with Prometheus and
//! Grafana (`docker-compose config`). Each check needs its tool; where the
//! tool is missing (a laptop without kubectl) the check says so and is
//! skipped — unless `FRESHET_REQUIRE_DEPLOY_TOOLS` is set, as CI sets it,
//! where a missing tool fails the check.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context as _;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn available(program: &str, probe: &[&str]) -> bool {
    let found = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found || std::env::var_os("FRESHET_REQUIRE_DEPLOY_TOOLS").is_none(),
        "{program} is required here (FRESHET_REQUIRE_DEPLOY_TOOLS is set) but is not installed"
    );
    found
}

/// `kubectl kustomize DIR | python3 deploy/k8s/validate.py`, failing with
/// both tools' words.
fn render_and_validate(dir: &str) -> anyhow::Result<()> {
    let rendered = Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(workspace())
        .output()
        .context("run kubectl kustomize")?;
    anyhow::ensure!(
        rendered.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let mut validator = Command::new("python3")
        .arg("deploy/k8s/validate.py")
        .current_dir(workspace())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run validate.py")?;
    {
        use std::io::Write as _;
        let mut stdin = validator.stdin.take().context("stdin")?;
        stdin.write_all(&rendered.stdout)?;
    }
    let verdict = validator.wait_with_output()?;
    anyhow::ensure!(
        verdict.status.success(),
        "deploy/k8s/validate.py refused {dir}:\n{}{}",
        String::from_utf8_lossy(&verdict.stdout),
        String::from_utf8_lossy(&verdict.stderr)
    );
    Ok(())
}

#[test]
fn the_kubernetes_base_renders_and_every_object_is_complete() -> anyhow::Result<()> {
    if !available("kubectl", &["version", "--client"]) {
        eprintln!("kubectl not installed: the Kubernetes manifests were not checked");
        return Ok(());
    }
    anyhow::ensure!(
        available("python3", &["-c", "import yaml"]),
        "deploy/k8s/validate.py needs PyYAML (pip install pyyaml)"
    );
    render_and_validate("deploy/k8s")?;
    render_and_validate("deploy/k8s-single-node")?;
    // The validator's own cases: it must refuse what is broken.
    let own_tests = Command::new("python3")
        .args(["deploy/k8s/validate_test.py", "-q"])
        .current_dir(workspace())
        .output()?;
    anyhow::ensure!(
        own_tests.status.success(),
        "validate_test.py:\n{}",
        String::from_utf8_lossy(&own_tests.stderr)
    );
    Ok(())
}

#[test]
fn the_compose_files_with_prometheus_and_grafana_are_valid() -> anyhow::Result<()> {
    if !available("docker-compose", &["version"]) {
        eprintln!("docker-compose not installed: docker-compose.yml was not checked");
        return Ok(());
    }
    let checked = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(workspace())
        .output()?;
    anyhow::ensure!(
        checked.status.success(),
        "docker-compose config:\n{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let config = String::from_utf8_lossy(&checked.stdout);
    for service in ["prometheus:", "grafana:", "jaeger:"] {
        assert!(
            config.contains(service),
            "compose has no {service}\n{config}"
        );
    }
    // The dashboard Grafana provisions is JSON, and Prometheus scrapes
    // every Freshet service.
    let dashboard = std::fs::read_to_string(
        workspace().join("deploy/grafana/dashboards/freshet-streams.json"),
    )?;
    let _: serde_json::Value = serde_json::from_str(&dashboard)?;
    let scrape = std::fs::read_to_string(workspace().join("deploy/prometheus/prometheus.yml"))?;
    for target in [
        "timer:9100",
        "membership:9100",
        "cache:9100",
        "control-plane:9100",
        "worker-a:9100",
        "frontend:9100",
    ] {
        assert!(
            scrape.contains(target),
            "Prometheus does not scrape {target}"
        );
    }
    Ok(())
}
