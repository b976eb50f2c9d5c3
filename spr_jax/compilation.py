"""XLA compilation: how spr_jax's programs are compiled, JAX's persistent compilation cache, and how long a
run spent compiling.

The cache (on by default, `config.cache.compile_dir`, "" switches it off) keeps compiled programs on disk,
so a resumed or repeated run with the same shapes does not compile them again; it changes no result.

`jit` is jax.jit, plus one compiler option on a CPU: XLA's LLVM optimisation level 1 instead of its default
3 (`config.cache.cpu_opt_level`). On a CPU the heavy work runs in library matmuls and convolutions whose code
LLVM does not generate, so the higher levels cost compile time (20-25% of it for a run's main programs:
benchmarks/compile_time.py) and buy no step time. In our checks training is bit-identical (the weights after
a whole run, and every accuracy and purity); a logged loss can differ in its last bit. Level 0 is slower and
changes results. GPUs and TPUs keep XLA's defaults.

A program may add CPU options of its own (`jit(..., cpu_options=...)`: a dict, or a function returning one
when the program is compiled), used with the level and likewise only on a CPU. The evaluation's fine-tuning
asks for the CPU's widest vectors (`wide_vector_options`): 512-bit where the CPU has AVX-512 (the fine-tune
took 1.39 s instead of 1.67 s on an AVX-512 Xeon), XLA's default 256 elsewhere (512 measured 20% slower
on an AVX2-only AMD EPYC). The width is chosen from the CPU's flags as the OS reports them
(`config.cache.cpu_vector_width = 0`) or set (256 / 512); config.json records the choice (`cpu_choices`).

Quick compilation (`config.cache.cpu_quick_compile`, off by default, on in configs/tiny.py) is for runs of
seconds, whose time is mostly compiling: XLA's older loop emitters instead of its fusion emitters
(xla_cpu_use_fusion_emitters off). A tiny online learner's segment program compiles in 0.7 s instead of
1.2 s; the programs run slower (fashion_mnist_cpu's replay 47 s instead of 42 s), so a run of minutes keeps
the default. In our checks every accuracy and buffer came out the same (fashion_mnist_cpu seed 1: every
metric; a tiny comparison of 7 methods: a logged loss differed in its last bits).
"""
import contextlib
import functools
import os
import threading

import jax
import jax.numpy as jnp
from jax import monitoring

from spr_jax.errors import ConfigError

# XLA's LLVM optimisation level for programs compiled for a CPU; None leaves XLA's default (a run sets it
# from config.cache.cpu_opt_level for its duration).
_cpu_opt_level = 1


# Whether programs compiled for a CPU ask for quick compilation (see the module's docstring).
_cpu_quick_compile = False
QUICK_COMPILE_OPTIONS = {"xla_cpu_use_fusion_emitters": False}

# The vector width (bits) XLA is asked to prefer in programs that ask for wide vectors; None: from the CPU.
_cpu_vector_width = None
VECTOR_WIDTHS = (256, 512)
# The CPU flags that decide XLA's vector code, as config.json and the benchmarks report them.
VECTOR_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The CPU's feature flags as the OS reports them (the first "flags" line of /proc/cpuinfo); empty where
    there is none (macOS, Windows: the defaults then apply)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def vector_width(requested=None) -> int:
    """The preferred vector width for wide-vector programs: `requested` (256 / 512) when given and non-zero,
    else 512 on a CPU with AVX-512 (avx512f) and 256 otherwise."""
    requested = _cpu_vector_width if requested is None else requested
    if requested:
        if int(requested) not in VECTOR_WIDTHS:
            raise ConfigError(f"config.cache.cpu_vector_width={requested} is not a vector width; use 0 (chosen "
                              f"from the CPU), 256 or 512")
        return int(requested)
    return 512 if "avx512f" in cpu_flags() else 256


def wide_vector_options() -> dict:
    """CPU options of a program that gains from wide vectors (Adam's elementwise updates on small batches):
    XLA's preferred vector width, chosen per CPU (vector_width); none where that is XLA's default, 256."""
    width = vector_width()
    return {"xla_cpu_prefer_vector_width": width} if width != 256 else {}


@contextlib.contextmanager
def cpu_vector_width(width):
    """The wide-vector programs' width inside the block (0 / None: from the CPU), the one before afterwards."""
    global _cpu_vector_width
    vector_width(width)  # checks it
    before, _cpu_vector_width = _cpu_vector_width, (int(width) or None) if width else None
    try:
        yield
    finally:
        _cpu_vector_width = before


def cpu_choices(opt_level, width, quick=False) -> dict:
    """What spr_jax asks XLA for on this CPU, for config.json: the CPU's vector flags, the LLVM level, the
    wide-vector programs' width (each as configured, 0 / -1 resolved) and whether it compiles quickly."""
    flags = cpu_flags()
    return {"vector_flags": [f for f in VECTOR_FLAGS if f in flags],
            "llvm_opt_level": None if opt_level is None or int(opt_level) < 0 else int(opt_level),
            "wide_vector_width": vector_width(width or 0), "quick_compile": bool(quick)}


def set_cpu_opt_level(level) -> None:
    """XLA's LLVM optimisation level (0-3) for spr_jax's programs compiled for a CPU from now on; None or a
    negative level leaves XLA's default."""
    global _cpu_opt_level
    if level is not None and int(level) > 3:
        raise ConfigError(f"config.cache.cpu_opt_level={level} is not an LLVM optimisation level; use "
                          f"0-3, or -1 for XLA's default")
    _cpu_opt_level = None if level is None or int(level) < 0 else int(level)


@contextlib.contextmanager
def cpu_opt_level(level):
    """set_cpu_opt_level(level) inside the block, the level before it afterwards (a run's setting does not
    outlive the run)."""
    before = _cpu_opt_level
    set_cpu_opt_level(level)
    try:
        yield
    finally:
        set_cpu_opt_level(before)


@contextlib.contextmanager
def cpu_compiler(opt_level, width, quick=False):
    """A run's CPU compiler settings (config.cache: cpu_opt_level, cpu_vector_width, cpu_quick_compile) inside
    the block, the ones before it afterwards."""
    global _cpu_quick_compile
    before, _cpu_quick_compile = _cpu_quick_compile, bool(quick)
    try:
        with cpu_opt_level(opt_level), cpu_vector_width(width):
            yield
    finally:
        _cpu_quick_compile = before


def compiler_options(backend: str | None = None, cpu_options: dict | None = None) -> dict | None:
    """The compiler options spr_jax's programs get on `backend` (default: JAX's default backend); a program's
    own `cpu_options` come with the level (none when the level is XLA's default: -1 keeps every default)."""
    if (backend or jax.default_backend()) != "cpu" or _cpu_opt_level is None:
        return None
    if callable(cpu_options):
        cpu_options = cpu_options()
    quick = QUICK_COMPILE_OPTIONS if _cpu_quick_compile else {}
    return {"xla_backend_optimization_level": _cpu_opt_level, **quick, **(cpu_options or {})}


def tracing() -> bool:
    """Whether jax is tracing a program now (jit, eval_shape, a scan's body...), even a closure called without
    a tracer among its arguments: while tracing, every jax operation is staged, so a constant comes back as a
    tracer (about 30 us at the top level on a CPU, once per call of a program that has compiler options)."""
    return isinstance(jnp.zeros((), jnp.int8), jax.core.Tracer)


class _Program:
    """A function jitted on first use with the compiler options of the backend it then runs on."""

    def __init__(self, fun, jit_kwargs, cpu_options):
        functools.update_wrapper(self, fun)
        self._fun, self._jit_kwargs, self._cpu_options, self._jitted = fun, jit_kwargs, cpu_options, {}
        self._lock = threading.Lock()  # the warm-up thread and the main thread share one jitted function

    def _with(self, options):
        key = tuple(sorted(options.items())) if options else ()
        jitted = self._jitted.get(key)
        if jitted is None:
            with self._lock:
                jitted = self._jitted.get(key)
                if jitted is None:
                    jitted = self._jitted[key] = jax.jit(self._fun, compiler_options=options, **self._jit_kwargs)
        return jitted

    def _for_now(self, args=(), kwargs=None):
        options = compiler_options(cpu_options=self._cpu_options)
        # Inside another program's trace the options belong to that program (jax refuses them on a nested jit);
        # only asked where there are options (a CPU at a set level), since the tracing probe dispatches.
        if options and (any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs))) or tracing()):
            options = None
        return self._with(options)

    def __call__(self, *args, **kwargs):
        return self._for_now(args, kwargs)(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._for_now().lower(*args, **kwargs)

    def with_compiler_options(self, options: dict):
        """This program as a new jax.jit with exactly these XLA compiler options (no backend defaults), e.g.
        to compare options in a benchmark."""
        return jax.jit(self._fun, compiler_options=options, **self._jit_kwargs)


def jit(fun=None, *, cpu_options: dict | None = None, **jit_kwargs):
    """jax.jit (usable as `@jit`, `@functools.partial(jit, static_argnames=...)` or `jit(fn)`) with the
    backend's compiler options (see the module's docstring), plus `cpu_options` of this program's own on a
    CPU; the backend is looked up at the first call, so importing spr_jax initialises no backend."""
    if fun is None:
        return functools.partial(jit, cpu_options=cpu_options, **jit_kwargs)
    return _Program(fun, jit_kwargs, cpu_options)


def matmul_precision(precision: str):
    """Context for the SimCLR phases: jax's default matmul precision at a run's setting (config.precision:
    "default" leaves jax's; part of jit's cache key, so each setting compiles its own programs)."""
    return jax.default_matmul_precision(None if precision == "default" else precision)


# jax's own event names (jax._src.dispatch): tracing, lowering and XLA compilation of a program.
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


def use_persistent_cache(folder: str) -> str:
    """Points JAX's persistent compilation cache at `folder` (~ expanded) unless one is set already (e.g.
    by JAX_COMPILATION_CACHE_DIR); returns the folder in use ("" = none)."""
    current = jax.config.jax_compilation_cache_dir
    if current or not folder:
        return current or ""
    folder = os.path.expanduser(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:  # an unwritable cache only costs compile time
        return ""
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return folder


@contextlib.contextmanager
def compile_timer():
    """Yields a dict whose "seconds" adds up the tracing, lowering and compiling done inside the block, and
    whose "programs" maps each program's name to its XLA compile seconds (summed over its compilations)."""
    total = {"seconds": 0.0, "programs": {}}

    def listener(event, duration, **kwargs):
        if event in _COMPILE_EVENTS:
            total["seconds"] += duration
        if event == _COMPILE_EVENTS[-1]:
            name = str(kwargs.get("fun_name", "?"))
            total["programs"][name] = total["programs"].get(name, 0.0) + duration

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield total
    finally:
        monitoring.unregister_event_duration_listener(listener)
