"""Every numeric config field has a checked range (configlib.RANGES, checked by configlib.validate), and
docs/config_ranges.md is generated from that table."""
import glob
import os

import pytest

from spr_jax import config_files, config_ranges, configlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numeric_fields(config):
    return {name for name, v in configlib._leaves(config)
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_every_numeric_field_has_a_range():
    assert numeric_fields(configlib.base_config()) == {r.field for r in configlib.RANGES}


def test_the_docs_table_is_generated_from_the_ranges():
    with open(config_ranges.DOC) as f:
        assert f.read() == config_ranges.markdown(), "run: python -m spr_jax.config_ranges"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_bundled_config_is_in_range(path):
    configlib.validate(config_files.load_file(path))


def _with(field, value):
    c = configlib.base_config()
    *parents, leaf = field.split(".")
    node = c
    for p in parents:
        node = node[p]
    with node.ignore_type():
        node[leaf] = value
    return c


@pytest.mark.parametrize("field, value, interval", [
    ("checkpoint.keep", 0, "[1, inf)"),
    ("checkpoint.every_chunks", -2, "[1, inf)"),
    ("ssl.warmup_epochs", -1, "[0, inf)"),
    ("ssl.temperature", 0.0, "(0, inf)"),
    ("eval.clip", -1.0, "(0, inf)"),
    ("eval.decay", 1.5, "(0, 1]"),
    ("eval.decay_every", 0, "[1, inf)"),
    ("online.replay_batch", 0, "[1, inf)"),
    ("model.proj_dim", 0, "[1, inf)"),
    ("filter.max_iter", -5, "[1, inf)"),
    ("cache.cpu_opt_level", 4, "[-1, 3]"),
    ("seed", 2 ** 31, "[0, 2147483647]"),
    ("buffer.size", 2.5, "[0, inf)"),  # not an integer
    ("expert.epochs", True, "[1, inf)"),  # a bool is not a count
])
def test_a_value_out_of_range_is_one_line_naming_field_value_range_and_default(field, value, interval):
    with pytest.raises(configlib.ConfigError) as e:
        configlib.validate(_with(field, value))
    message = str(e.value)
    default = configlib._get(configlib.base_config(), field)
    assert message.startswith(f"config.{field}={value!r} is outside {interval}: it must be "), message
    assert message.endswith(f"the default is {default}") and "\n" not in message, message


@pytest.mark.parametrize("field, value", [("ssl.warmup_epochs", 0), ("eval.decay", 1.0), ("cache.cpu_opt_level", -1),
                                          ("buffer.size", 0), ("noise.rate", 1), ("eval.clip", 1e-6)])
def test_values_at_the_edges_of_their_range_are_accepted(field, value):
    configlib.validate(_with(field, value))
