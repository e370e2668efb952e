"""The same two rounds of two clients through Flower (SuperLink, 2 SuperNodes, `flwr run`, loopback
only) and in the embedded simulation: the global backbones agree.

Real Flower processes rather than Flower's simulation engine: that engine needs Ray, a heavy extra
dependency that is not installed with `flwr`; the deployment processes are what real sites run.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from plsc.serialization import load_state

pytestmark = pytest.mark.slow
flwr = pytest.importorskip("flwr")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO_ROOT / "configs" / "quickstart_fedfr.yaml"

START_TIMEOUT = 60      # seconds for the SuperLink / SuperNodes to come up
RUN_TIMEOUT = 420       # seconds for the two rounds


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port, process, log_path, timeout=START_TIMEOUT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"process exited {process.returncode}:\n{open(log_path).read()[-3000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"nothing listens on 127.0.0.1:{port} after {timeout} s:\n{open(log_path).read()[-3000:]}")


class Processes:
    """Processes started by this test, each in its own session, stopped (group and all) at the end."""

    def __init__(self, directory, environment):
        self.directory, self.environment, self.started = directory, environment, []

    def start(self, name, command):
        log_path = os.path.join(self.directory, f"{name}.log")
        handle = open(log_path, "w")
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=self.environment,
                                   cwd=self.directory, start_new_session=True)
        self.started.append((process, handle))
        return process, log_path

    def stop(self):
        for process, handle in reversed(self.started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=15)
            handle.close()


def test_flower_run_gives_the_simulated_global_backbone(tiny_fedfr, tmp_path):
    from plsc.federated.flower_app import write_app_dir
    from plsc.federated.simulation import run_fedtrain

    run_fedtrain(tiny_fedfr.config("flower_sim"))
    expected = load_state(os.path.join(tiny_fedfr.root, "flower_sim", "federated", "rounds", "round_002.state"))

    flwr_bin = os.path.dirname(shutil.which("flwr") or sys.executable)
    home = tmp_path / "flwr_home"
    home.mkdir()
    superlink_port = free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "plsc-test"\n\n[superlink.plsc-test]\n'
                                      f'address = "127.0.0.1:{superlink_port}"\ninsecure = true\n')
    # Loopback only: no telemetry events and no update check (both reach Flower's servers by default).
    environment = {**os.environ, "FLWR_HOME": str(home), "PYTHONPATH": str(DEMO_CONFIG.parents[1]),
                   "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    overrides = tiny_fedfr.overrides("flower")
    app_dir = write_app_dir(str(tmp_path / "app"), str(DEMO_CONFIG), ";".join(overrides), num_clients=2,
                            wait_seconds=START_TIMEOUT, reply_timeout=RUN_TIMEOUT)
    processes = Processes(str(tmp_path), environment)
    try:
        superlink, log = processes.start("superlink", [os.path.join(flwr_bin, "flower-superlink"), "--insecure",
                                                       "--host", "127.0.0.1", "--port", str(superlink_port)])
        wait_for_port(superlink_port, superlink, log)
        clients_root = os.path.join(tiny_fedfr.root, "data", "fedfr", "clients")
        for name in ("client_000", "client_001"):
            node_port = free_port()
            node, log = processes.start(name, [
                os.path.join(flwr_bin, "flower-supernode"), "--insecure", "--superlink",
                f"127.0.0.1:{superlink_port}", "--host", "127.0.0.1", "--port", str(node_port),
                "--node-config", f"client-dir='{os.path.join(clients_root, name)}'"])
            wait_for_port(node_port, node, log)
        submit = subprocess.run([os.path.join(flwr_bin, "flwr"), "run", os.path.dirname(app_dir), "plsc-test"],
                                env=environment, cwd=str(tmp_path), capture_output=True, text=True,
                                timeout=START_TIMEOUT)
        assert submit.returncode == 0, submit.stdout + submit.stderr
        final = os.path.join(tiny_fedfr.root, "flower", "federated", "rounds", "round_002.state")
        deadline = time.time() + RUN_TIMEOUT
        while not os.path.isfile(final):
            if time.time() > deadline or superlink.poll() is not None:
                logs = "\n".join(f"--- {name}\n{open(tmp_path / f'{name}.log').read()[-3000:]}"
                                 for name in ("superlink", "client_000", "client_001"))
                pytest.fail(f"no {final} after {RUN_TIMEOUT} s\n{submit.stdout}\n{logs}")
            time.sleep(1.0)
    finally:
        processes.stop()
    got = load_state(final)
    assert sorted(got["backbone"]) == sorted(expected["backbone"])
    for key, value in expected["backbone"].items():
        np.testing.assert_allclose(got["backbone"][key], value, atol=1e-5, rtol=0, err_msg=key)
    np.testing.assert_allclose(got["public_centers"], expected["public_centers"], atol=1e-5, rtol=0)
    assert [record["clients"] for record in got["history"]] == [["client_000", "client_001"]] * 2
