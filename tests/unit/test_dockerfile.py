"""The Dockerfile's two images keep their hardening basics (no Docker needed: the file is read, not built).

The operator image (the default target) and the training image (``--target training``): one pinned base, final
stages that only copy their builder's virtual environment (no package manager or compiler runs there), a numeric
non-root user matching the chart's runAsUser and the fsGroup the operator gives training pods, an exec-form
entrypoint of the operator, the training image with torch and the runtime on PATH under the name the operator
defaults to, and a build context restricted to what `pip install` needs.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field

import pytest
import yaml

from autoparallel.controller.config import DEFAULT_TRAINING_IMAGE
from autoparallel.controller.render.training import TRAINING_IMAGE_GROUP
from kube import repo_root

DOCKERFILE = repo_root() / "Dockerfile"
BUILD_TOOLS = re.compile(r"\b(apt-get|apt|apk|dnf|yum|gcc|g\+\+|make|build-essential|pip3? install|curl|wget)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            result.append((keyword.upper(), args.strip()))
    return result


def _stages() -> tuple[dict[str, str], list[Stage]]:
    """The build arguments declared before the first stage, and the stages in order."""
    build_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, args in _instructions(DOCKERFILE.read_text()):
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            build_args[name] = default
        elif keyword == "FROM":
            parts = args.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: build_args[m.group(1)], parts[0])
            stages.append(Stage(base, parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
        else:
            stages[-1].instructions.append((keyword, args))
    return build_args, stages


def _stage(name: str) -> Stage:
    [stage] = [s for s in _stages()[1] if s.name == name]
    return stage


def _root_base(stage: Stage) -> str:
    """The image a stage is built on, through the stages it is built from."""
    names = {s.name: s for s in _stages()[1]}
    while stage.base in names:
        stage = names[stage.base]
    return stage.base


FINALS = {"operator": "builder", "training": "training-builder"}
"""Each image's final stage and the builder whose virtual environment it copies."""


def test_the_operator_is_the_default_target_and_every_stage_has_one_pinned_base() -> None:
    _, stages = _stages()
    assert stages[-1].name == "operator", "docker build without --target builds the last stage: the operator"
    bases = {_root_base(stage) for stage in stages}
    assert len(bases) == 1, f"the venvs link to the builder's interpreter: one base, not {bases}"
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", bases.pop()), "not a pinned patch tag"


@pytest.mark.parametrize(("final", "builder"), sorted(FINALS.items()))
def test_final_stages_copy_their_builders_venv_and_install_nothing(final: str, builder: str) -> None:
    stage = _stage(final)
    assert stage.all("COPY") == [f"--from={builder} /opt/autoparallel /opt/autoparallel"]
    for command in stage.all("RUN"):
        assert not BUILD_TOOLS.search(command), f"build tooling in the final stage: {command}"
        assert "uninstall" in command, "the final stage only removes things"
    assert stage.all("ENV")[0].startswith("PATH=/opt/autoparallel/bin:"), "the venv's programs come first on PATH"
    assert "pip uninstall --yes pip setuptools wheel" in " ".join(_stage(builder).all("RUN")), "no pip in the venv"


@pytest.mark.parametrize("final", sorted(FINALS))
def test_runs_as_the_charts_non_root_user(final: str) -> None:
    stage = _stage(final)
    users = stage.all("USER")
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    values = yaml.safe_load((repo_root() / "charts" / "autoparallel-operator" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["runAsGroup"] == int(gid)
    # The group the operator makes the training pods' volumes writable by (fsGroup) is the image's.
    assert int(gid) == TRAINING_IMAGE_GROUP
    # USER comes after every RUN of the final stage, so nothing after it runs as root.
    keywords = [key for key, _ in stage.instructions]
    assert keywords.index("USER") > max(i for i, key in enumerate(keywords) if key == "RUN")


def test_entrypoint_is_the_operator_in_exec_form() -> None:
    (entrypoint,) = _stage("operator").all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["autoparallel", "operator", "run"]


def test_the_training_image_brings_torch_datasets_and_the_runtime_under_the_operators_default_name() -> None:
    (install,) = [c for c in _stage("training-builder").all("RUN") if "pip install" in c]
    assert 'pip install ".[torch]"' in install
    project = tomllib.loads((repo_root() / "pyproject.toml").read_text())["project"]
    extra = {re.split(r"[<>=!~ ]", requirement)[0] for requirement in project["optional-dependencies"]["torch"]}
    assert {"torch", "datasets"} <= extra  # torchrun comes with torch
    assert not _stage("training").all("ENTRYPOINT"), "the operator's pods give the command (sh -c torchrun …)"
    (command,) = _stage("training").all("CMD")
    assert json.loads(command)[:3] == ["python", "-m", "autoparallel.parallel.train"]
    # The name the operator runs by default is the one the documented build gives (the package's version as tag).
    assert f"autoparallel-training:{project['version']}" == DEFAULT_TRAINING_IMAGE
    build = f"docker build --target training -t <registry>/{DEFAULT_TRAINING_IMAGE} ."
    assert build in DOCKERFILE.read_text()
    assert build in (repo_root() / "docs" / "training.md").read_text()


def test_build_context_is_an_allowlist() -> None:
    lines = [line for line in (repo_root() / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!operator/"} <= set(lines)
    assert not any(line.startswith("!") and (".venv" in line or "tests" in line) for line in lines)
