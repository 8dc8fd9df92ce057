"""`cnnlab sweep` end to end: a grid of real DVC experiments on a real two-node Ray cluster.

The cluster is honest about being one: `ray start --head` and a second `ray start --address`
node, two processes on this machine; a bare git repository is the shared git remote and a
local folder the DVC remote. Each trial clones the remote, runs `dvc exp run`, pushes; the
caller pulls. One trial's Ray worker process is killed mid-run, and the sweep still ends
with every trial in `dvc exp show`. Every Ray process is stopped at teardown (by process
group: only the processes these fixtures started).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN_DIR, error_line, new_dvc_project, write_params
from stages.sweep import SCRATCH, expand_grid

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_node(*arguments: str, env: dict) -> subprocess.Popen:
    """`ray start --block ...` in its own process group: stopping the group stops this node only."""
    return subprocess.Popen([str(BIN_DIR / "ray"), "start", "--block", "--num-cpus=1",
                             "--object-store-memory=100000000", "--disable-usage-stats", *arguments],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_node(node: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(node.pid, sig)
            node.wait(timeout=30)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


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
           "GIT_AUTHOR_NAME": "cnnlab test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "cnnlab test", "GIT_COMMITTER_EMAIL": "test@example.com"}
    address = f"127.0.0.1:{port}"
    nodes = [start_node("--head", f"--port={port}", "--include-dashboard=false", env=env)]
    try:
        time.sleep(5)
        nodes.append(start_node(f"--address={address}", env=env))
        wait_for_nodes(address, 2, env)
        yield address, env, nodes
    finally:
        for node in reversed(nodes):
            stop_node(node)
        leftovers = {pid: line for node in nodes for pid, line in processes_in_session(node.pid).items()}
        assert not leftovers, f"Ray processes left running: {leftovers}"


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


@pytest.fixture
def shared_project(tmp_path):
    """A project whose commit is on a bare git remote, with a local folder as its DVC remote."""
    run = new_dvc_project(tmp_path / "project")
    write_params(run.path, SWEEP_PARAMS)
    run("git", "init", "-q", "--bare", str(tmp_path / "remote.git"))
    run("git", "remote", "add", "origin", str(tmp_path / "remote.git"))
    run("dvc", "remote", "add", "-d", "store", str(tmp_path / "dvc-store"))
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "shared remotes")
    run("git", "push", "-q", "origin", "main")
    return run


def experiments(run) -> dict[str, dict]:
    """{experiment name: metrics of reports/metrics.json} from `dvc exp show --json`."""
    shown = json.loads(run("dvc", "exp", "show", "--json").stdout)
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            data = experiment["revs"][0]["data"]
            found[experiment["name"]] = data["metrics"]["reports/metrics.json"]["data"]
    return found


@pytest.mark.e2e
@pytest.mark.tf
def test_sweep_on_a_two_node_ray_cluster_survives_a_killed_worker(cluster, shared_project):
    address, env, nodes = cluster
    sweep = subprocess.Popen([sys.executable, "-m", "stages", "sweep", *GRID, "--name", "grid", "--ray", address],
                             cwd=shared_project.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    killed = kill_one_trial_worker(nodes, sweep)
    stdout, stderr = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, stderr
    found = experiments(shared_project)
    assert sorted(found) == ["grid-1", "grid-2", "grid-3", "grid-4"], stdout
    assert all(0 <= metrics["accuracy"] <= 1 for metrics in found.values()), found
    assert killed, "no trial worker was found to kill"


def kill_one_trial_worker(nodes, sweep: subprocess.Popen, seconds: float = 600) -> int | None:
    """SIGKILL a Ray worker process that runs a trial, once some trial has finished an epoch
    (its checkpoint is on disk, for the retry to resume from); the pid, or None if the sweep
    ended first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sweep.poll() is None:
        if list(SCRATCH.glob("grid-*/repo/.cnnlab/checkpoints/state.json")):
            workers = [pid for node in nodes for pid, line in processes_in_session(node.pid).items()
                       if line.startswith("ray::run_trial")]
            if workers:
                os.kill(workers[0], signal.SIGKILL)
                return workers[0]
        time.sleep(0.5)
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
