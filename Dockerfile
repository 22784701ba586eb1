# The slim serving image: `lab2prod serve` and nothing from the lab (no JupyterLab, papermill,
# plotting or compilers). CPU PyTorch by default; for a GPU build:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 -t lab2prod:gpu .
#   (optionally --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 with a Python 3.11)
# Run it with the registry mounted (or REGISTRY_URL pointing at s3://..., gs://...):
#   docker run -p 8000:8000 -v "$PWD/models:/models:ro" lab2prod
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC="torch>=2.13,<2.15"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/lab2prod
ENV PATH=/opt/lab2prod/bin:$PATH
# torch first, from the PyTorch index (CPU wheels are ~5x smaller than the default CUDA ones)
RUN pip install --index-url ${TORCH_INDEX_URL} "${TORCH_SPEC}"
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src/ ./src/
RUN pip install .

FROM ${BASE_IMAGE}
COPY --from=build /opt/lab2prod /opt/lab2prod
ENV PATH=/opt/lab2prod/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    REGISTRY_URL=/models \
    PORT=8000
RUN useradd --create-home --uid 10001 lab2prod && mkdir -p /models && chown lab2prod /models
USER lab2prod
WORKDIR /home/lab2prod
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=3)"]
CMD ["lab2prod", "serve", "--host", "0.0.0.0"]
