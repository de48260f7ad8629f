"""Tests for titans.config_io: YAML loading, overrides, validation errors and round trips."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from titans.config_io import ConfigError, config_keys, load_config, save_config, to_dict


@dataclass
class ModelConfig:
    dim: int = 64
    depth: int = 2
    window: int | None = None
    variant: Literal["mac", "mag", "mal"] = "mac"
    use_gate: bool = True
    chunk_sizes: list[int] = field(default_factory=lambda: [16, 32])

    def validate(self) -> None:
        if self.dim % 2:
            raise ValueError(f"dim must be even, got {self.dim}")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    name: str = "run"
    out_dir: Path = Path("runs")
    tags: list[str] = field(default_factory=list)


@dataclass
class RequiredConfig:
    steps: int
    note: str = ""


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_when_no_source() -> None:
    assert load_config(ExperimentConfig) == ExperimentConfig()
    assert load_config(ExperimentConfig, {}) == ExperimentConfig()


def test_loads_nested_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "model:\n  dim: 128\n  variant: mag\noptim:\n  lr: 1\nseed: 7\ntags: [a, b]\n")
    config = load_config(ExperimentConfig, path)
    assert config.model == ModelConfig(dim=128, variant="mag")
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)  # int accepted for float
    assert (config.seed, config.tags) == (7, ["a", "b"])


def test_overrides_parse_values_with_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "model:\n  dim: 128\n")
    config = load_config(
        ExperimentConfig,
        path,
        [
            "model.depth=4",
            "optim.lr=1e-3",
            "model.use_gate=false",
            "model.chunk_sizes=[1, 2]",
            "model.window=512",
            "--set name=hello world",
            "out_dir=/tmp/x",
            "optim.betas=[0.8, 0.99]",
        ],
    )
    assert config.model == ModelConfig(dim=128, depth=4, window=512, use_gate=False, chunk_sizes=[1, 2])
    assert config.optim.lr == pytest.approx(1e-3)
    assert config.optim.betas == (0.8, 0.99)
    assert config.name == "hello world"
    assert config.out_dir == Path("/tmp/x")


def test_override_null_for_optional_and_later_override_wins() -> None:
    config = load_config(ExperimentConfig, {"model": {"window": 64}}, ["model.window=null", "seed=1", "seed=2"])
    assert config.model.window is None
    assert config.seed == 2


def test_override_creates_section_missing_from_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "seed: 3\n")
    assert load_config(ExperimentConfig, path, ["optim.weight_decay=0"]).optim.weight_decay == 0.0


def test_input_mapping_is_not_modified() -> None:
    data = {"model": {"dim": 8}}
    load_config(ExperimentConfig, data, ["model.dim=16"])
    assert data == {"model": {"dim": 8}}


@pytest.mark.parametrize(
    ("data", "overrides", "expected"),
    [
        ({"modle": {}}, [], "unknown config key 'modle'. Did you mean 'model'?"),
        ({"model": {"dimm": 3}}, [], "unknown config key 'model.dimm'. Did you mean 'model.dim'?"),
        ({}, ["optim.learning_rate=1"], "unknown config key 'optim.learning_rate'"),
        ({}, ["zzz=1"], "Valid keys in the top level: model, optim, seed, name, out_dir, tags"),
    ],
)
def test_unknown_keys_name_the_dotted_key_and_suggest(data: dict, overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError, match="unknown config key") as info:
        load_config(ExperimentConfig, data, overrides)
    assert expected in str(info.value)


def test_unknown_nested_key_lists_valid_keys_at_its_level() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ExperimentConfig, {}, ["model.dimm=3"])
    assert "Valid keys in 'model': dim, depth, window, variant, use_gate, chunk_sizes" in str(info.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.dim=abc", "config key 'model.dim' expects int, got 'abc' (str)"),
        ("model.dim=2.5", "config key 'model.dim' expects int, got 2.5 (float)"),
        ("model.dim=true", "config key 'model.dim' expects int, got True (bool)"),
        ("model.window=x", "config key 'model.window' expects int | None, got 'x' (str)"),
        ("model.use_gate=1", "config key 'model.use_gate' expects bool, got 1 (int)"),
        ("optim.lr=fast", "config key 'optim.lr' expects float, got 'fast' (str)"),
        ("model.chunk_sizes=[1, x]", "config key 'model.chunk_sizes[1]' expects int, got 'x' (str)"),
        ("model.chunk_sizes=5", "config key 'model.chunk_sizes' expects list[int], got 5 (int)"),
        ("name=[1]", "config key 'name' expects str, got [1] (list)"),
        ("model=3", "config key 'model' expects ModelConfig, got 3 (int)"),
        ("optim.betas=[1]", "config key 'optim.betas' expects 2 items"),
    ],
)
def test_wrong_types_name_key_type_and_value(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ExperimentConfig, {}, [override])
    assert expected in str(info.value)


def test_literal_choices_are_enforced() -> None:
    with pytest.raises(ConfigError, match=r"'model.variant' must be one of 'mac', 'mag', 'mal'; got 'lstm'"):
        load_config(ExperimentConfig, {}, ["model.variant=lstm"])


def test_validate_method_runs_and_its_error_names_the_section() -> None:
    with pytest.raises(ConfigError, match=r"invalid config 'model': dim must be even, got 3"):
        load_config(ExperimentConfig, {}, ["model.dim=3"])


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match=r"missing required config key 'steps'"):
        load_config(RequiredConfig, {"note": "x"})
    assert load_config(RequiredConfig, {}, ["steps=5"]).steps == 5


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.dim", "must look like 'section.key=value'"),
        ("model..dim=3", "empty key part"),
        ("seed.value=3", "cannot set 'seed.value': 'seed' is a value (0), not a section"),
        ("model.dim=[1, 2", "cannot parse the value"),
    ],
)
def test_malformed_overrides(override: str, expected: str) -> None:
    data = {"seed": 0}
    with pytest.raises(ConfigError) as info:
        load_config(ExperimentConfig, data, [override])
    assert expected in str(info.value)


def test_overrides_given_as_one_string_are_rejected() -> None:
    with pytest.raises(ConfigError, match="list of 'key=value' strings"):
        load_config(ExperimentConfig, {}, "seed=1")


def test_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"config file not found: {missing}"):
        load_config(ExperimentConfig, missing)
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(ExperimentConfig, write_yaml(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="must hold a mapping at the top level, got list"):
        load_config(ExperimentConfig, write_yaml(tmp_path, "- 1\n- 2\n"))
    assert load_config(ExperimentConfig, write_yaml(tmp_path, "")) == ExperimentConfig()


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_to_dict_and_save_round_trip(tmp_path: Path) -> None:
    config = load_config(
        ExperimentConfig, {}, ["model.dim=256", "model.window=128", "optim.lr=2e-4", "tags=[x]", "name=r1"]
    )
    plain = to_dict(config)
    assert plain["model"]["window"] == 128 and plain["out_dir"] == "runs" and plain["optim"]["betas"] == [0.9, 0.95]
    assert load_config(ExperimentConfig, plain) == config
    path = save_config(config, tmp_path / "sub" / "saved.yaml")
    assert load_config(ExperimentConfig, path) == config
    assert path.read_text().startswith("model:\n  dim: 256\n")  # field order is kept


def test_config_keys_lists_dotted_keys() -> None:
    keys = config_keys(ExperimentConfig)
    assert "model.dim" in keys and "optim.betas" in keys and "seed" in keys and "model" not in keys
