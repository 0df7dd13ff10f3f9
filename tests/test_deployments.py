"""prefect.yaml for real: a Prefect server and a process worker on 127.0.0.1, deploy, run.

Starts ``prefect server start`` with a temporary PREFECT_HOME, creates the work pools,
runs ``prefect --no-prompt deploy --all`` from the checkout, starts a worker, runs
``webvse/full-pipeline`` on a tiny world and waits for ``Completed``; then
``webvse/re-evaluate`` must run the evaluate task and nothing else. Server and worker
are stopped through their process groups.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from pipeline_support import task_name, tiny_config

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class PrefectServer:
    def __init__(self, home: Path) -> None:
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {
            **os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": self.api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2", "PWD": str(REPO),
        }  # fmt: skip
        self.logs = home / "logs"
        self.logs.mkdir(parents=True)
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        out = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed when the process ends
        process = subprocess.Popen(
            [PREFECT, *args], cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def cli(self, *args: str) -> str:
        done = subprocess.run([PREFECT, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.api}/health", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"prefect server did not start: {(self.logs / 'server.log').read_text()[-3000:]}")

    def run_deployment(self, name: str, parameters: dict[str, object]) -> str:
        out = self.cli("deployment", "run", name, "--params", json.dumps(parameters))
        match = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
        assert match, out
        return match.group(1)

    def wait_final(self, flow_run_id: str, timeout: float = 540) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = requests.get(f"{self.api}/flow_runs/{flow_run_id}", timeout=5).json()["state"]
            if state and state["type"] in FINAL:
                return state["type"]
            time.sleep(1)
        raise AssertionError(
            f"flow run {flow_run_id} not finished; worker log:\n{(self.logs / 'worker.log').read_text()[-4000:]}"
        )

    def task_names(self, flow_run_id: str) -> list[str]:
        body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
        runs = requests.post(f"{self.api}/task_runs/filter", json=body, timeout=10).json()
        return sorted(task_name(run["name"]) for run in runs)


@contextmanager
def running_server(home: Path, **settings: str) -> Iterator[PrefectServer]:
    """``prefect server start`` (with extra ``PREFECT_*`` settings), stopped with its worker at the end."""
    server = PrefectServer(home)
    server.env.update(settings)
    server.spawn("server", "server", "start", "--host", "127.0.0.1", "--port", str(server.port))
    try:
        server.wait_healthy()
        yield server
    finally:
        for process in reversed(server.processes):
            _stop(process)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[PrefectServer]:
    with running_server(tmp_path / "prefect-home") as server:
        yield server


@pytest.mark.slow
def test_deployments_run_on_a_real_server_and_worker(prefect_server: PrefectServer, tmp_path: Path) -> None:
    for pool in ("cpu", "gpu"):
        prefect_server.cli("work-pool", "create", pool, "--type", "process")
    prefect_server.cli("--no-prompt", "deploy", "--all")
    deployments = requests.post(f"{prefect_server.api}/deployments/filter", json={}, timeout=10).json()
    by_name = {d["name"]: d for d in deployments}
    assert set(by_name) == {"full-pipeline", "recrawl", "re-evaluate", "nightly-retrain", "experiment"}
    nightly = by_name["nightly-retrain"]
    assert nightly["work_pool_name"] == "gpu" and nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert (
        nightly["parameters"]["nightly"] is True and "refresh" not in nightly["parameters"]
    )  # refresh would retrain Stage I nightly
    prefect_server.spawn("worker", "worker", "start", "--pool", "cpu")

    config = tiny_config(tmp_path / "data").model_dump(mode="json")
    full = prefect_server.run_deployment("webvse/full-pipeline", {"config": config})
    assert prefect_server.wait_final(full) == "COMPLETED", (prefect_server.logs / "worker.log").read_text()[-4000:]
    assert {"keywords", "crawl", "features", "vectors", "stage1", "stage2", "evaluate"} <= set(prefect_server.task_names(full))
    assert (tmp_path / "data" / "runs" / "report" / "results.md").is_file()

    again = prefect_server.run_deployment("webvse/re-evaluate", {"config": config})
    assert prefect_server.wait_final(again) == "COMPLETED", (prefect_server.logs / "worker.log").read_text()[-4000:]
    assert prefect_server.task_names(again) == ["evaluate"]


@pytest.fixture
def scheduling_server(tmp_path: Path) -> Iterator[PrefectServer]:
    """A real server whose scheduler service visits deployments every second (default: 60 s)."""
    with running_server(tmp_path / "prefect-home", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1") as server:
        yield server


@pytest.mark.slow
def test_the_nightly_schedule_gets_upcoming_runs_from_the_scheduler(scheduling_server: PrefectServer) -> None:
    """Not the cron string: the scheduler service must create Scheduled runs at 02:00 UTC, and the
    server's services (scheduler, event persister) must log no error while doing it."""
    scheduling_server.cli("work-pool", "create", "gpu", "--type", "process")
    scheduling_server.cli("--no-prompt", "deploy", "--name", "nightly-retrain")
    deployment = requests.get(f"{scheduling_server.api}/deployments/name/webvse/nightly-retrain", timeout=10).json()
    body = {"deployments": {"id": {"any_": [deployment["id"]]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}
    deadline, runs = time.monotonic() + 90, []
    while time.monotonic() < deadline and not runs:
        runs = requests.post(f"{scheduling_server.api}/flow_runs/filter", json=body, timeout=10).json()
        if not runs:
            time.sleep(1)
    log = (scheduling_server.logs / "server.log").read_text(errors="replace")
    assert runs, f"the scheduler created no run for the nightly deployment in 90 s; server log:\n{log[-4000:]}"
    times = sorted(run["expected_start_time"] for run in runs)
    assert all("T02:00:00" in t for t in times), times
    assert len(set(times)) == len(times) > 1  # upcoming nights, one run each
    problems = [line for line in log.splitlines() if "Traceback" in line or "| ERROR" in line or "InvalidRequestError" in line]
    assert not problems, "\n".join(problems[:20])


def test_cpu_pool_deployments_train_the_demo_sizes_not_the_paper_s() -> None:
    """The paper's defaults take hours on a CPU: every cpu-pool deployment carries the demo's sizes,
    and those stay equal to ``demo_config`` (declared there once)."""
    import yaml

    from tasks.pipeline_config import config_from_dict, demo_config

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    on_cpu = [d for d in spec["deployments"] if d["work_pool"]["name"] == "cpu"]
    assert {d["name"] for d in on_cpu} == {"full-pipeline", "recrawl", "re-evaluate"}
    demo = demo_config()
    for deployment in on_cpu:
        config = config_from_dict(deployment["parameters"]["config"])
        assert config.train == demo.train and config.vectors == demo.vectors, deployment["name"]
