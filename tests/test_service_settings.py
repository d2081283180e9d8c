"""Settings: environment, CLI overrides, refusal of bad values, and their documentation."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from service import main as serve
from service.app import create_app
from service.settings import Settings, default_faiss_threads

DOCS = Path(__file__).resolve().parents[1] / "docs" / "service.md"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.configure_parser(parser)
    return parser.parse_args(argv)


def test_flags_override_environment(monkeypatch):
    monkeypatch.setenv("MIND_PORT", "9100")
    monkeypatch.setenv("MIND_MAX_TOP_N", "77")
    settings = serve.settings_from(parse("--port", "9200", "--batch-wait-ms", "0.5"))
    assert settings.port == 9200 and settings.batch_wait_ms == 0.5     # flags win
    assert settings.max_top_n == 77                                    # env still applies
    assert serve.settings_from(parse()).port == 9100


def test_bad_settings_exit_2_with_a_message(monkeypatch, capsys):
    assert serve.main(parse("--workers", "2")) == 2
    assert "workers" in capsys.readouterr().out
    monkeypatch.setenv("MIND_MERGE_POLICY", "random")
    assert serve.main(parse()) == 2
    assert "merge_policy" in capsys.readouterr().out


def test_faiss_threads_leave_a_core_to_the_event_loop():
    assert [default_faiss_threads(n) for n in (None, 1, 2, 4, 64)] == [1, 1, 1, 3, 8]


def test_every_setting_is_documented():
    text = DOCS.read_text()
    missing = [name for name in Settings.model_fields if f"`MIND_{name.upper()}`" not in text]
    assert not missing, f"docs/service.md lacks {missing}"


def test_openapi_describes_the_recall_contract():
    schema = create_app(Settings(bundle=None)).openapi()
    recall = schema["paths"]["/recall"]["post"]
    assert recall["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/RecallResponse")
    assert {"items", "interests", "cold_start", "unknown_items", "model_version", "took_ms"} <= set(
        schema["components"]["schemas"]["RecallResponse"]["properties"])
    assert "/admin/reload" in schema["paths"] and "/recall/batch" in schema["paths"]


@pytest.mark.parametrize("value", ["0", "-3"])
def test_non_positive_limits_are_refused(monkeypatch, value):
    monkeypatch.setenv("MIND_MAX_BATCH_SIZE", value)
    with pytest.raises(ValueError, match="max_batch_size"):
        Settings()
