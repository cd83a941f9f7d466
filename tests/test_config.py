import json
from pathlib import Path

import pytest

from llink.config import Config, ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_offline_setup():
    cfg = load_config()
    assert cfg.model.encoder == "offline:multilingual-e5-small"
    assert cfg.model.decoder == "offline:smollm2-135m-instruct"
    assert cfg.model.num_slots == 8 and cfg.data.pairs == "builtin:en-km"


def test_shipped_configs_load():
    offline = load_config(ROOT / "configs" / "offline.yaml")
    assert offline.model == Config().model
    paper = load_config(ROOT / "configs" / "paper.yaml")
    assert paper.model.encoder == "xlm-roberta-base"
    assert paper.model.decoder == "meta-llama/Llama-3.2-1B-Instruct"
    assert paper.stage_a.steps == 20000
    assert paper.stage_a.batch_size * paper.stage_a.grad_accum == 128
    assert paper.stage_a.betas == (0.9, 0.98) and paper.stage_a.targets == "raw"
    assert paper.stage_b.usage_every == 3 and paper.stage_b.mismatch_weight == 0.0


def test_overrides_types_and_errors(tmp_path):
    cfg = load_config(None, ["stage_a.steps=12", "stage_a.lr=3e-4", "data.max_train_pairs=none",
                             "stage_b.lora_targets=q_proj,v_proj", "stage_a.betas=[0.8, 0.9]",
                             "run_dir=runs/x", "stage_a.targets=centred"])
    assert cfg.stage_a.steps == 12 and cfg.stage_a.lr == pytest.approx(3e-4)
    assert cfg.data.max_train_pairs is None and cfg.stage_b.lora_targets == ["q_proj", "v_proj"]
    assert cfg.stage_a.betas == (0.8, 0.9) and cfg.stage_a.targets == "centred"
    for bad, msg in [("stage_a.steps=many", "integer"), ("stage_a.nope=1", "unknown setting"),
                     ("stage_a=3", "section"), ("steps", "key=value"),
                     ("data.sentence_like_only=maybe", "true/false")]:
        with pytest.raises(ConfigError, match=msg):
            load_config(None, [bad])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_file_formats_and_round_trip(tmp_path):
    (tmp_path / "c.toml").write_text('run_dir = "r"\n[stage_a]\nsteps = 7\n')
    (tmp_path / "c.json").write_text(json.dumps({"stage_b": {"steps": 5}}))
    assert load_config(tmp_path / "c.toml").stage_a.steps == 7
    assert load_config(tmp_path / "c.json").stage_b.steps == 5
    cfg = load_config(tmp_path / "c.toml", ["stage_a.steps=9"])
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
