# syntax=docker/dockerfile:1
# mind-recall: trainer + recall service image. Runs deploy/entrypoint.sh, the same script as
# `make serve`. Writes only under /data (a volume) and /tmp (tmpfs in docker-compose.yml), so
# it runs with a read-only root filesystem.
#
#   docker build -t mind-recall .                                      # CPU torch (default)
#   docker build -t mind-recall:cuda \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .   # CUDA torch
#
# CUDA torch wheels carry their CUDA runtime, so a python base image is enough for GPU use
# (the host supplies the driver through the NVIDIA container toolkit). BASE_IMAGE may be any
# image with python >= 3.10 on the same path in both stages (the venv links to it).
#
# Behind a proxy or a package mirror (all build arguments; none reaches the final image):
#   docker build --build-arg PIP_INDEX_URL=https://mirror.example/pypi/simple \
#       --build-arg PIP_EXTRA_INDEX_URL=https://mirror.example/extra/simple \
#       --build-arg TORCH_INDEX_URL=https://mirror.example/torch-cpu \
#       --build-arg EXTRA_CA_CERT="$(cat corporate-root-ca.pem)" \
#       --build-arg HTTPS_PROXY=http://proxy.example:3128 -t mind-recall .
# EXTRA_CA_CERT (PEM text) is added to the CAs pip trusts; HTTP(S)_PROXY are Docker's own
# predefined build arguments. The base image comes from your registry with BASE_IMAGE.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG EXTRA_CA_CERT=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL} PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The CAs pip trusts: the base image's ($PIP_CERT, else the system store, else pip's bundled
# certifi), plus EXTRA_CA_CERT when given. Lives in the builder stage only.
RUN base="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" \
    && if [ ! -s "$base" ]; then base="$(python -c 'import pip._vendor.certifi as c; print(c.where())')"; fi \
    && { cat "$base"; printf '%s\n' "$EXTRA_CA_CERT"; } > /opt/build-ca.pem
ENV PIP_CERT=/opt/build-ca.pem
# torch first, from the chosen index, so the package's `torch==2.13.0` pin is already met
# and no resolver ever pulls the multi-GB default CUDA build into a CPU image.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml ./
# The dependencies in a layer of their own (the project installed once without its sources or
# README, then removed), so that a code change rebuilds only the last, --no-deps step.
RUN touch README.md && pip install . && pip uninstall -y mind-recall
COPY README.md ./
COPY mind_recall ./mind_recall
COPY model ./model
COPY service ./service
RUN pip install --no-deps .

FROM ${BASE_IMAGE} AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home mind \
    && mkdir -p /data && chown mind:mind /data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY deploy ./deploy
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MIND_DATA_DIR=/data/datasets \
    RUN_DIR=/data/runs/default \
    BUNDLE_DIR=/data/bundles/default \
    HOST=0.0.0.0 \
    PORT=8000
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
# No curl in slim images: python's urllib fails (exit 1) on refused connections and non-2xx.
# The long start period covers `all` mode, which trains the default model before serving.
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]
ENTRYPOINT ["/bin/sh", "/app/deploy/entrypoint.sh"]
CMD ["all"]
