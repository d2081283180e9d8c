"""`mind --help` and `mind <command> --help` are accurate: they exit 0, list every command and
name the flags of the contracts in docs/architecture.md."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mind_recall import cli

# command -> flags its --help must document (the contracts between the parts)
CONTRACT_FLAGS: dict[str, tuple[str, ...]] = {
    "train": ("--data", "--out", "--device"),
    "evaluate": ("--run", "--bundle", "--split"),
    "export": ("--run", "--out", "--index"),
    "serve": ("--bundle", "--host", "--port"),
}


def help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the real dispatcher in-process; return what --help printed (exit status 0)."""
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 0, f"mind {' '.join(argv)} exited {exited.value.code}"
    return capsys.readouterr().out


def test_installed_console_script_lists_every_command() -> None:
    mind = Path(sys.executable).with_name("mind")
    assert mind.is_file(), f"console script {mind} missing: is the package installed?"
    done = subprocess.run([str(mind), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps long summaries
    for name, (_, summary) in cli.COMMANDS.items():
        assert f"{name} {summary}" in text, f"`mind --help` lacks `{name}: {summary}`:\n{done.stdout}"


def test_every_command_has_a_contract_entry() -> None:
    assert set(CONTRACT_FLAGS) == set(cli.COMMANDS)


@pytest.mark.parametrize("command", sorted(CONTRACT_FLAGS))
def test_command_help_names_contract_flags(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text([command, "--help"], capsys)
    assert text.startswith(f"usage: mind {command}")
    missing = [flag for flag in CONTRACT_FLAGS[command] if flag not in text]
    assert not missing, f"`mind {command} --help` does not mention {missing}:\n{text}"


@pytest.mark.parametrize("command", sorted(CONTRACT_FLAGS))
def test_unknown_flag_is_a_usage_error(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--no-such-flag"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: mind") and "error:" in err


def test_no_command_prints_usage_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: mind" in capsys.readouterr().out
