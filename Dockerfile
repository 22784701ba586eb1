# Two images from one file, both running as the non-root user 10001:
#   serve (the default, last stage): `lab2prod serve` and `lab2prod worker`, the slim serving set
#          only (no JupyterLab, papermill, plotting or compilers)
#          docker build -t lab2prod .
#   lab:   JupyterLab + papermill + the notebooks and release-policy.yaml, for the lab and for
#          retrain jobs that run `lab2prod release`
#          docker build --target lab -t lab2prod-lab .
# CPU PyTorch by default; a CUDA build takes PyTorch's CUDA wheels, which bring their own CUDA
# libraries (the node needs only the NVIDIA driver and container toolkit):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t lab2prod:gpu .
#   (optionally --build-arg BASE_IMAGE=<a CUDA runtime image with Python 3.11 as `python`>)
# An object-storage registry (REGISTRY_URL=s3://..., gs://...) needs its fsspec package:
#   --build-arg EXTRA_PACKAGES="s3fs==2024.12.0"
# Run it with the registry mounted (deploy/compose.yaml and deploy/k8s do it for you):
#   docker run -p 8000:8000 -v "$PWD/models:/models:ro" lab2prod
ARG BASE_IMAGE=python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# the torch requirement of pyproject.toml's dependencies, and the lab extra's torch/torchvision
# pins (tests/unit/test_deploy_dockerfile.py keeps them equal)
ARG TORCH_SPEC="torch>=2.13,<2.15"
ARG LAB_TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
ARG EXTRA_PACKAGES=""

# ---- the serving virtualenv: torch from the PyTorch index first (CPU wheels are ~5x smaller
# than the default CUDA ones), then the package and its slim dependencies
FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL
ARG TORCH_SPEC
ARG EXTRA_PACKAGES
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/lab2prod
ENV PATH=/opt/lab2prod/bin:$PATH
# DL3013 cannot see the pin inside a build argument: TORCH_SPEC is pyproject.toml's (tested)
# hadolint ignore=DL3013
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src/ ./src/
RUN pip install . ${EXTRA_PACKAGES}

# ---- the lab virtualenv: the serving one plus the lab extra (torchvision from the same index)
FROM build AS lab-build
ARG TORCH_INDEX_URL
ARG LAB_TORCH_SPEC
# hadolint ignore=DL3013
RUN pip install --index-url "${TORCH_INDEX_URL}" ${LAB_TORCH_SPEC} \
    && pip install ".[lab]" \
    && python -m ipykernel install --sys-prefix --name python3

# ---- lab: JupyterLab on /lab (notebooks/, release-policy.yaml, runs/); jobs run
# `lab2prod release` here, writing to the registry mounted at /models
FROM ${BASE_IMAGE} AS lab
COPY --from=lab-build /opt/lab2prod /opt/lab2prod
ENV PATH=/opt/lab2prod/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    REGISTRY_URL=/models
RUN useradd --create-home --uid 10001 --user-group lab2prod \
    && mkdir -p /models /lab/runs && chown lab2prod:lab2prod /models /lab /lab/runs
WORKDIR /lab
COPY --chown=10001:10001 release-policy.yaml ./
COPY --chown=10001:10001 notebooks/*.ipynb ./notebooks/
USER 10001:10001
VOLUME ["/models"]
EXPOSE 8888
STOPSIGNAL SIGTERM
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser"]

# ---- serve (the default target): the API, and the same image runs `lab2prod worker`
FROM ${BASE_IMAGE} AS serve
COPY --from=build /opt/lab2prod /opt/lab2prod
# HOST: every process here listens on the container's interfaces (the API, a worker's metrics)
ENV PATH=/opt/lab2prod/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    REGISTRY_URL=/models
RUN useradd --create-home --uid 10001 --user-group lab2prod \
    && mkdir -p /models && chown lab2prod:lab2prod /models
USER 10001:10001
WORKDIR /home/lab2prod
VOLUME ["/models"]
EXPOSE 8000
# exec-form CMD: lab2prod is PID 1 and gets the SIGTERM itself (uvicorn drains its connections;
# a worker stops taking deliveries, finishes and acks what it holds, exits 0)
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=3)"]
CMD ["lab2prod", "serve"]
