"""`cnnlab sweep` end to end: a grid of real DVC experiments on a real two-node Ray cluster.

The cluster is honest about being one: `ray start --head` and a second `ray start --address`
node, two processes on this machine; a bare git repository is the shared git remote and a
local folder the DVC remote. Each trial clones the remote, runs `dvc exp run`, pushes; the
caller pulls. One trial's Ray worker process is killed mid-run, and the sweep still ends
with every trial in `dvc exp show`. Every Ray process is stopped at teardown (by process
group: only the processes these fixtures started).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN_DIR, error_line, new_dvc_project, project_runner, write_params
from stages.errors import CnnlabError
from stages.sweep import choose_trials, expand_grid, trial_home

# Tiny model, 2 epochs: the trials' cost is mostly starting TensorFlow and DVC.
SWEEP_PARAMS = {"train": {"epochs": 2, "batch_size": 64, "learning_rate": 0.005},
                "model": {"conv_filters": [4], "dense_units": [8]},
                "evaluate": {"misclassified_images": 0, "feature_map_layers": 0}}
GRID = ["-S", "train.optimizer=sgd,adam", "-S", "train.learning_rate=0.01,0.005"]


def test_the_grid_is_dvcs_own_expansion():
    trials = expand_grid(["train.optimizer=sgd,adam", "train.learning_rate=0.01,0.005", "seed=1"])
    assert len(trials) == 4
    assert ["params.yaml:train.optimizer=sgd", "params.yaml:train.learning_rate=0.01",
            "params.yaml:seed=1"] in trials
    assert len({tuple(trial) for trial in trials}) == 4


GRID_AXES = ["train.optimizer=sgd,adam", "train.learning_rate=0.01,0.005"]


def test_a_budget_draws_that_many_distinct_grid_points_the_same_for_the_same_seed():
    grid = expand_grid(GRID_AXES)
    drawn = choose_trials(GRID_AXES, 2, seed=7)
    assert len(drawn) == 2 and len({tuple(trial) for trial in drawn}) == 2
    assert all(trial in grid for trial in drawn)
    assert choose_trials(GRID_AXES, 2, seed=7) == drawn
    assert len({tuple(map(tuple, choose_trials(GRID_AXES, 2, seed))) for seed in range(8)}) > 1


def test_a_budget_no_smaller_than_the_grid_runs_the_grid_once():
    assert choose_trials(GRID_AXES, 4, seed=0) == choose_trials(GRID_AXES, 50, seed=3) == expand_grid(GRID_AXES)
    assert choose_trials(GRID_AXES, None, seed=0) == expand_grid(GRID_AXES)


def test_continuous_and_log_ranges_are_drawn_within_their_bounds():
    space = ["train.optimizer=choice(sgd,adam)", "train.learning_rate=tag(log, interval(0.0001, 0.1))",
             "train.momentum=interval(0.5, 0.9)", "train.epochs=int(interval(2, 4))"]
    trials = choose_trials(space, 200, seed=1)
    assert choose_trials(space, 200, seed=1) == trials
    values = {key: [dict(o.removeprefix("params.yaml:").split("=") for o in trial)[key] for trial in trials]
              for key in ("train.optimizer", "train.learning_rate", "train.momentum", "train.epochs")}
    assert set(values["train.optimizer"]) == {"sgd", "adam"}
    rates = [float(value) for value in values["train.learning_rate"]]
    assert all(0.0001 <= rate <= 0.1 for rate in rates)
    # Log-uniform: each decade of the range gets about a third of the draws (uniform: 90% in the top one).
    assert 0.2 < sum(rate < 0.01 for rate in rates) / len(rates) < 0.85
    assert all(0.5 <= float(value) <= 0.9 for value in values["train.momentum"])
    assert set(values["train.epochs"]) == {"2", "3", "4"}


@pytest.mark.parametrize(("space", "budget", "message"), [
    (["train.learning_rate=interval(0.001, 0.1)"], None, "is a continuous range, which has no grid; add --budget N"),
    (["train.learning_rate=interval(0.1, 0.001)"], 3, "expected low < high"),
    (["train.learning_rate=tag(log, interval(0, 0.1))"], 3, "low > 0 (log)"),
    (["train.learning_rate=choice(0.1"], 3, "cannot read -S 'train.learning_rate=choice(0.1'"),
])
def test_a_search_space_that_cannot_be_drawn_is_one_clear_error(space, budget, message):
    with pytest.raises(CnnlabError, match=re.escape(message)):
        choose_trials(space, budget, seed=0)


def test_the_sweep_command_refuses_a_continuous_range_without_a_budget_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "stages", "sweep", "-S", "train.learning_rate=interval(0.001,0.1)"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert "add --budget N" in error_line(result)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_node(*arguments: str, env: dict) -> subprocess.Popen:
    """`ray start --block ...` in its own process group: stopping the group stops this node only.
    Its agents listen on free ports, not Ray's fixed defaults, which another Ray on this machine
    (another test run) may hold: a node whose agent cannot bind its port dies."""
    ports = [f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                    "metrics-export-port", "runtime-env-agent-port")]
    return subprocess.Popen([str(BIN_DIR / "ray"), "start", "--block", "--num-cpus=1",
                             "--object-store-memory=100000000", "--disable-usage-stats", *ports, *arguments],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_node(node: subprocess.Popen) -> None:
    """Stop the node's process group, then what is left in its session: the workers Ray started
    in groups of their own (Ray Train's actors)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(node.pid, sig)
            node.wait(timeout=2)
            break
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    for _ in range(20):
        if not (left := processes_in_session(node.pid)):
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def processes_in_session(session: int) -> dict[int, str]:
    """{pid: command line} of the live processes in one session (one Ray node and what it
    started); zombies, which have ended and wait to be reaped, do not count."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
                if os.getsid(int(entry.name)) == session and state != "Z":
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                continue
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node and a second node joined to it, 1 CPU each: (address, environment, nodes)."""
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "3",
           "DVC_NO_ANALYTICS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled",  # even where a ~/.ray/auth_token (from an earlier ray.init) exists
           "GIT_AUTHOR_NAME": "cnnlab test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "cnnlab test", "GIT_COMMITTER_EMAIL": "test@example.com"}
    address = f"127.0.0.1:{port}"
    nodes = [start_node("--head", f"--port={port}", "--include-dashboard=false",
                        f"--ray-client-server-port={free_port()}", env=env)]
    try:
        wait_for_port(port)  # the head's GCS: the second node joins through it
        nodes.append(start_node(f"--address={address}", env=env))
        wait_for_nodes(address, 2, env)
        yield address, env, nodes
    finally:
        for node in reversed(nodes):
            stop_node(node)
        leftovers = {pid: line for node in nodes for pid, line in processes_in_session(node.pid).items()}
        assert not leftovers, f"Ray processes left running: {leftovers}"


def wait_for_port(port: int, seconds: float = 60) -> None:
    """Until something on this machine accepts TCP connections on `port`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port} after {seconds:.0f} s")


def wait_for_nodes(address: str, count: int, env: dict, seconds: float = 120) -> None:
    probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
             "print(sum(node['Alive'] for node in ray.nodes()))")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = subprocess.run([sys.executable, "-c", probe, address], env=env, capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(2)
    raise AssertionError(f"the Ray cluster at {address} did not reach {count} nodes: {result.stderr[-2000:]}")


def project_with_remotes(folder: Path, params: dict):
    """A project whose commit is on a bare git remote, with a local folder as its DVC remote."""
    run = new_dvc_project(folder / "project")
    write_params(run.path, params)
    run("git", "init", "-q", "--bare", str(folder / "remote.git"))
    run("git", "remote", "add", "origin", str(folder / "remote.git"))
    run("dvc", "remote", "add", "-d", "store", str(folder / "dvc-store"))
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "shared remotes")
    run("git", "push", "-q", "origin", "main")
    return run


@pytest.fixture
def shared_project(tmp_path):
    return project_with_remotes(tmp_path, SWEEP_PARAMS)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """`cnnlab sweep --budget 2` of the grid (two of its four points) through DVC's queue, two
    at a time, 1 epoch each: the project and the sweep's output."""
    run = project_with_remotes(tmp_path_factory.mktemp("local-sweep"),
                               {**SWEEP_PARAMS, "train": {**SWEEP_PARAMS["train"], "epochs": 1}})
    result = run("cnnlab", "sweep", *GRID, "--budget", "2", "--seed", "1", "--name", "pick", "-j", "2")
    return run, result.stdout


def experiments(run) -> dict[str, dict]:
    """{experiment name: metrics of reports/metrics.json} from `dvc exp show --json`."""
    shown = json.loads(run("dvc", "exp", "show", "--json").stdout)
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            data = experiment["revs"][0]["data"]
            found[experiment["name"]] = data["metrics"]["reports/metrics.json"]["data"]
    return found


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.tf
def test_sweep_on_a_two_node_ray_cluster_survives_a_killed_worker(cluster, shared_project):
    address, env, nodes = cluster
    # Two of the grid's four points: one trial per node, then the killed one's retry.
    sweep = subprocess.Popen([sys.executable, "-m", "stages", "sweep", *GRID, "--budget", "2", "--seed", "3",
                              "--name", "grid", "--ray", address],
                             cwd=shared_project.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    url = shared_project("git", "remote", "get-url", "origin").stdout.strip()
    killed = kill_a_checkpointed_trials_worker(sweep, [trial_home(url, f"grid-{index}") for index in (1, 2)])
    stdout, stderr = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, stderr
    found = experiments(shared_project)
    assert sorted(found) == ["grid-1", "grid-2"], stdout
    assert all(0 <= metrics["accuracy"] <= 1 for metrics in found.values()), found
    assert killed, "no trial worker was found to kill"
    # The retry resumed from the checkpoint its dead attempt left (`cnnlab train` said so).
    assert re.search(rf"^{killed}: retried, resumed after epoch [12]$", stdout, re.MULTILINE), stdout


def kill_a_checkpointed_trials_worker(sweep: subprocess.Popen, homes: list[Path], seconds: float = 600) -> str | None:
    """SIGKILL the Ray worker process that runs a trial which has finished an epoch (its
    checkpoint is on disk, for the retry to resume from); the trial's name, or None if the
    sweep ended first. The trial's `dvc exp run` (its pid in the trial's process-group file)
    is a child of that worker."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sweep.poll() is None:
        for home in homes:
            if not (home / "repo/.cnnlab/checkpoints/state.json").exists():
                continue
            try:
                experiment = int((home / "process-group").read_text())
                worker = int(Path(f"/proc/{experiment}/stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError):
                continue  # between attempts, or finished
            if "ray::run_trial" in Path(f"/proc/{worker}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(worker, signal.SIGKILL)
                return home.name.rpartition("-")[0]  # grid-<i>
        time.sleep(0.2)
    return None


@pytest.mark.e2e
def test_a_ray_sweep_of_an_unpushed_commit_is_refused_in_one_line(shared_project):
    (shared_project.path / "notes.txt").write_text("not pushed\n")
    shared_project("git", "add", "notes.txt")
    shared_project("git", "commit", "-q", "-m", "local only")
    result = subprocess.run([sys.executable, "-m", "stages", "sweep", *GRID, "--ray", "127.0.0.1:1"],
                            cwd=shared_project.path, capture_output=True, text=True)
    line = error_line(result)
    assert "is not on the git remote 'origin'" in line and "git push origin" in line


@pytest.mark.e2e
@pytest.mark.tf
def test_a_local_sweep_runs_its_trials_through_dvcs_queue(local_sweep):
    run, stdout = local_sweep
    found = experiments(run)
    assert sorted(found) == ["pick-1", "pick-2"], stdout
    assert all(0 <= metrics["accuracy"] <= 1 for metrics in found.values()), found
    shown = json.loads(run("dvc", "exp", "show", "--json").stdout)
    params = [experiment["revs"][0]["data"]["params"]["params.yaml"]["data"]["train"]
              for baseline in shown for experiment in baseline.get("experiments") or []]
    drawn = [dict(o.removeprefix("params.yaml:").split("=") for o in trial)
             for trial in choose_trials(GRID[1::2], 2, seed=1)]
    assert sorted((p["optimizer"], str(p["learning_rate"])) for p in params) == \
        sorted((d["train.optimizer"], d["train.learning_rate"]) for d in drawn)


@pytest.mark.e2e
@pytest.mark.tf
def test_a_fresh_clone_restores_a_trained_run_from_the_pulled_run_cache(local_sweep, tmp_path):
    """The CI workflow of docs/scale-out.md: push the run-cache where training ran, pull it in a
    fresh clone, and `dvc repro` restores the stages instead of running them."""
    run, _ = local_sweep
    run("dvc", "exp", "apply", "pick-1")
    run("git", "add", "params.yaml")  # the pull request: new params, never reproduced in CI
    run("git", "commit", "-q", "-m", "the params of pick-1")
    run("git", "push", "-q", "origin", "main")
    run("dvc", "push", "--run-cache")
    clone = project_runner(tmp_path / "clone")
    subprocess.run(["git", "clone", "-q", "-b", "main", str(run.path.parent / "remote.git"), str(clone.path)],
                   check=True)
    clone("dvc", "fetch", "--run-cache")  # `pull` would also check out stages this commit never locked: an error
    result = clone("dvc", "repro", "--pull")  # restores the runs it finds, pulling their outputs
    assert "Stage 'train' is cached - skipping run" in result.stdout, result.stdout
    assert "Running stage 'train'" not in result.stdout
    assert json.loads((clone.path / "reports/metrics.json").read_text()) == \
        json.loads((run.path / "reports/metrics.json").read_text())
