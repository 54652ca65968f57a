import json

import pytest

from solu.config import ModelConfig, TrainConfig

SHAPE = dict(n_layers=1, d_model=128, d_mlp=512, n_heads=4, n_ctx=128, d_vocab=4096)


@pytest.mark.parametrize("act", ["gelu", "solu_ln"])
def test_model_config_round_trips_through_json(act):
    cfg = ModelConfig(act_fn=act, **SHAPE)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.d_head == 32


def test_train_config_round_trips_through_json():
    cfg = TrainConfig(dataset="corpus.jsonl", tokens=1000, lr=1e-3, seed=3, device="cpu")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("change, message", [
    ({"act_fn": "relu"}, "unknown act_fn"),
    ({"n_heads": 3}, "must divide d_model"),
    ({"n_layers": 0}, "n_layers must be a positive integer"),
    ({"d_vocab": 100}, "d_vocab must be at least"),
])
def test_model_config_rejects_bad_values(change, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{"act_fn": "gelu", **SHAPE, **change})


@pytest.mark.parametrize("change", [{"tokens": 0}, {"lr": 0.0}, {"device": "tpu"}, {"min_lr_ratio": 2.0}])
def test_train_config_rejects_bad_values(change):
    with pytest.raises(ValueError):
        TrainConfig(**change)
