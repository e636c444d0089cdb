# Two images from one Dockerfile, neither published: build them and push them to your registry.
#
#   docker build -t <registry>/autoparallel-operator:0.1.0 .                     # the operator (default target)
#   docker build --target training -t <registry>/autoparallel-training:0.1.0 .   # the training pods' image
#
# The operator image runs `autoparallel operator run` (kopf) and the planner, without torch (an optional extra
# the operator does not use). The training image adds the `torch` extra (torch, datasets) and runs what the
# operator's training pods start: `torchrun … -m autoparallel.parallel.train`.
#
# Each image is built in a builder stage that installs the package into a virtual environment; its final stage
# copies only that environment onto the same slim Python base, with no compiler, package manager or pip, and
# runs as an unprivileged user (65532: the chart's runAsUser for the operator, the fsGroup the operator gives
# training pods so that they can write into their volumes).

# One pinned base for every stage: the virtual environments link to this exact interpreter.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS source
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m venv /opt/autoparallel

FROM source AS builder
RUN /opt/autoparallel/bin/pip install . \
 && /opt/autoparallel/bin/pip uninstall --yes pip setuptools wheel

# torch from PyPI: on x86_64 Linux its wheels bring the CUDA runtime, cuDNN and NCCL (the nodes need only the
# NVIDIA driver); torchrun comes with it.
FROM source AS training-builder
RUN /opt/autoparallel/bin/pip install ".[torch]" \
 && /opt/autoparallel/bin/pip uninstall --yes pip setuptools wheel

FROM ${PYTHON_IMAGE} AS training
LABEL org.opencontainers.image.title="autoparallel-training" \
      org.opencontainers.image.description="torch and autoparallel's training runtime, for the pods of training ParallelDeployments" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN python -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel
COPY --from=training-builder /opt/autoparallel /opt/autoparallel
# HF_HOME: the operator points it at the weight cache (/model-cache) when the resource has one.
ENV PATH=/opt/autoparallel/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface
WORKDIR /tmp
USER 65532:65532
# The operator gives the command (`/bin/sh -c "exec torchrun … -m autoparallel.parallel.train …"`).
CMD ["python", "-m", "autoparallel.parallel.train", "--help"]

# The operator: the last stage, so a build without --target makes it.
FROM ${PYTHON_IMAGE} AS operator
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
