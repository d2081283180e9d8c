"""`docker run` / `docker build` arguments of one docker-compose.yml service.

deploy/smoke-docker.sh runs the compose file's services one container at a time on a real
engine (Compose v2 is not available everywhere, and v1.29 rejects the Compose Specification's
top-level `name:`). It takes every setting from here, so the smoke test and the compose file
cannot drift: a service key this module does not translate is an error, not a silent skip.

    python deploy/compose_run.py options recall --project P [--tmpfs-volume prometheus-data]
    python deploy/compose_run.py build-args trainer
    python deploy/compose_run.py image recall | command recall | port recall

Prints the arguments NUL-separated (a PEM in EXTRA_CA_CERT spans lines; read them with bash's
`mapfile -d ''`). `${VAR:-default}` values are interpolated from the environment
as compose does. Named volumes become `<project>-<name>`; bind mounts (`./...`) absolute paths.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")
# Keys translated into `docker run` options below, or handled by the smoke script itself
# (build, image, command, ports, depends_on: start order; restart: one run; profiles, deploy:
# the GPU variant, not run by the smoke test).
TRANSLATED = {"read_only", "tmpfs", "init", "environment", "volumes", "healthcheck"}
HANDLED_BY_CALLER = {"build", "image", "command", "ports", "depends_on", "restart", "profiles", "deploy"}
HEALTH_OPTIONS = {"interval": "--health-interval", "timeout": "--health-timeout",
                  "start_period": "--health-start-period", "retries": "--health-retries"}
WORLD_WRITABLE = "1777"


class ComposeError(ValueError):
    """A compose setting the smoke test cannot reproduce with `docker run`."""


def interpolate(value, environ: dict[str, str]) -> str:
    """Compose's `${VAR}` and `${VAR:-default}` (default when VAR is unset or empty)."""
    return VARIABLE.sub(lambda m: environ.get(m.group(1)) or (m.group(2) or ""), str(value))


def load_services(path: Path = COMPOSE_FILE) -> dict:
    return yaml.safe_load(path.read_text())["services"]


def health_options(health: dict) -> list[str]:
    test = health["test"]
    if test[0] == "CMD":
        command = shlex.join(test[1:])
    elif test[0] == "CMD-SHELL":
        command = test[1]
    else:
        raise ComposeError(f"healthcheck test {test[0]!r} not translated")
    options = ["--health-cmd", command]
    for key, flag in HEALTH_OPTIONS.items():
        if key in health:
            options += [flag, str(health[key])]
    return options


def volume_options(volumes: list[str], project: str, tmpfs_volumes: set[str]) -> list[str]:
    options = []
    for volume in volumes:
        source, target, *mode = volume.split(":")
        if source.startswith("."):
            options += ["-v", ":".join([str((REPO_ROOT / source).resolve()), target, *mode])]
        elif source in tmpfs_volumes:
            options += ["--mount", f"type=tmpfs,destination={target},tmpfs-mode={WORLD_WRITABLE}"]
        else:
            options += ["-v", ":".join([f"{project}-{source}", target, *mode])]
    return options


def run_options(service: dict, project: str, environ: dict[str, str],
                tmpfs_volumes: set[str] = frozenset()) -> list[str]:
    """`docker run` options reproducing the service's container settings."""
    unknown = set(service) - TRANSLATED - HANDLED_BY_CALLER
    if unknown:
        raise ComposeError(f"service keys {sorted(unknown)} are not translated by deploy/compose_run.py")
    options = ["--read-only"] if service.get("read_only") else []
    for path in service.get("tmpfs", []):
        options += ["--tmpfs", path]
    if service.get("init"):
        options.append("--init")
    for key, value in service.get("environment", {}).items():
        options += ["-e", f"{key}={interpolate(value, environ)}"]
    options += volume_options(service.get("volumes", []), project, tmpfs_volumes)
    if "healthcheck" in service:
        options += health_options(service["healthcheck"])
    return options


def build_args(service: dict, environ: dict[str, str]) -> list[str]:
    args = service["build"].get("args", {})
    return [arg for key, value in args.items() for arg in ("--build-arg", f"{key}={interpolate(value, environ)}")]


def container_port(service: dict) -> str:
    (port,) = service["ports"]
    return interpolate(port, {}).rsplit(":", 1)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("options", "build-args", "image", "command", "port"))
    parser.add_argument("service")
    parser.add_argument("--project", default="mind-recall", help="prefix of named volumes")
    parser.add_argument("--tmpfs-volume", action="append", default=[],
                        help="named volume to replace by a world-writable tmpfs (images without its owner)")
    args = parser.parse_args(argv)
    service = load_services()[args.service]
    environ = dict(os.environ)
    try:
        lines = {"options": lambda: run_options(service, args.project, environ, set(args.tmpfs_volume)),
                 "build-args": lambda: build_args(service, environ),
                 "image": lambda: [interpolate(service["image"], environ)],
                 "command": lambda: [str(part) for part in service.get("command", [])],
                 "port": lambda: [container_port(service)]}[args.what]()
    except ComposeError as err:
        print(f"compose_run: {args.service}: {err}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(f"{line}\0" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
