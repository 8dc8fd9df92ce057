"""sweep: run a grid of DVC experiments, on this machine through DVC's queue or on a Ray cluster.

The grid is DVC's own syntax (`-S train.optimizer=sgd,adam -S train.learning_rate=0.01,0.001`:
every combination), expanded by DVC's own code; with a budget (`--budget N`), N trials are
drawn from a search space instead, seeded, in the syntax of Hydra's sweepers, which DVC's
`-S` already speaks: `choice(a,b)`, `range(1,5)`, `a,b` and, for continuous ranges,
`interval(0.001,0.1)` and `tag(log, interval(1e-4,1e-1))` (the Optuna sweeper's log-uniform).
Every trial is a real DVC experiment named `<name>-<i>`:

- locally, `dvc exp run --queue -n <name>-<i>` queues each and `dvc exp run --run-all --jobs N`
  runs them;
- on a Ray cluster (`ray_address`), each trial is one Ray task: it clones the shared git
  remote into its own clean workspace on whichever node Ray placed it, runs `dvc exp run`
  there, and `dvc exp push`es the experiment (git refs to the git remote, cached outputs to
  the project's default DVC remote); the caller then `dvc exp pull`s every trial, so that
  `dvc exp show` and `cnnlab compare --experiments` list them as if they had run here.

A trial whose worker process or node dies is retried by Ray (`retries`); a retry on the same
node resumes from the training checkpoint the dead attempt left in its workspace. Trials
sharing a machine split its cores: each gets `cpus_per_trial` (Ray reserves them) and
TensorFlow is told to use that many threads (TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS,
OMP_NUM_THREADS), so N trials on a node never run N x all-cores threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stages.errors import CnnlabError
from stages.runtime import thread_limits

# Where trials keep their workspaces on each node (a retry finds its predecessor's checkpoint here).
SCRATCH = Path(tempfile.gettempdir()) / "cnnlab-sweep"
CHECKPOINTS = Path(".cnnlab/checkpoints")  # stages/cli.py's default for `cnnlab train`


# --- the grid -------------------------------------------------------------------------------------
def expand_grid(overrides: list[str]) -> list[list[str]]:
    """Every combination of the `-S` overrides, as DVC expands them for `dvc exp run --queue`,
    each as the `-S` arguments of one `dvc exp run`."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps

    try:
        sweeps = get_hydra_sweeps(to_path_overrides(overrides))
    except (InvalidArgumentError, ValueError) as error:
        raise CnnlabError(f"sweep: cannot read the grid {' '.join(overrides)!r} ({error}); "
                          "expected -S key=value1,value2 (DVC's -S syntax)") from None
    return [[f"{path}:{override}" for path, values in sweep.items() for override in values]
            for sweep in sweeps]


@dataclass(frozen=True)
class Axis:
    """One `-S` override of a search space: the values it takes (a grid axis) or, for
    `interval(low, high)`, the range it is drawn from (log-uniform with the `log` tag)."""

    path: str  # the params file, as DVC names it (params.yaml)
    key: str
    values: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    def draw(self, rng: random.Random) -> str:
        """`path:key=value` with a value drawn uniformly (`int(interval(...))`: an integer)."""
        integer = isinstance(self.low, int) and isinstance(self.high, int)
        if self.values:
            value = rng.choice(self.values)
        elif self.log:
            number = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
            value = str(round(number)) if integer else f"{number:.4g}"
        else:
            value = str(rng.randint(self.low, self.high)) if integer else f"{rng.uniform(self.low, self.high):.4g}"
        return f"{self.path}:{self.key}={value}"


def search_space(overrides: list[str]) -> list[Axis]:
    """The `-S` overrides, read by Hydra's own override parser (as DVC reads them)."""
    from dvc.utils.cli_parse import to_path_overrides
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep
    from hydra.errors import HydraException

    parser, axes = OverridesParser.create(), []
    for path, items in to_path_overrides(overrides).items():
        for item in items:
            try:
                override = parser.parse_override(item)
                value = override.value()
                if isinstance(value, IntervalSweep):
                    if not value.start < value.end or ("log" in value.tags and value.start <= 0):
                        raise ValueError(f"expected low < high{' and low > 0 (log)' if 'log' in value.tags else ''}")
                    axes.append(Axis(path, override.key_or_group, low=value.start, high=value.end,
                                     log="log" in value.tags))
                else:
                    values = (override.sweep_string_iterator() if override.is_sweep_override()
                              else [override.get_value_element_as_str()])
                    axes.append(Axis(path, override.key_or_group, tuple(values)))
            except (HydraException, ValueError) as error:
                raise CnnlabError(f"sweep: cannot read -S {item!r} ({' '.join(str(error).split())[:300]}); "
                                  "expected key=a,b, choice(a,b), range(1,5), interval(0.1,1), "
                                  "int(interval(1,9)) or tag(log, interval(1e-4,1e-1))") from None
    return axes


def choose_trials(overrides: list[str], budget: int | None, seed: int) -> list[list[str]]:
    """The trials to run, each as the `-S` arguments of one `dvc exp run`: without a budget the
    whole grid (DVC's expansion); with one, `budget` trials drawn with `seed` (the whole grid,
    once, when it is no larger)."""
    axes = search_space(overrides)
    continuous = [f"{axis.key}=interval({axis.low}, {axis.high})" for axis in axes if not axis.values]
    if continuous and budget is None:
        raise CnnlabError(f"sweep: {continuous[0]} is a continuous range, which has no grid; add --budget N "
                          "(trials drawn from the ranges, --seed to vary them) or list values (a,b,c)")
    rng = random.Random(seed)
    if continuous:
        return [[axis.draw(rng) for axis in axes] for _ in range(budget)]
    grid = expand_grid(overrides)
    if budget is None or len(grid) <= budget:
        return grid
    return [grid[index] for index in sorted(rng.sample(range(len(grid)), budget))]


def thread_environment(threads: int) -> dict[str, str]:
    """Environment that caps TensorFlow (and oneDNN/OpenMP) at `threads` threads, and puts this
    interpreter's scripts (cnnlab, dvc) first on PATH for the stage commands."""
    scripts = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")]), **thread_limits(threads)}


def run(command: list[str], cwd: Path | str, env: dict | None = None, **options) -> str:
    """Run git or dvc; their own message as one CnnlabError line when they fail."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, **options)
    if result.returncode != 0:
        shown = " ".join(command[2:] if command[0] == sys.executable else command)
        message = " ".join((result.stderr or result.stdout).split())[-600:]
        raise CnnlabError(f"sweep: `{shown}` failed in {cwd} (exit {result.returncode}): {message}")
    return result.stdout


def dvc(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *arguments]


# --- on this machine: DVC's queue -----------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    name: str
    resumed_from_epoch: int = 0  # a retried trial that resumed from its dead attempt's checkpoint


def sweep_local(repo: Path, trials: list[list[str]], name: str, jobs: int) -> list[Trial]:
    """Queue the trials with DVC and run them, `jobs` experiments at a time."""
    env = thread_environment(max(1, (os.cpu_count() or 1) // jobs))
    names = [f"{name}-{index}" for index in range(1, len(trials) + 1)]
    for trial, overrides in zip(names, trials):
        run(dvc("exp", "run", "--queue", "-n", trial, *[f"-S{o}" for o in overrides]), repo, env)
    run(dvc("exp", "run", "--run-all", "--jobs", str(jobs)), repo, env)
    return [Trial(trial) for trial in names]


# --- on a Ray cluster ------------------------------------------------------------------------------
def shared_remote(repo: Path, git_remote: str) -> tuple[str, str]:
    """The URL of the git remote the trials clone and the commit they run: HEAD, which must be
    pushed (workers see only the remote) and must be what the workspace holds."""
    url = run(["git", "remote", "get-url", git_remote], repo).strip()
    commit = run(["git", "rev-parse", "HEAD"], repo).strip()
    run(["git", "fetch", "--quiet", git_remote], repo)
    if not run(["git", "branch", "--remotes", "--contains", commit], repo).strip():
        raise CnnlabError(f"sweep: commit {commit[:7]} is not on the git remote {git_remote!r} ({url}), "
                          f"and Ray workers clone from there; run `git push {git_remote}` first")
    if run(["git", "status", "--porcelain", "--untracked-files=no"], repo).strip():
        raise CnnlabError("sweep: the workspace has uncommitted changes, which Ray workers would not see; "
                          f"commit them and `git push {git_remote}`, then sweep again")
    if not run(dvc("remote", "default"), repo).strip():
        raise CnnlabError("sweep: the project has no default DVC remote, where trials on other machines "
                          "push their models; add one (`dvc remote add -d NAME URL`, docs/scale-out.md), "
                          "commit .dvc/config and push")
    return url, commit


def trial_home(url: str, name: str) -> Path:
    """Where trial `name` of the project cloned from `url` works on its node: one folder per
    project and trial, so sweeps of other projects with the same names never meet there."""
    return SCRATCH / f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def run_trial(url: str, commit: str, name: str, overrides: list[str], threads: int) -> Trial:
    """One trial, on whichever node Ray placed it: a clean clone of `commit`, `dvc exp run`,
    `dvc exp push`. A retry on the same node first stops what the dead attempt left running
    and keeps its training checkpoint (`cnnlab train` resumes from it)."""
    home = trial_home(url, name)
    workspace, checkpoints, group_file = home / "repo", home / "checkpoints", home / "process-group"
    if group_file.exists():  # a previous attempt died here: its dvc and cnnlab may still run
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(group_file.read_text()), signal.SIGKILL)
    if (workspace / CHECKPOINTS).is_dir():
        shutil.rmtree(checkpoints, ignore_errors=True)
        shutil.move(workspace / CHECKPOINTS, checkpoints)
    shutil.rmtree(workspace, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    run(["git", "clone", "--quiet", url, str(workspace)], home)
    run(["git", "checkout", "--quiet", commit], workspace)
    if checkpoints.is_dir():
        (workspace / CHECKPOINTS).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(checkpoints, workspace / CHECKPOINTS)
    experiment = subprocess.Popen(dvc("exp", "run", "-n", name, *[f"-S{o}" for o in overrides]),
                                  cwd=workspace, env=thread_environment(threads), start_new_session=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    group_file.write_text(str(experiment.pid))  # its own process group: the next attempt can stop it
    output, _ = experiment.communicate()
    group_file.unlink()
    if experiment.returncode != 0:
        raise CnnlabError(f"sweep: trial {name} ({' '.join(overrides)}) failed (exit "
                          f"{experiment.returncode}): {' '.join(output.split())[-600:]}")
    run(dvc("exp", "push", "--force", "origin", name), workspace)
    shutil.rmtree(home, ignore_errors=True)
    resumed = re.search(r"resumed after epoch (\d+)", output)  # what `cnnlab train` printed
    return Trial(name, int(resumed.group(1)) if resumed else 0)


def sweep_ray(repo: Path, trials: list[list[str]], name: str, address: str, cpus_per_trial: int,
              retries: int, git_remote: str = "origin") -> list[Trial]:
    """Run each trial as a Ray task on the cluster at `address`, then pull every trial's
    experiment into `repo`."""
    url, commit = shared_remote(repo, git_remote)
    try:
        import ray
    except ImportError:
        raise CnnlabError("sweep: --ray needs Ray: pip install 'cnnlab[ray]'") from None

    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        task = ray.remote(run_trial).options(num_cpus=cpus_per_trial, max_retries=retries)
        names = [f"{name}-{index}" for index in range(1, len(trials) + 1)]
        pending = [task.remote(url, commit, trial, grid, cpus_per_trial) for trial, grid in zip(names, trials)]
        try:
            done = ray.get(pending)
        except ray.exceptions.RayTaskError as error:  # a trial failed for a reason a retry cannot fix
            if isinstance(error.cause, CnnlabError):
                raise error.cause from None
            raise
    finally:
        ray.shutdown()
    run(dvc("exp", "pull", "--force", git_remote, *(trial.name for trial in done)), repo)
    return done
