"""Hub conventions on tiny models and local folders: save_pretrained, from_pretrained (a
local folder, a hub id served from a local hub cache, a hub id that cannot be fetched),
push_to_hub, and the model card.

No test reaches the Hugging Face hub. ``from_pretrained`` of a hub id runs the real
``huggingface_hub.snapshot_download`` against a hub cache laid out on disk
(``local_files_only``), or with the hub switched off. Pushing is tested with
``huggingface_hub.HfApi`` replaced by a recording stand-in: that checks llink's glue (what
it creates, which folder and files it uploads, how it reports a failure), not the hub.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub.errors import HTTPError

import llink.storage.hub as hub
from llink import LLINK
from llink.cli import main
from llink.reporting.card import corpus_licences, model_card, write_model_card
from llink.storage.checkpoints import CARD_FILE, HASH_KEY, CheckpointError, folder_digest
from llink.storage.hub import HubError
from llink.workflows import (
    Session,
    evaluate_generation,
    evaluate_nll_on_test,
    evaluate_numbers,
    evaluate_retrieval,
    run_stage_a,
    run_stage_b,
)

from .conftest import KHMER_ENGLISH
from .test_stage_a import make_pair_file
from .test_stage_b import _b_cfg

KM = [km for _, km in KHMER_ENGLISH[:3]]
REPO = Path(__file__).resolve().parents[1]
PROVENANCE = REPO / "src" / "llink" / "corpora" / "en-km.PROVENANCE.md"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_encoder_dir, tiny_decoder_dir):
    """A tiny Stage A + Stage B run, evaluated like the main job (retrieval, test NLL,
    generation, numbers); the card Stage B wrote is kept aside before the evaluations."""
    root = tmp_path_factory.mktemp("hub")
    cfg = _b_cfg(root, tiny_encoder_dir, tiny_decoder_dir, make_pair_file(root),
                 **{"stage_b.steps": 4, "stage_b.bridge_warmup_steps": 2,
                    "stage_b.eval_every": 2, "stage_b.save_every": 4})
    session = Session(cfg, progress=False)
    run_stage_a(session)
    run_stage_b(session)
    run_dir = Path(cfg.run_dir)
    first_card = (run_dir / "stage_b" / CARD_FILE).read_text(encoding="utf-8")
    evaluate_retrieval(session)
    evaluate_nll_on_test(session, limit=6)
    evaluate_generation(session, ["llink", "base"], n=6, max_new_tokens=4, batch_size=3)
    evaluate_numbers(session)
    everyday = root / "everyday.jsonl"  # a set with key words, as the main job's everyday set
    everyday.write_text("".join(
        json.dumps({"en": en, "foreign": km, "accept": [[en.split()[0].lower()]]},
                   ensure_ascii=False) + "\n" for en, km in KHMER_ENGLISH[:3]))
    evaluate_generation(session, ["llink", "base"], max_new_tokens=4, batch_size=3,
                        pairs_file=str(everyday), strict=True)
    return SimpleNamespace(cfg=cfg, session=session, dir=run_dir, model=run_dir / "stage_b",
                           first_card=first_card)


def _generate(model: LLINK) -> list[str]:
    return model.generate(KM, max_new_tokens=4)


@pytest.fixture(scope="module")
def reference(run) -> list[str]:
    return _generate(LLINK.from_pretrained(run.model, encoder=run.session.encoder))


# --------------------------------------------------------------------------- model card
def test_stage_b_writes_a_card_with_the_hub_metadata(run):
    card = run.first_card
    front, body = card.split("---\n", 2)[1:]
    assert "library_name: llink" in front and '- "km"' in front and '- "en"' in front
    for heading in ("## Base models", "## Languages", "## Training data", "## Held-out results",
                    "## Intended use", "## Limitations", "## Licence"):
        assert heading in body, heading
    assert f"`{run.cfg.model.encoder}`" in body and f"`{run.cfg.model.decoder}`" in body
    # before any evaluation there is no held-out figure to show, and the card says so
    assert "No held-out evaluation of these weights was found" in body
    # a pair file without a PROVENANCE.md: the licence is unknown, and the card says so
    assert "its licence is not recorded" in body
    assert "**Numbers**" in body


def test_card_shows_the_results_measured_on_these_weights(run, capsys):
    rc = main(["card", str(run.dir)])
    assert rc == 0 and "model card written" in capsys.readouterr().out
    card = (run.model / CARD_FILE).read_text(encoding="utf-8")
    nll = json.loads((run.dir / "eval" / "nll.json").read_text())
    gen = json.loads((run.dir / "eval" / "gen.json").read_text())
    numbers = json.loads((run.dir / "eval" / "numbers.json").read_text())
    retrieval = json.loads((run.dir / "eval" / "retrieval.json").read_text())
    assert f"| {nll['nll_injected']:.3f} | {nll['nll_ablated']:.3f} |" in card
    llink = gen["systems"]["llink"]
    assert f"| LLINK (this model) | {llink['chrf']:.2f} |" in card
    stage_a = next(v for k, v in retrieval["rows"].items() if k.startswith("LLINK Stage A"))
    assert f"| {stage_a['R@1']:.3f} |" in card
    assert (f"Numbers kept: of {numbers['n_with_numbers']} held-out references" in card
            and "Measured: all numbers kept in" in card)
    first = json.loads((run.dir / "eval" / "gen" / "llink.jsonl").read_text().splitlines()[0])
    assert json.dumps(first["source"], ensure_ascii=False) in card  # the usage example
    assert "Left out" not in card
    everyday = json.loads((run.dir / "eval" / "gen-everyday.json").read_text())
    right = everyday["accepted"]["systems"]["llink"]["right"]
    assert "| input margin | right |" in card and f"| {right} of 3 |" in card


def test_card_of_other_weights_leaves_their_results_out(run):
    """stage_b-best is another model of the same run: the test NLL and generations were
    measured on stage_b, so they are left out; Stage A retrieval (same projector) stays."""
    card = model_card(run.dir / "stage_b-best", run.dir)
    assert "Translation to English" not in card and "Answer NLL" not in card
    assert ("Left out, measured on other weights: eval/gen-everyday.json, eval/gen.json, "
            "eval/nll.json.") in card
    assert "Stage A retrieval" in card


def test_writing_the_card_changes_no_digest(run, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(run.model, folder)
    before = folder_digest(folder)
    (folder / CARD_FILE).write_text("edited\n")
    assert folder_digest(folder) == before
    (folder / "llink.json").write_text((folder / "llink.json").read_text() + " ")
    assert folder_digest(folder) != before


def test_corpus_licences_from_the_shipped_provenance():
    sources = {s.group: s for s in corpus_licences(PROVENANCE)}
    assert list(sources) == ["libreoffice-help", "gettext", "firefox"]
    assert sources["libreoffice-help"].licence == "MPL-2.0"
    assert sources["firefox"].licence == "MPL-2.0" and sources["firefox"].pairs == 3140
    gettext = sources["gettext"]
    assert gettext.licence == "each package's own" and gettext.pairs == 74930
    assert gettext.by_licence["GPL-2+"] > 0 and sum(gettext.by_licence.values()) > 50000


def test_card_names_the_data_licences_from_a_provenance_file(run, tmp_path):
    (run.dir.parent / "pairs.PROVENANCE.md").write_text(PROVENANCE.read_text())
    try:
        card = model_card(run.model, run.dir)
    finally:
        (run.dir.parent / "pairs.PROVENANCE.md").unlink()
    assert "| LibreOffice help | 17,410 | MPL-2.0 |" in card
    assert "| gettext catalogues | 74,930 | each package's own (share of pairs: GPL-2+" in card
    assert "Domain**: trained on LibreOffice help, gettext catalogues, Firefox only" in card


def test_card_of_a_folder_that_is_no_model(tmp_path, capsys):
    rc = main(["card", str(tmp_path), "--model", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2 and "no LLINK model at" in err and "Traceback" not in err


# --------------------------------------------------------------------------- save / load
def test_save_pretrained_round_trip(run, reference, tmp_path):
    model = LLINK.from_pretrained(run.model, encoder=run.session.encoder)
    assert model.source == run.model and model.meta["encoder"] == run.cfg.model.encoder
    out = model.save_pretrained(tmp_path / "copy")
    saved = json.loads((out / "llink.json").read_text())
    # the same artifact owner wrote it: byte-identical weights, the same metadata
    assert saved == json.loads((run.model / "llink.json").read_text())
    assert set(saved[HASH_KEY]) == {"bridge.safetensors", "lora/adapter_model.safetensors"}
    # its card carries the run's held-out results (measured on these same weights)
    assert "| LLINK (this model) |" in (out / CARD_FILE).read_text(encoding="utf-8")
    again = LLINK.from_pretrained(out, encoder=run.session.encoder)
    assert _generate(again) == reference
    bare = again.save_pretrained(tmp_path / "bare", card=False)
    assert not (bare / CARD_FILE).exists()


def test_a_copy_outside_its_run_keeps_its_card(run, tmp_path):
    """A folder away from its run (e.g. a hub download) keeps its card when saved again
    unchanged; saved after a change, it gets a new card without the old results."""
    shutil.copytree(run.model, tmp_path / "away")
    write_model_card(tmp_path / "away", run.dir)
    card = (tmp_path / "away" / CARD_FILE).read_text(encoding="utf-8")
    model = LLINK.from_pretrained(tmp_path / "away", encoder=run.session.encoder)
    out = model.save_pretrained(tmp_path / "again")
    assert (out / CARD_FILE).read_text(encoding="utf-8") == card
    with __import__("torch").no_grad():
        next(model.bridge.parameters()).add_(0.01)
    changed = model.save_pretrained(tmp_path / "changed")
    text = (changed / CARD_FILE).read_text(encoding="utf-8")
    assert "| LLINK (this model) |" not in text and "No held-out evaluation" in text
    # without its run folder, the card reads the data settings Stage B kept in llink.json
    assert "# LLINK: Khmer (km) → English" in text and "Pairs per split" in text


def test_save_pretrained_needs_llink_metadata(run, tmp_path):
    model = LLINK.from_pretrained(run.model, encoder=run.session.encoder)
    model.meta = None
    with pytest.raises(CheckpointError, match="carries no llink metadata"):
        model.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the hub was called")

    monkeypatch.setattr(hub, "snapshot_download", refuse)
    monkeypatch.setattr(hub, "HfApi", refuse)


def test_a_local_folder_never_touches_the_network(run, reference, monkeypatch, tmp_path):
    _no_network(monkeypatch)
    assert _generate(LLINK.from_pretrained(str(run.model), encoder=run.session.encoder)) == \
        reference
    monkeypatch.chdir(run.dir)
    assert hub.pretrained_folder("stage_b") == Path("stage_b")  # relative, existing
    # a path that does not exist is a missing folder, not a hub id
    with pytest.raises(CheckpointError, match="no LLINK model at"):
        LLINK.from_pretrained(str(tmp_path / "missing" / "stage_b"))


def _hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """The layout huggingface_hub keeps downloads in: refs/main → snapshots/<commit>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


def test_a_hub_id_loads_from_the_hub_cache(run, reference, tmp_path):
    _hub_cache(tmp_path / "hub", "someone/llink-km", run.model)
    model = LLINK.from_pretrained("someone/llink-km", hub_cache_dir=tmp_path / "hub",
                                  local_files_only=True, encoder=run.session.encoder)
    assert _generate(model) == reference
    assert model.source.parent.name == "snapshots"


def test_a_hub_id_that_cannot_be_fetched_is_a_clear_error(monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError) as err:
        LLINK.from_pretrained("someone/missing", hub_cache_dir=tmp_path)
    for needle in ("someone/missing: no such folder here", "hub could not provide it",
                   "HF_HUB_OFFLINE=1"):
        assert needle in str(err.value)
    with pytest.raises(HubError, match="not a hub repository id"):
        LLINK.from_pretrained("no such model")
    rc = main(["infer", "--model", "someone/missing", "--device", "cpu", KM[0]])
    err_text = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err_text
    assert err_text.strip().splitlines()[-1].startswith("llink: error: someone/missing:")


# --------------------------------------------------------------------------- push
class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi: records calls and keeps what it is sent."""

    calls: list[tuple[str, dict]] = []
    remote: Path | None = None
    fail: bool = False

    def __init__(self, token=None):
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kwargs):
        if self.fail:
            raise HTTPError("Name or service not known")  # what a client without DNS gets
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        shutil.copytree(kwargs["folder_path"], self.remote)
        return SimpleNamespace(commit_url=f"https://hub.example/{kwargs['repo_id']}/commit/1")


@pytest.fixture
def recording_hub(monkeypatch, tmp_path):
    RecordingHfApi.calls = []
    RecordingHfApi.remote = tmp_path / "remote"
    RecordingHfApi.fail = False
    monkeypatch.setattr(hub, "HfApi", RecordingHfApi)
    monkeypatch.setattr(hub, "snapshot_download",
                        lambda repo_id, **kw: str(RecordingHfApi.remote))
    return RecordingHfApi


def test_push_to_hub_uploads_the_saved_folder_and_loads_back(run, reference, recording_hub):
    model = LLINK.from_pretrained(run.model, encoder=run.session.encoder)
    url = model.push_to_hub("me/llink-km", private=True, commit_message="first")
    assert url == "https://hub.example/me/llink-km/commit/1"
    names = [c[0] for c in recording_hub.calls]
    assert names == ["init", "create_repo", "upload_folder"]
    assert recording_hub.calls[1][1] == {"repo_id": "me/llink-km", "repo_type": "model",
                                         "private": True, "exist_ok": True}
    upload = recording_hub.calls[2][1]
    assert upload["repo_id"] == "me/llink-km" and upload["commit_message"] == "first"
    assert not Path(upload["folder_path"]).exists()  # the temporary folder is gone
    remote = recording_hub.remote
    files = {p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file()}
    assert {"COMPLETE", "llink.json", "bridge.safetensors", CARD_FILE,
            "lora/adapter_config.json", "lora/adapter_model.safetensors"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    back = LLINK.from_pretrained("me/llink-km", encoder=run.session.encoder)
    assert _generate(back) == reference


def test_llink_push_checks_the_folder_before_uploading(run, recording_hub, tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(run.model, folder)
    (folder / CARD_FILE).unlink()
    assert main(["push", str(folder), "me/llink-km"]) == 0
    assert "pushed" in capsys.readouterr().out and (folder / CARD_FILE).is_file()
    # a damaged folder is refused before anything is sent
    recording_hub.calls.clear()
    bridge = folder / "bridge.safetensors"
    bridge.write_bytes(bridge.read_bytes()[:-8] + bytes(8))
    assert main(["push", str(folder), "me/other"]) == 2
    assert "contents differ from the SHA-256" in capsys.readouterr().err
    assert recording_hub.calls == []


def test_a_failed_push_is_one_clear_error(run, recording_hub, capsys):
    recording_hub.fail = True
    assert main(["push", str(run.model), "me/llink-km"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"llink: error: could not push {run.model} to the hub repository "
                           "me/llink-km (Name or service not known)")
    assert "hf auth login" in line
