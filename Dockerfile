# vqtool images for NVIDIA GPUs; see README "Docker".
#   docker build --target runtime -t vqtool:runtime .   # onnxruntime-gpu + vqtool, no torch; entrypoint `vqtool infer`
#   docker build --target train   -t vqtool:train .     # torch (CUDA 13), bitsandbytes, vqtool[train]; entrypoint `vqtool`
# Base images are pinned by exact tag (pin digests too when you mirror them: docker buildx imagetools inspect TAG).
# onnxruntime-gpu 1.31 and torch 2.13 (PyPI) are both CUDA 13 builds: the host needs an NVIDIA driver >= 580.

# --- wheel: vqtool built once; both images install the wheel, neither keeps the source tree.
FROM python:3.12.12-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY toolchain/ toolchain/
COPY export/ export/
WORKDIR /wheels
# train.txt names the wheel with its extra, so the train stage installs it without guessing the version.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src \
 && printf 'vqtool[train] @ file:///tmp/wheels/%s\n' vqtool-*.whl > train.txt

# --- runtime: ONNX Runtime GPU only. CUDA 13 and cuDNN 9 come as pip wheels (onnxruntime-gpu[cuda,cudnn]),
# which the runtime preloads, so no CUDA base image is needed; the host driver comes in with --gpus.
FROM python:3.12.12-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY requirements/runtime-gpu.txt /tmp/runtime-gpu.txt
COPY --from=wheel /wheels/ /tmp/wheels/
# The pinned list first (onnxruntime-gpu in place of onnxruntime), then vqtool with --no-deps: with its
# dependencies it would pull the CPU onnxruntime wheel, which overwrites onnxruntime-gpu's module.
# tests/test_install.py runs these two pip commands in a clean venv (CPU onnxruntime substituted).
RUN pip install --no-cache-dir -r /tmp/runtime-gpu.txt \
 && pip install --no-cache-dir --no-deps /tmp/wheels/vqtool-*.whl \
 && rm -rf /tmp/wheels /tmp/runtime-gpu.txt \
 && groupadd --gid 10001 vqtool \
 && useradd --create-home --uid 10001 --gid 10001 vqtool
USER 10001:10001
WORKDIR /home/vqtool
# Mount the export dir here (read-only is fine): docker run --gpus all -v "$PWD/exports/NAME:/models:ro" ...
VOLUME ["/models"]
ENTRYPOINT ["vqtool", "infer"]
CMD ["--help"]

# --- train: CUDA runtime base, torch with CUDA (the PyPI wheel), bitsandbytes, vqtool[train].
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04 AS train
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# Ubuntu's python3 (3.12) is pinned by the base image tag; apt versions are not pinned (they rotate).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir torch==2.13.0 bitsandbytes==0.50.2 -r /tmp/wheels/train.txt \
 && rm -rf /tmp/wheels \
 && groupadd --gid 10001 vqtool \
 && useradd --create-home --uid 10001 --gid 10001 vqtool \
 && mkdir /work \
 && chown 10001:10001 /work
USER 10001:10001
WORKDIR /work
# Mount the project (recipes, data, runs, exports) here: docker run --gpus all -v "$PWD:/work" ...
ENTRYPOINT ["vqtool"]
CMD ["--help"]
