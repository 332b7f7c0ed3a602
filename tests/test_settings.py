import re
from pathlib import Path

import pytest

from flows.settings import ConfigError, Settings, env_overrides, load_settings


def test_defaults_come_from_the_packaged_yaml():
    s = load_settings(environ={})
    assert s.model.source == "embedded"
    assert s.llm.base_url is None
    assert s.output.dir == Path("covercraft-output")
    assert s.sampling.candidates == 4


def test_layers_file_env_then_flags(tmp_path):
    cfg = tmp_path / "my.yaml"
    cfg.write_text("sampling:\n  seed: 5\n  candidates: 2\nprompt:\n  style: photo\n")
    env = {"COVERCRAFT_SAMPLING__SEED": "7", "COVERCRAFT_OUTPUT__DIR": "/tmp/x", "UNRELATED": "1"}
    s = load_settings(cfg, {"sampling": {"candidates": 3}}, environ=env)
    assert s.sampling.seed == 7  # env beats the file
    assert s.sampling.candidates == 3  # flags beat everything
    assert s.prompt.style == "photo"  # the file beats the defaults
    assert s.output.dir == Path("/tmp/x")


def test_env_values_are_typed():
    assert env_overrides({"COVERCRAFT_OUTPUT__UPSCALE": "true", "COVERCRAFT_SAMPLING__TOP_P": "0.9"}) == {
        "output": {"upscale": True},
        "sampling": {"top_p": 0.9},
    }


@pytest.mark.parametrize(
    "yaml_text, fragment",
    [
        ("sampling:\n  sed: 3\n", "unknown config key 'sampling.sed'"),
        ("samplin:\n  seed: 3\n", "unknown config key 'samplin'"),
        ("sampling:\n  candidates: 0\n", "invalid config value for 'sampling.candidates'"),
        ("model:\n  dtype: float8\n", "invalid config value for 'model.dtype'"),
        ("- a\n- b\n", "expected a mapping"),
        ("sampling: [\n", "not valid YAML"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, yaml_text, fragment):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_env_key_is_refused():
    with pytest.raises(ConfigError, match="unknown config key 'output.dri'"):
        load_settings(environ={"COVERCRAFT_OUTPUT__DRI": "x"})


def test_api_key_only_from_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert Settings().llm.api_key == "sk-test"
    with pytest.raises(ConfigError, match="unknown config key 'llm.api_key'"):
        load_settings(overrides={"llm": {"api_key": "x"}}, environ={})


def test_errors_name_the_layer_and_the_run_parameter_that_set_the_bad_value(tmp_path):
    from flows.pipeline import settings_for_run

    cases = [
        (dict(candidates=0), "'sampling.candidates'", "the run's parameter 'candidates'"),
        (dict(platforms=["tiktok"]), "'output.platforms'", "the run's parameter 'platforms'"),
        (dict(overrides={"sampling": {"top_k": -3}}), "'sampling.top_k'", "the run's parameter 'overrides'"),
        (dict(overrides={"samplng": {"x": 1}}), "'samplng'", "the run's parameter 'overrides'"),
    ]
    for kwargs, key, origin in cases:
        with pytest.raises(ConfigError) as err:
            settings_for_run(**kwargs)
        assert key in str(err.value) and f"({origin})" in str(err.value), err.value
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sampling:\n  candidates: 0\n")
    with pytest.raises(ConfigError, match=rf"\({re.escape(str(cfg))}\)"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match=r"\(COVERCRAFT_\* environment\)"):
        load_settings(environ={"COVERCRAFT_SAMPLING__CANDIDATES": "0"})
    with pytest.raises(ConfigError, match=r"\(command-line flags\)"):
        load_settings(overrides={"sampling": {"candidates": 0}}, environ={})
