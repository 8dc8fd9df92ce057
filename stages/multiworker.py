"""Multi-worker training on a Ray cluster, through Ray Train's TensorflowTrainer.

With `train.workers: N` (N > 1) and no TF_CONFIG of its own, the train stage asks the Ray
cluster named by `cnnlab train --ray ADDRESS` or RAY_ADDRESS (Ray's own variable) for N
workers, spread over its nodes. Ray Train writes TF_CONFIG in each worker, and each worker
runs the train stage itself, in the project's folder, exactly as a process started by hand
with that TF_CONFIG would: MultiWorkerMirroredStrategy,
`train.batch_size` the global batch, only the chief (worker 0) writing the model, summary,
DVCLive logs and its checkpoints, the others their own resume state beside the chief's.

File-system assumption: every worker reads the prepared data and writes its resume state at
the project's absolute path, and the chief writes the results there: the nodes share the
project folder (the same machine, or a shared file system such as NFS mounted at the same
path). A worker that dies restarts the whole group (`RETRIES` times), which resumes from the
last completed epoch; a run that failed for good resumes the same way when run again.
"""

from __future__ import annotations

import os
from pathlib import Path

from stages.errors import CnnlabError
from stages.runtime import import_tensorflow

RETRIES = 2  # restarts of the worker group after a worker or node died (Ray's FailureConfig)
REPORTED = ("best_epoch", "epochs_run", "monitor", "best_value", "training_seconds", "resumed_from_epoch")


def train_on_ray(stage, params, paths: list, address: str | None) -> dict:
    """Run `stage(params, *paths)` in `params.train.workers` Ray Train workers; what the chief's
    run returned (the keys the train command prints)."""
    workers = params.train.workers
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise CnnlabError(f"train.workers is {workers}, which needs a Ray cluster, and none is named: "
                          "set RAY_ADDRESS=HOST:PORT (its head node; `ray start --head` starts one) "
                          "or pass `cnnlab train --ray ADDRESS`; or set train.workers: 1")
    import_tensorflow()  # quietly, before Ray Train's TensorFlow module imports it
    try:
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.tensorflow import TensorflowTrainer
    except ImportError:
        raise CnnlabError(f"train.workers is {workers}, which needs Ray Train: pip install 'cnnlab[ray]'") from None
    try:
        quiet = {"TF_CPP_MIN_LOG_LEVEL": os.environ["TF_CPP_MIN_LOG_LEVEL"]}  # in the workers too
        ray.init(address=address, logging_level="WARNING", runtime_env={"env_vars": quiet})
    except ConnectionError as error:
        raise CnnlabError(f"cannot reach the Ray cluster at {address!r} for train.workers: {workers} "
                          f"({' '.join(str(error).split())[:300]}); start it (`ray start --head`) or fix "
                          "RAY_ADDRESS / --ray") from None
    project = Path.cwd()
    try:
        trainer = TensorflowTrainer(
            worker, train_loop_config={"stage": stage, "params": params, "project": str(project),
                                       "paths": [str(project / path) for path in paths]},
            scaling_config=ScalingConfig(num_workers=workers, placement_strategy="SPREAD"),
            run_config=RunConfig(name="train", storage_path=str(project / Path(paths[-1]).parent / "ray"),
                                 failure_config=FailureConfig(max_failures=RETRIES)))
        result = trainer.fit()
    finally:
        ray.shutdown()
    if isinstance(result.return_value, str):
        raise CnnlabError(result.return_value)
    return result.return_value


def worker(config: dict) -> dict | str:
    """One Ray Train worker: the train stage under the TF_CONFIG Ray Train has set; what it
    returned, or a user error's message (bad data, bad params), which is not raised: Ray would
    restart the workers for nothing."""
    os.environ.pop("TF_USE_LEGACY_KERAS", None)  # Ray sets it for tf.keras 2; cnnlab runs Keras 3
    os.chdir(config["project"])  # DVCLive reads the project's git repository
    try:
        result = config["stage"](config["params"], *config["paths"])
    except CnnlabError as error:
        return str(error)
    return {key: result[key] for key in REPORTED}
