"""The operator under test: ``autoparallel operator run`` as a child process with its endpoints, and the
image install (``pip install .`` of the Dockerfile, in a cached venv) that a second operator can run from."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from bench.operator.base import CACHE_DIR, REPO, BenchError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Operator:
    """``autoparallel operator run`` for one namespace, with its metrics and liveness endpoints on free ports;
    stopped when its ``with`` block ends."""

    def __init__(self, executable: Path, namespace: str, kubeconfig: str, log: Path) -> None:
        self.metrics_port, self.liveness_port = free_port(), free_port()
        self.log = log
        env = {**os.environ, "KUBECONFIG": kubeconfig, "HF_HUB_OFFLINE": "1"}
        command = [
            str(executable),
            "operator",
            "run",
            "--namespace",
            namespace,
            "--metrics-port",
            str(self.metrics_port),
            "--liveness-port",
            str(self.liveness_port),
            "--resync-seconds",
            "10",
        ]
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def __enter__(self) -> Operator:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
            raise BenchError(f"the operator exited with status {self.process.returncode}; log {self.log}:\n{tail}")

    def healthy(self) -> bool:
        self.check_alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def reconciles(self) -> float:
        """The sum over all labels of ``autoparallel_reconciles_total`` (0 before the first reconcile)."""
        self.check_alive()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name == "autoparallel_reconciles_total":
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def image_venv() -> Path:
    """A venv with the package installed as the Dockerfile installs it: ``pip install .`` of pyproject.toml,
    README.md and operator/, no extras (so no torch). Created once per pyproject.toml (its dependencies) and
    reused; the package alone is reinstalled when the operator's sources changed since."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    venv = CACHE_DIR / "bench-venv" / key
    complete, stamp = venv / ".complete", venv / ".sources"
    sources = hashlib.sha256()
    for path in sorted([REPO / "pyproject.toml", REPO / "README.md", *(REPO / "operator").rglob("*")]):
        if path.is_file() and "__pycache__" not in path.parts and not str(path).endswith(".pyc"):
            if any(part.endswith(".egg-info") for part in path.parts):
                continue
            sources.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    if complete.exists() and stamp.exists() and stamp.read_text() == sources.hexdigest():
        return venv
    with tempfile.TemporaryDirectory(prefix="autoparallel-image-src-") as src:
        # Exactly what the Dockerfile copies, so that the build writes nothing into the checkout.
        shutil.copy2(REPO / "pyproject.toml", src)
        shutil.copy2(REPO / "README.md", src)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        shutil.copytree(REPO / "operator", Path(src) / "operator", ignore=ignore)
        pip = [str(venv / "bin" / "pip"), "install", "--quiet"]
        if complete.exists():
            print(f"reinstalling the package (its sources changed) into {venv}", flush=True)
            subprocess.run([*pip, "--no-deps", "--force-reinstall", src], check=True)
        else:
            print(f"creating {venv}: pip install . as in the Dockerfile (once per pyproject.toml)", flush=True)
            shutil.rmtree(venv, ignore_errors=True)  # an interrupted earlier attempt
            python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
            subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
            subprocess.run([*pip, src], check=True)
            complete.touch()
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
    if subprocess.run([str(venv / "bin" / "python"), "-c", probe], check=False).returncode:
        raise BenchError(f"{venv} has torch installed, the operator image does not: remove {venv}")
    stamp.write_text(sources.hexdigest())
    return venv
