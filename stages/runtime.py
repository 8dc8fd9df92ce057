"""TensorFlow, imported on demand.

TensorFlow takes seconds to import, so only the stages that train or predict call
`import_tensorflow()`; `cnnlab --help`, `prepare` and `report` never do.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from stages.errors import CnnlabError
from stages.progress import status


@contextlib.contextmanager
def native_stderr_silenced():
    """Point file descriptor 2 at /dev/null while the block runs: what C++ libraries print
    there at load time, before any log level applies, never reaches the user."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow():
    """Import TensorFlow quietly (a status line on a terminal: it takes seconds) and return the module."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    # Hide TF's C++ start-up chatter (CUDA probing, oneDNN notes, "All log messages before
    # absl::InitializeLog()") unless asked for with TF_CPP_MIN_LOG_LEVEL=0 or 1.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    quiet = os.environ["TF_CPP_MIN_LOG_LEVEL"] not in ("0", "1")
    with status("importing TensorFlow"), native_stderr_silenced() if quiet else contextlib.nullcontext(), \
            optional_modules_hidden(KERAS_OPTIONAL_MODULES):
        import tensorflow as tf

    return tf


def thread_limits(threads: int) -> dict[str, str]:
    """Environment variables that cap TensorFlow (and oneDNN/OpenMP) at `threads` threads per
    pool, read when TensorFlow starts: for processes that share the cores, so that N of them
    never run N x all-cores threads that spin against each other."""
    return {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": str(threads),
            "OMP_NUM_THREADS": str(threads)}


# Keras imports these at start-up for features cnnlab never uses: scikit-learn for its
# scikit-learn wrappers (SciPy's statistics with it), matplotlib for keras.visualization, pandas
# so that fit() accepts DataFrames.
KERAS_OPTIONAL_MODULES = ("sklearn", "matplotlib", "pandas")


@contextlib.contextmanager
def optional_modules_hidden(names: tuple[str, ...]):
    """While the block runs, importing one of `names` not yet imported fails as if it were not
    installed (a library that imports it only if installed then skips what needs it);
    afterwards a stage imports it as usual. A module already imported stays as it is."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # the import system's "not importable" marker
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def seed_everything(seed: int) -> None:
    """Make initialization, dropout and shuffling repeatable: same seed, same result on CPU."""
    tf = import_tensorflow()
    import keras

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def keras_verbosity() -> int:
    """A progress bar on a terminal, one line per epoch in CI logs and under dvc."""
    return 1 if sys.stdout.isatty() else 2


def cpu_computes_bfloat16() -> bool:
    """True on x86 CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX), which oneDNN uses."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    """`train.precision: auto` -> mixed_bfloat16 where the hardware computes bfloat16 natively
    (NVIDIA compute capability 8+, or such a CPU), mixed_float16 on older NVIDIA GPUs, else float32."""
    if precision != "auto":
        return precision
    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
        return "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16" if capability >= (7, 0) else "float32"
    return "mixed_bfloat16" if cpu_computes_bfloat16() else "float32"


def tf_config() -> dict:
    """The TF_CONFIG environment variable that multi-worker TensorFlow reads ({} when unset):
    {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        config = json.loads(text)
        valid = (isinstance(config["cluster"], dict) and isinstance(config["task"]["type"], str)
                 and isinstance(config["task"]["index"], int))
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise CnnlabError(f"TF_CONFIG is not a multi-worker configuration: expected JSON like "
                          '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", '
                          f'"index": 0}}, received {text[:200]!r}; fix or unset TF_CONFIG') from None
    return config


def worker_name() -> str | None:
    """None for the process that writes the results: the only one, or the chief of the workers
    TF_CONFIG names (its "chief" task, else worker 0); "<type>-<index>" for the others."""
    config = tf_config()
    cluster, task = config.get("cluster", {}), config.get("task", {})
    chief = ("chief", 0) if "chief" in cluster else ("worker", 0)
    if not task or (task["type"], task["index"]) == chief:
        return None
    return f"{task['type']}-{task['index']}"


def worker_count() -> int:
    """The processes that train together: the chief and workers TF_CONFIG names, else 1."""
    cluster = tf_config().get("cluster", {})
    return max(1, sum(len(cluster.get(kind, [])) for kind in ("chief", "worker")))


def workers_agree(strategy, value: int) -> bool:
    """True when every worker of a multi-worker run passes the same `value` (the epoch it would
    resume after; all must call this), or when there is one worker. Workers killed together can
    disagree by an epoch: one saved its state and the others had not yet."""
    if worker_count() < 2:
        return True
    tf = import_tensorflow()
    sums = strategy.reduce("SUM", strategy.run(lambda: tf.constant([value, value * value], tf.float64)), axis=None)
    total, squares = sums.numpy().tolist()
    return worker_count() * squares == total * total  # no variance: all equal


def distribution_strategy():
    """MultiWorkerMirroredStrategy when TF_CONFIG names several workers (one model trained by
    several processes or machines, `train.batch_size` the global batch); else MirroredStrategy
    over all GPUs when there are several; else the default (one device)."""
    tf = import_tensorflow()
    if worker_count() > 1:
        keras_builds_under_multi_worker_strategies()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def keras_builds_under_multi_worker_strategies() -> None:
    """Two workarounds for Keras 3 under MultiWorkerMirroredStrategy (keras-team/keras#20585,
    open): `fit` builds the model from its first batch, which it averages across replicas with
    one `strategy.reduce` over the (images, labels) pair, a nest that this strategy rejects;
    only the batch's shapes matter for the build, so take this worker's own part of it. And the
    steps' logs (scalars) are averaged over `axis=0`, which scalars lack: average them whole."""
    from keras import tree
    from keras.src.backend.tensorflow import trainer
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    reduce_per_replica = trainer.reduce_per_replica

    def reduce_scalars_whole(values, strategy, reduction):
        if reduction in ("auto", "mean"):
            return tree.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    trainer.reduce_per_replica = reduce_scalars_whole

    def build_from_local_batch(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(
                    lambda value: self.distribute_strategy.experimental_local_results(value)[0], next(batches))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    TensorFlowTrainer._maybe_symbolic_build = build_from_local_batch


@contextlib.contextmanager
def worker_outputs(outputs: list, checkpoint_dir: Path):
    """The paths this process writes to: the given ones for the chief; for another worker of a
    multi-worker run, a temporary folder for the outputs (removed at the end: only the chief's
    files are results) and its own resume state beside the chief's (`<checkpoints>-worker-1`),
    so that a restarted worker resumes as the chief does."""
    name = worker_name()
    if name is None:
        yield [*outputs, checkpoint_dir]
        return
    with tempfile.TemporaryDirectory(prefix=f"cnnlab-{name}-") as scratch:
        yield [*(Path(scratch) / f"{index}-{Path(path).name}" for index, path in enumerate(outputs)),
               Path(f"{checkpoint_dir}-{name}")]
