"""spr_jax's programs on a CPU compile with XLA's LLVM optimisation level config.cache.cpu_opt_level."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spr_jax import compilation, configlib


@pytest.fixture
def level():
    """Restores the process-wide level after a test changes it."""
    yield compilation.set_cpu_opt_level
    compilation.set_cpu_opt_level(configlib.base_config().cache.cpu_opt_level)


def _recording_jit(monkeypatch):
    seen = []
    real = jax.jit

    def recording(fun, **kwargs):
        seen.append(kwargs.get("compiler_options"))
        return real(fun, **kwargs)

    monkeypatch.setattr(jax, "jit", recording)
    return seen


def test_programs_get_the_configured_level_on_a_cpu_and_xla_defaults_when_switched_off(monkeypatch, level):
    seen = _recording_jit(monkeypatch)
    program = compilation.jit(lambda x: jnp.tanh(x) * 2.0)
    x = jnp.linspace(-1.0, 1.0, 8)
    level(1)
    expected = program(x)
    level(-1)
    default = program(x)
    level(0)
    program.lower(x).compile()
    assert seen == [{"xla_backend_optimization_level": 1}, None, {"xla_backend_optimization_level": 0}]
    np.testing.assert_array_equal(np.asarray(default), np.asarray(expected))
    assert compilation.compiler_options("gpu") is None and compilation.compiler_options("tpu") is None


def test_a_program_called_inside_another_compiles_as_part_of_it(monkeypatch, level):
    level(1)
    inner = compilation.jit(lambda x: x * 3.0)
    outer = compilation.jit(lambda x: inner(x) + 1.0)  # jax refuses compiler options on a nested jit
    assert float(outer(jnp.float32(2.0))) == 7.0


def test_an_opt_level_outside_llvms_range_is_refused():
    c = configlib.base_config()
    c.cache.cpu_opt_level = 4
    with pytest.raises(configlib.ConfigError, match="cpu_opt_level=4"):
        configlib.validate(c)
    with pytest.raises(ValueError, match="0-3"):
        compilation.set_cpu_opt_level(7)


def test_a_program_traced_without_tracer_arguments_compiles_as_part_of_the_trace(level):
    level(1)
    inner = compilation.jit(lambda x: x * 3.0)
    # Concrete arguments, but inside jax's trace: jax refuses compiler options here, so none are passed.
    x = jnp.float32(2.0)
    out = jax.eval_shape(lambda: inner(x))
    assert out.shape == () and out.dtype == jnp.float32
    assert float(jax.jit(lambda y: inner(x) + y)(1.0)) == 7.0  # a closure inside another program's jit
    assert not compilation.tracing() and float(inner(x)) == 6.0  # and at the top level, with the options


def test_a_programs_own_cpu_options_come_with_the_level_and_go_with_it(monkeypatch, level):
    seen = _recording_jit(monkeypatch)
    program = compilation.jit(lambda x: x + 1.0, cpu_options={"xla_cpu_prefer_vector_width": 512})
    level(1)
    program(jnp.ones(4))
    level(-1)
    program(jnp.ones(4))
    assert seen == [{"xla_backend_optimization_level": 1, "xla_cpu_prefer_vector_width": 512}, None]


@pytest.mark.parametrize("flags, width", [({"avx", "avx2", "fma"}, 256), ({"avx2", "avx512f"}, 512), (set(), 256)])
def test_wide_vector_programs_get_the_cpus_widest_vectors_unless_set(monkeypatch, level, flags, width):
    monkeypatch.setattr(compilation, "cpu_flags", lambda: frozenset(flags))
    seen = _recording_jit(monkeypatch)
    program = compilation.jit(lambda x: x * 2.0, cpu_options=compilation.wide_vector_options)
    level(1)
    program(jnp.ones(4))
    wide = {"xla_cpu_prefer_vector_width": 512}
    assert seen[-1] == {"xla_backend_optimization_level": 1, **(wide if width == 512 else {})}
    for set_width, options in ((256, {}), (512, wide)):  # set: the same on every CPU
        with compilation.cpu_vector_width(set_width):
            compilation.jit(lambda x: x * 3.0, cpu_options=compilation.wide_vector_options)(jnp.ones(4))
            assert seen[-1] == {"xla_backend_optimization_level": 1, **options}
    # the setting ends with its block: the CPU's choice again
    assert compilation.compiler_options("cpu", compilation.wide_vector_options) == {
        "xla_backend_optimization_level": 1, **(wide if width == 512 else {})}
    assert compilation.cpu_choices(1, 0) == {"vector_flags": [f for f in ("avx", "avx2", "fma", "avx512f")
                                                              if f in flags],
                                             "llvm_opt_level": 1, "wide_vector_width": width,
                                             "quick_compile": False}
    # a run's quick compilation (configs/tiny.py) adds XLA's older emitters to every program, for its block only
    with compilation.cpu_compiler(1, 256, quick=True):
        compilation.jit(lambda x: x * 5.0)(jnp.ones(4))
        assert seen[-1] == {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False}
    assert compilation.compiler_options("cpu") == {"xla_backend_optimization_level": 1}


def test_a_vector_width_xla_does_not_take_is_refused_before_anything_runs():
    from spr_jax.errors import ConfigError
    with pytest.raises(ConfigError, match="cpu_vector_width=300 .* 256 or 512"):
        with compilation.cpu_vector_width(300):
            pass
