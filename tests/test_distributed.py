"""The expert phase gives the same clean_p and keep on 1 device, 4 simulated devices and 2 processes.

Each run is a subprocess (a JAX process's device count and distributed state are fixed when it starts),
running this file as a script: `python tests/test_distributed.py OUT.npz CACHE_DIR [COORDINATOR NPROC PID]`.
"""
import glob
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from spr_jax import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 240  # per group of subprocesses; a healthy group takes well under a minute on 2 cores


def _worker(out_path, cache_dir, coordinator="", num_processes="0", process_id="-1"):
    """Runs the tiny config's expert phase (with an empty cache) and saves its clean_p and keep."""
    parallel.initialize(coordinator, int(num_processes), int(process_id))
    import jax.numpy as jnp
    from configs import tiny
    from spr_jax import expert_phase, experts, run_identity, run_setup
    trained_here = []
    phase = experts.expert_phase

    def recording_phase(*args, chunk_ids=None, **kwargs):  # notes which chunks this process trained
        trained_here.extend(np.asarray(chunk_ids).tolist())
        return phase(*args, chunk_ids=chunk_ids, **kwargs)

    experts.expert_phase = recording_phase
    config = tiny.get_config()
    prepared, settings = run_setup.prepare(config)
    out = expert_phase.run(settings, run_identity.expert_chunk_descriptions(config, prepared, settings.identities), prepared,
                           jnp.asarray(prepared.dataset.train.images), cache_dir, progress=False)
    np.savez(out_path, clean_p=out["clean_p"], keep=out["keep"], trained=out["trained"],
             trained_here=np.asarray(trained_here, np.int64),
             described=parallel.describe(), cached=len(glob.glob(os.path.join(cache_dir, "*", "*.npz"))))


def _env(devices: int, compile_cache) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # Compilation is most of each process's time here: a persistent compile cache shared by the runs lets
    # process 0 of the pair reuse the 1-device run's executable (process 1's has another device id).
    env.update(JAX_COMPILATION_CACHE_DIR=str(compile_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    return env


def _run_all(jobs, tmp_path):
    """Starts every (args, devices) job at once, waits for all; kills the rest if one fails or time runs out
    (a process whose peer died would otherwise wait on the coordinator or the all-gather)."""
    procs = []
    try:
        for args, devices in jobs:
            log = open(tmp_path / f"{os.path.basename(str(args[0]))}.log", "w")
            procs.append((subprocess.Popen([sys.executable, __file__] + [str(a) for a in args],
                                           env=_env(devices, tmp_path / "compile_cache"),
                                           stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
        deadline = time.monotonic() + TIMEOUT_S
        while any(p.poll() is None for p, _ in procs):
            failed = [i for i, (p, _) in enumerate(procs) if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            log.close()
    # The jobs that failed by themselves first, then those killed here (timeout, or a peer had failed).
    bad = sorted((p.returncode < 0, i) for i, (p, _) in enumerate(procs) if p.returncode != 0)
    if bad:
        pytest.fail("\n\n".join(
            f"{[str(a) for a in jobs[i][0]]} exited with {procs[i][0].returncode}"
            f"{' (killed here)' if killed else ''}:\n{open(procs[i][1].name).read()[-3000:]}" for killed, i in bad))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def single(tmp):
    """One process with 1 device and one with 4 simulated devices, at once (their compile times overlap)."""
    _run_all([([tmp / "one.npz", tmp / "cache_one"], 1), ([tmp / "four.npz", tmp / "cache_four"], 4)], tmp)
    return {name: dict(np.load(tmp / f"{name}.npz")) for name in ("one", "four")}


@pytest.fixture(scope="module")
def pair(tmp, single):
    """Two processes of 1 device each, joined by jax.distributed with the coordinator on localhost."""
    coordinator = f"127.0.0.1:{_free_port()}"
    _run_all([([tmp / f"proc{p}.npz", tmp / f"cache_proc{p}", coordinator, 2, p], 1) for p in range(2)], tmp)
    return [dict(np.load(tmp / f"proc{p}.npz")) for p in range(2)]


def _assert_same(a, b):
    np.testing.assert_array_equal(a["keep"], b["keep"])
    np.testing.assert_allclose(a["clean_p"], b["clean_p"], rtol=0, atol=1e-6)


def test_four_devices_equal_one(single):
    one, four = single["one"], single["four"]
    assert str(one["described"]).startswith("process 0/1, 1 local / 1 global")
    assert str(four["described"]).startswith("process 0/1, 4 local / 4 global")
    assert one["clean_p"].shape == (14, 40) and int(one["trained"]) == int(four["trained"]) == 14
    np.testing.assert_array_equal(four["trained_here"], np.arange(14))
    assert 0 < one["keep"].sum() < one["keep"].size  # the filter kept some samples, not all
    _assert_same(four, one)


def test_two_processes_equal_one(single, pair):
    for p, out in enumerate(pair):
        assert str(out["described"]).startswith(f"process {p}/2, 1 local / 2 global")
        assert int(out["trained"]) == 14  # all were misses; after the all-gather both hold all 14
        np.testing.assert_array_equal(out["trained_here"], np.arange(p, 14, 2))  # but each trained its half
        _assert_same(out, single["one"])
    # Every process fills its own expert cache (one per host works as well as a shared folder).
    assert int(pair[0]["cached"]) == int(single["one"]["cached"]) == int(pair[1]["cached"]) == 14


def test_two_processes_rerun_with_their_own_caches(tmp, single, pair):
    """Again, each with the cache it kept, after process 1's is emptied (as a new host with its own local
    disk): the processes miss different chunks and must still make the same collective calls."""
    import shutil
    shutil.rmtree(tmp / "cache_proc1")
    coordinator = f"127.0.0.1:{_free_port()}"
    _run_all([([tmp / f"rerun{p}.npz", tmp / f"cache_proc{p}", coordinator, 2, p], 1) for p in range(2)], tmp)
    for p in range(2):
        _assert_same(dict(np.load(tmp / f"rerun{p}.npz")), single["one"])


def test_initialize_single_process_is_a_no_op():
    parallel.initialize()  # nothing given, auto=False: a single-process run
    assert parallel.is_primary()
    assert parallel.describe().startswith("process 0/1,")


def test_initialize_needs_all_three_values():
    with pytest.raises(ValueError, match="num_processes"):
        parallel.initialize("127.0.0.1:1234")
    with pytest.raises(ValueError, match="process_id"):
        parallel.initialize("127.0.0.1:1234", num_processes=2, process_id=2)


if __name__ == "__main__":
    _worker(*sys.argv[1:])
