"""Multi-process set-up: `jax.distributed` initialisation and a one-line description for logs.

The expert phase splits its chunks over processes (train.train_missing_experts: process p trains
misses[p::P] on its local devices, then the results are all-gathered), so a multi-host run needs only
`initialize` called first in every process, before any other JAX call:

    parallel.initialize()                                    # single process: does nothing
    parallel.initialize(auto=True)                           # cluster launcher (SLURM, TPU pod, Open MPI, ...)
    parallel.initialize("10.0.0.1:1234", num_processes=2, process_id=0)   # explicit, e.g. on plain hosts

What jax 0.10.2 detects by itself (jax._src.clusters), in this order: Open MPI (OMPI_MCA_orte_hnp_uri),
SLURM (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID), Cloud TPU VMs
(GCE metadata, or TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES on GKE), Kubernetes
(KUBERNETES_SERVICE_HOST, needs the `kubernetes` package); mpi4py only when asked for by name. Of the
plain environment variables it reads only JAX_COORDINATOR_ADDRESS (plus JAX_COORDINATOR_PORT,
JAX_COORDINATOR_BIND_ADDRESS, JAX_LOCAL_DEVICE_IDS), so `auto=True` also takes the process count and
index from JAX_NUM_PROCESSES and JAX_PROCESS_ID when they are set, for hosts without a launcher.
"""
import os

import jax

# Ours, not jax's: jax reads JAX_COORDINATOR_ADDRESS itself but has no variables for these two.
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1, *,
               auto: bool = False) -> None:
    """Joins this process to a multi-process JAX run; call it before any other JAX call.

    Given a coordinator address ("host:port" of process 0), num_processes and process_id are required
    and passed on as they are. With none of them and auto=True, jax.distributed.initialize detects them
    (see the module docstring). With none of them and auto=False, this is a single-process run and nothing
    is done. A second call in an initialised process does nothing.
    """
    explicit = bool(coordinator_address) or num_processes > 0 or process_id >= 0
    if not explicit and not auto:
        return
    if jax.distributed.is_initialized():
        return
    if explicit:
        if not (coordinator_address and num_processes > 0 and 0 <= process_id < num_processes):
            raise ValueError(f"multi-process run: need coordinator_address ('host:port'), num_processes >= 1 and "
                             f"0 <= process_id < num_processes; got {coordinator_address!r}, {num_processes}, "
                             f"{process_id}")
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    else:
        kwargs = {}
        if os.environ.get(NUM_PROCESSES_ENV):
            kwargs["num_processes"] = int(os.environ[NUM_PROCESSES_ENV])
        if os.environ.get(PROCESS_ID_ENV):
            kwargs["process_id"] = int(os.environ[PROCESS_ID_ENV])
    # Cross-process collectives on CPU (the all-gather of the experts' outputs) need an implementation,
    # chosen before the CPU backend starts: gloo, the default in jax 0.10 (older versions defaulted to none).
    # A choice made elsewhere (JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi) is kept. GPU/TPU devices are unaffected.
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:
        if explicit:
            raise
        raise ValueError(f"{e} Auto-detection found no cluster launcher (SLURM, Open MPI, Cloud TPU, Kubernetes); "
                         f"set JAX_COORDINATOR_ADDRESS, {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV}, or pass the "
                         "values.") from e


def is_primary() -> bool:
    """True in process 0, the one that writes shared outputs (expert cache, logs, checkpoints)."""
    return jax.process_index() == 0


def describe() -> str:
    """E.g. 'process 0/2, 2 local / 4 global devices (cpu)', for logs."""
    local = jax.local_devices()
    kind = ", ".join(sorted({d.device_kind for d in local}))
    where = local[0].platform if kind == local[0].platform else f"{local[0].platform}: {kind}"
    return (f"process {jax.process_index()}/{jax.process_count()}, {len(local)} local / {jax.device_count()} "
            f"global devices ({where})")
