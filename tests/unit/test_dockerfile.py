"""The operator image's Dockerfile keeps its hardening basics (no Docker needed: the file is read, not built).

A pinned base, a final stage that only copies the builder's virtual environment (no package manager or compiler
runs there), a numeric non-root user matching the chart's runAsUser, an exec-form entrypoint of the operator, and
a build context restricted to what `pip install .` needs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import yaml

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


def test_two_stages_on_one_pinned_base() -> None:
    _, stages = _stages()
    assert len(stages) == 2 and stages[0].name == "builder"
    assert stages[0].base == stages[1].base, "the venv links to the builder's interpreter: same base"
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", stages[1].base), f"not a pinned patch tag: {stages[1].base}"


def test_final_stage_copies_the_venv_and_installs_nothing() -> None:
    final = _stages()[1][-1]
    assert final.all("COPY") == ["--from=builder /opt/autoparallel /opt/autoparallel"]
    for command in final.all("RUN"):
        assert not BUILD_TOOLS.search(command), f"build tooling in the final stage: {command}"
        assert "uninstall" in command, "the final stage only removes things"


def test_runs_as_the_charts_non_root_user() -> None:
    final = _stages()[1][-1]
    users = final.all("USER")
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    values = yaml.safe_load((repo_root() / "charts" / "autoparallel-operator" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["runAsGroup"] == int(gid)
    # USER comes after every RUN of the final stage, so nothing after it runs as root.
    keywords = [key for key, _ in final.instructions]
    assert keywords.index("USER") > max(i for i, key in enumerate(keywords) if key == "RUN")


def test_entrypoint_is_the_operator_in_exec_form() -> None:
    final = _stages()[1][-1]
    (entrypoint,) = final.all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["autoparallel", "operator", "run"]


def test_build_context_is_an_allowlist() -> None:
    lines = [line for line in (repo_root() / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!operator/"} <= set(lines)
    assert not any(line.startswith("!") and (".venv" in line or "tests" in line) for line in lines)
