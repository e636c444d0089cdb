# The autoparallel operator image: `autoparallel operator run` (kopf) and the planner, without torch
# (an optional extra the operator does not use).
#
#   docker build -t <registry>/autoparallel-operator:0.1.0 .
#
# Two stages: the builder installs the package into a virtual environment; the final stage copies only
# that environment onto the same slim Python base, with no compiler, package manager or pip, and runs as
# an unprivileged user (65532, the chart's runAsUser) on a read-only root filesystem.

# One pinned base for both stages: the virtual environment links to this exact interpreter.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m venv /opt/autoparallel \
 && /opt/autoparallel/bin/pip install . \
 && /opt/autoparallel/bin/pip uninstall --yes pip setuptools wheel

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="autoparallel-operator" \
      org.opencontainers.image.description="Plans tensor/pipeline/data/expert parallelism for LLMs on Kubernetes and runs them" \
      org.opencontainers.image.licenses="Apache-2.0"
# The base image's own pip and setuptools are not needed at run time.
RUN python -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel
COPY --from=builder /opt/autoparallel /opt/autoparallel
ENV PATH=/opt/autoparallel/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface
USER 65532:65532
# /metrics and kopf's /healthz (the chart's ports.metrics and ports.health).
EXPOSE 8080 8081
ENTRYPOINT ["autoparallel", "operator", "run"]
