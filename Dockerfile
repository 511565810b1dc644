# patchshift service image.
#   CPU (default):  docker build -t patchshift .
#   CUDA + faiss-gpu: docker build --build-arg VARIANT=cuda -t patchshift:cuda .
ARG VARIANT=cpu

# ---- build: install the package and its dependencies into a virtual environment ----
FROM python:3.11-slim AS build-cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core core
COPY service service
RUN pip install --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple torch==2.14.1 torchvision==0.29.1 \
 && pip install '.[clip]'

FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 AS build-cuda
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core core
COPY service service
RUN pip install torch==2.14.1 torchvision==0.29.1 && pip install '.[gpu,clip]' && pip uninstall -y faiss-cpu

FROM build-${VARIANT} AS build

# ---- runtime: the environment, an unprivileged user, the model store as a volume ----
FROM python:3.11-slim AS runtime-cpu
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 AS runtime-cuda
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /usr/bin/python3.11 /usr/local/bin/python3.11

FROM runtime-${VARIANT}
COPY --from=build /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 patchshift && mkdir -p /models && chown patchshift /models
USER patchshift
ENV PATH=/opt/venv/bin:$PATH \
    PATCHSHIFT_HOST=0.0.0.0 \
    PATCHSHIFT_PORT=8000 \
    PATCHSHIFT_MODELS_DIR=/models
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"
CMD ["patchshift", "serve"]
