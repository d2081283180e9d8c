"""The documentation agrees with the code: the settings table is exactly the Settings model's
fields, the README names no setting that does not exist, and no committed file carries a
machine-specific absolute path (a checkout's location, a scratch file under /tmp)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from service.settings import Settings
from tests.test_compose import entrypoint_variables

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS_TABLE = REPO_ROOT / "docs" / "service.md"
PREFIX = Settings.model_config["env_prefix"]
SETTING_ROW = re.compile(r"^\| `(MIND_\w+)` \| (.*?) \|", re.MULTILINE)
# A path on one machine: the checkout's location or a scratch file under /tmp.
MACHINE_PATH = re.compile(r"/(work|tmp)/")


def documented_settings() -> dict[str, str]:
    """env var -> default column of the settings table in docs/service.md."""
    return dict(SETTING_ROW.findall(SETTINGS_TABLE.read_text()))


def test_settings_table_is_exactly_the_settings_model() -> None:
    """Compared with Settings' fields at test time, so adding or removing a setting without
    its row (or leaving a stale row) fails here."""
    fields = {PREFIX + name.upper() for name in Settings.model_fields}
    documented = set(documented_settings())
    assert not fields - documented, f"docs/service.md lacks rows for {sorted(fields - documented)}"
    assert not documented - fields, f"docs/service.md documents settings that do not exist: {sorted(documented - fields)}"


def test_settings_table_defaults_match_the_model() -> None:
    """Plain literal defaults (numbers, words) in the table equal the model's."""
    for var, default in documented_settings().items():
        field = Settings.model_fields[var[len(PREFIX):].lower()]
        literal = re.fullmatch(r"`([\w.\-]+)`(?: \(.*\))?", default)
        if literal is None or field.default_factory is not None:
            continue   # described in words (e.g. "cores - 1") or computed
        expected = field.default
        value = literal.group(1)
        if isinstance(expected, bool):
            assert value == str(expected).lower(), var
        elif isinstance(expected, (int, float)):
            assert float(value) == float(expected), f"{var}: table says {value}, Settings {expected}"
        else:
            assert value == str(expected), f"{var}: table says {value}, Settings {expected}"


def package_variables() -> set[str]:
    """MIND_* environment variables the package reads itself (e.g. the dataset cache)."""
    text = "".join(p.read_text() for folder in ("model", "mind_recall") for p in (REPO_ROOT / folder).rglob("*.py"))
    return set(re.findall(r"environ(?:\.get)?[(\[]\"(MIND_\w+)\"", text))


def test_readme_names_only_real_settings() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    known = {PREFIX + name.upper() for name in Settings.model_fields} | entrypoint_variables() | package_variables()
    named = set(re.findall(r"\bMIND_[A-Z_]+[A-Z]\b", readme))
    assert not named - known, f"README.md names {sorted(named - known)}, which are neither settings nor entrypoint variables"


def tracked_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True,
                               timeout=30).stdout.decode().split("\0")
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout: the committed files are unknown")
    return [REPO_ROOT / name for name in names if name and (REPO_ROOT / name).is_file()]


def test_no_machine_specific_absolute_paths() -> None:
    found = []
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue   # binary fixtures
        found += [f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()[:120]}"
                  for n, line in enumerate(text.splitlines(), 1) if MACHINE_PATH.search(line)]
    assert not found, "machine-specific paths:\n" + "\n".join(found)


def test_every_exported_metric_is_documented() -> None:
    from service.metrics import ServiceMetrics

    text = SETTINGS_TABLE.read_text()
    suffix = {"counter": "_total", "info": "_info"}
    missing = [family.name + suffix.get(family.type, "") for family in ServiceMetrics().registry.collect()
               if f"`{family.name + suffix.get(family.type, '')}`" not in text]
    assert not missing, f"docs/service.md, Metrics, lacks {missing}"
