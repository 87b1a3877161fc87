import pytest
import yaml

from brain3d import config


def test_profiles_resolve_without_conflicts():
    params = yaml.safe_load(open("params.yaml"))
    for profile in params["profiles"]:
        cfg = config.resolve({**params, "profile": profile})
        assert "profiles" not in cfg
        assert len(cfg["preprocess"]["shape"]) == 3
        assert cfg["phase2b"]["lora_rank"] == params["phase2b"]["lora_rank"]  # shared key, both profiles


def test_paper_profile_uses_paper_shapes_and_backbones():
    params = yaml.safe_load(open("params.yaml"))
    cfg = config.resolve({**params, "profile": "paper"})
    assert cfg["preprocess"]["shape"] == [64, 128, 128]
    assert cfg["foundation"]["vision_repo"] == "google/medsiglip-448"
    assert cfg["foundation"]["lm_repo"] == "google/medgemma-1.5-4b-it"
    assert (cfg["model"]["kd"], cfg["model"]["depth_stride"], cfg["model"]["depth_pad"]) == (2, 1, 1)


def test_a_key_set_twice_is_refused():
    params = {
        "profile": "demo",
        "phase2b": {"lora_rank": 4},
        "profiles": {"demo": {"phase2b": {"lora_rank": 16}}},
    }
    with pytest.raises(ValueError, match="phase2b.lora_rank"):
        config.resolve(params)


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match=r"profile: .nope. is not a valid choice \(expected one of demo\)"):
        config.resolve({"profile": "nope", "profiles": {"demo": {}}})
