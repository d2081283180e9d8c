"""docker-compose.yml, the Dockerfile and deploy/ agree with the repository and the service.

This checks statically, in every test run, what `docker compose up` would trip on (the real
engine runs in deploy/smoke-docker.sh, `make smoke-docker`, which takes minutes): every referenced file exists (and is not excluded from the build context), the
commands are modes of deploy/entrypoint.sh, ports agree, every environment variable is a
field of the service's Settings or a variable of the entrypoint, Prometheus scrapes the
service's /metrics, and every health check hits a real route of the app."""
from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest
import yaml

from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO_ROOT / "deploy" / "entrypoint.sh"
MIND_SERVICES = ("trainer", "recall", "recall-gpu")
SERVING = ("recall", "recall-gpu")
SETTINGS_PREFIX = Settings.model_config["env_prefix"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    # Join continuation lines so that each instruction is one line.
    return (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")


def instructions(dockerfile: str, keyword: str) -> list[str]:
    """Arguments of every `keyword` instruction, in order."""
    return [line.split(None, 1)[1] for line in dockerfile.splitlines()
            if line.split(None, 1)[:1] == [keyword]]


def entrypoint_variables() -> set[str]:
    """Environment variables deploy/entrypoint.sh and deploy/build_default.py read."""
    text = ENTRYPOINT.read_text() + (REPO_ROOT / "deploy" / "build_default.py").read_text()
    return set(re.findall(r"\$\{(\w+)", text)) | set(re.findall(r"environ(?:\.get)?\(?\[?\"(\w+)\"", text))


def entrypoint_modes() -> set[str]:
    """The `case "$MODE"` branches of entrypoint.sh."""
    return set(re.findall(r"^\s+(\w+)\)", ENTRYPOINT.read_text(), flags=re.MULTILINE))


def app_route_paths() -> set[str]:
    from service.app import create_app
    return {route.path for route in create_app(Settings()).routes}


def url_path(command: list[str] | str) -> str:
    match = re.search(r"http://[^/'\"]+(/[\w/]*)", " ".join(command) if isinstance(command, list) else command)
    assert match, f"no URL in health check {command!r}"
    return match.group(1)


def test_build_context_and_dockerfile_exist(compose: dict) -> None:
    for name in MIND_SERVICES:
        build = compose["services"][name]["build"]
        context = REPO_ROOT / build["context"]
        assert context.is_dir(), f"{name}: build context {context} missing"
        assert (context / build.get("dockerfile", "Dockerfile")).is_file()


def test_bind_mount_sources_exist(compose: dict) -> None:
    named = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO_ROOT / source).exists(), f"{name}: mounts missing {source}"
            else:
                assert source in named, f"{name}: volume {source} is not declared"


def test_commands_are_entrypoint_modes(compose: dict, dockerfile: str) -> None:
    modes = entrypoint_modes()
    assert {"all", "train", "serve"} <= modes
    for name in MIND_SERVICES:
        assert compose["services"][name]["command"][0] in modes
    assert json.loads(instructions(dockerfile, "CMD")[-1])[0] in modes


def test_recall_waits_for_the_trainer(compose: dict) -> None:
    for name in SERVING:
        assert compose["services"][name]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert compose["services"]["trainer"]["restart"] == "no"


def test_ports_agree_with_the_service(compose: dict, dockerfile: str) -> None:
    port = Settings.model_fields["port"].default
    assert f"PORT={port}" in dockerfile and f"EXPOSE {port}" in dockerfile
    for name in SERVING:
        service = compose["services"][name]
        assert service["environment"]["PORT"] == str(port)
        assert [p.rsplit(":", 1)[1] for p in service["ports"]] == [str(port)]
        assert url_path(service["healthcheck"]["test"]) and f":{port}/" in " ".join(service["healthcheck"]["test"])


def test_environment_names_are_settings_or_entrypoint_variables(compose: dict) -> None:
    fields = {SETTINGS_PREFIX + name.upper() for name in Settings.model_fields}
    known = fields | entrypoint_variables()
    for name in MIND_SERVICES:
        unknown = set(compose["services"][name]["environment"]) - known
        assert not unknown, f"{name}: {sorted(unknown)} are neither Settings fields nor entrypoint variables"


@pytest.mark.parametrize("name", SERVING)
def test_service_settings_from_compose_validate(compose: dict, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in compose["services"][name]["environment"].items():
        monkeypatch.setenv(key, str(value))
    settings = Settings()  # raises on an invalid value (e.g. a device that does not exist)
    assert settings.port == int(compose["services"][name]["environment"]["PORT"])


def test_prometheus_scrapes_the_services_metrics(compose: dict) -> None:
    config = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus.yml").read_text())
    port = Settings.model_fields["port"].default
    targets = {t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"{name}:{port}" for name in SERVING}
    assert {job["metrics_path"] for job in config["scrape_configs"]} == {"/metrics"}
    assert "/metrics" in app_route_paths()


def test_health_checks_hit_real_routes(compose: dict, dockerfile: str) -> None:
    routes = app_route_paths()
    for name in SERVING:
        assert url_path(compose["services"][name]["healthcheck"]["test"]) in routes
    assert url_path(instructions(dockerfile, "HEALTHCHECK")[0]) in routes


def test_dockerfile_copies_exist_and_are_not_dockerignored(dockerfile: str) -> None:
    ignored = [p.strip() for p in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")]
    for args in instructions(dockerfile, "COPY"):
        if args.startswith("--from="):
            continue
        for source in args.split()[:-1]:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: missing"
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"COPY {source} is dockerignored"


def test_dockerfile_entrypoint_is_the_deploy_script(dockerfile: str) -> None:
    workdir = instructions(dockerfile, "WORKDIR")[-1]
    script = json.loads(instructions(dockerfile, "ENTRYPOINT")[-1])[-1]
    assert script.startswith(workdir + "/")
    assert REPO_ROOT / script[len(workdir) + 1:] == ENTRYPOINT
    assert "COPY deploy ./deploy" in dockerfile
    assert instructions(dockerfile, "USER")[-1].split(":")[0] != "0", "the image must not run as root"


def test_dashboard_queries_use_service_metrics() -> None:
    from service import metrics as service_metrics
    defined = set(re.findall(r"\"(mind_recall_\w+)\"", Path(service_metrics.__file__).read_text()))
    dashboards = list((REPO_ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        exprs = [t["expr"] for panel in json.loads(path.read_text())["panels"] for t in panel.get("targets", [])]
        used = {re.sub(r"_(bucket|count|sum|total|created|info)$", "", m) for e in exprs for m in re.findall(r"mind_recall_\w+", e)}
        assert used and used <= {re.sub(r"_(total|info)$", "", d) for d in defined}, f"{path.name}: {sorted(used - defined)}"


def test_containers_write_only_to_their_volume_and_tmp(compose: dict, dockerfile: str) -> None:
    """Read-only root: every path the entrypoint writes (run, bundle) lies under a mounted
    volume; the trainer mounts it writable, the services read-only."""
    for name in MIND_SERVICES:
        service = compose["services"][name]
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        mounts = {v.split(":")[1]: v.split(":")[2:] for v in service["volumes"]}
        for var in ("RUN_DIR", "BUNDLE_DIR"):
            path = service["environment"][var]
            mount = next((m for m in mounts if path.startswith(m + "/")), None)
            assert mount, f"{name}: {var}={path} is not under a mounted volume"
            assert (mounts[mount] == ["ro"]) == (name != "trainer"), f"{name}: {mount} mount mode"
    assert "VOLUME [\"/data\"]" in dockerfile and "BUNDLE_DIR=/data/" in dockerfile


def dockerfile_args(dockerfile: str) -> set[str]:
    return {arg.split("=", 1)[0] for arg in instructions(dockerfile, "ARG")}


def test_builds_take_package_indexes_and_a_ca_as_arguments(compose: dict, dockerfile: str) -> None:
    """Behind a proxy or mirror: PyPI, an extra index, torch's index, an extra CA and the base
    image are build arguments, and compose passes each from the environment (with defaults)."""
    wanted = {"BASE_IMAGE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "TORCH_INDEX_URL", "EXTRA_CA_CERT"}
    assert wanted <= dockerfile_args(dockerfile)
    assert "PIP_CERT=/opt/build-ca.pem" in dockerfile and "$EXTRA_CA_CERT" in dockerfile
    for name in MIND_SERVICES:
        args = compose["services"][name]["build"]["args"]
        assert set(args) <= dockerfile_args(dockerfile), f"{name}: {sorted(set(args) - dockerfile_args(dockerfile))}"
        assert wanted <= set(args), name
        for key, value in args.items():
            assert re.fullmatch(r"\$\{\w+:-[^}]*\}", value), f"{name}: build arg {key}={value!r} is not ${{VAR:-default}}"
    # The final image carries none of them: they live in the builder stage only.
    runtime = (REPO_ROOT / "Dockerfile").read_text().split("AS runtime", 1)[1]
    assert not any(arg in runtime for arg in ("PIP_INDEX_URL", "EXTRA_CA_CERT", "build-ca.pem"))


@pytest.mark.parametrize("service,variable,default", [("prometheus", "PROMETHEUS_IMAGE", "prom/prometheus:"),
                                                      ("grafana", "GRAFANA_IMAGE", "grafana/grafana:")])
def test_monitoring_images_are_overridable(compose: dict, service: str, variable: str, default: str) -> None:
    image = compose["services"][service]["image"]
    match = re.fullmatch(r"\$\{(\w+):-([^}]+)\}", image)
    assert match and match.group(1) == variable and match.group(2).startswith(default), image
    assert re.search(r":v?\d+\.\d+\.\d+$", match.group(2)), f"{image}: pin a version"


def prometheus_mounts(compose: dict) -> dict[str, Path]:
    """Container path -> repository file of Prometheus' bind mounts."""
    mounts = {}
    for volume in compose["services"]["prometheus"]["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = REPO_ROOT / source
    return mounts


def test_prometheus_loads_the_alert_rules(compose: dict) -> None:
    """Every rule file deploy/prometheus.yml names is mounted where it looks (next to it)."""
    config = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus.yml").read_text())
    mounts = prometheus_mounts(compose)
    config_path = next(t for t, s in mounts.items() if s == REPO_ROOT / "deploy" / "prometheus.yml")
    assert config["rule_files"], "no alert rules loaded"
    for rule_file in config["rule_files"]:
        target = str(Path(config_path).parent / rule_file)
        assert target in mounts, f"{rule_file}: not mounted at {target}"
        groups = yaml.safe_load(mounts[target].read_text())["groups"]
        assert {r["alert"] for g in groups for r in g["rules"]} >= {
            "MindRecallDown", "MindRecallNotReady", "MindRecallHighErrorRatio", "MindRecallLatencyP99OverSLO",
            "MindRecallShedding", "MindRecallReloadFailed", "MindRecallModelStale"}


def test_smoke_test_runs_the_services_as_compose_configures_them(compose: dict) -> None:
    """deploy/smoke-docker.sh takes every container setting from deploy/compose_run.py, which
    reads this file: the recall container is read-only, has a tmpfs /tmp, the data volume
    read-only, the health check; a setting it cannot translate fails instead of being dropped."""
    from deploy.compose_run import ComposeError, build_args, interpolate, run_options

    recall = run_options(compose["services"]["recall"], "p", {})
    assert "--read-only" in recall and "--init" in recall
    assert recall[recall.index("--tmpfs") + 1] == "/tmp"
    assert recall[recall.index("-v") + 1] == "p-mind-data:/data:ro"
    assert "/readyz" in recall[recall.index("--health-cmd") + 1]
    assert recall[recall.index("--health-start-period") + 1] == "60s"
    trainer = run_options(compose["services"]["trainer"], "p", {"MIND_TRAIN_ARGS": "--epochs 1"})
    assert "MIND_TRAIN_ARGS=--epochs 1" in trainer and "p-mind-data:/data" in trainer
    assert "--build-arg" in build_args(compose["services"]["recall"], {}) and "BASE_IMAGE=x" in build_args(
        compose["services"]["recall"], {"BASE_IMAGE": "x"})
    assert interpolate("${A:-d}:${B}", {"A": ""}) == "d:"
    with pytest.raises(ComposeError, match="cap_add"):
        run_options(dict(compose["services"]["recall"], cap_add=["NET_ADMIN"]), "p", {})
    for name in ("trainer", "recall", "prometheus", "grafana"):
        run_options(compose["services"][name], "p", {})   # every service's keys are translated
