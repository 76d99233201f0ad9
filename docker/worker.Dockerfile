# syntax=docker/dockerfile:1
# CUDA worker image for the tuning service: `autotune study|worker|status|export|pareto SPEC ...`.
#
#   docker build -f docker/worker.Dockerfile -t adatp-autotune-worker .      # from the repository root
#   docker run --rm --gpus '"device=0"' -v ~/.cache/huggingface:/models:ro -v /data:/data:ro \
#       -e VIDEOMME_ROOT=/data/videomme adatp-autotune-worker study studies/videomme-llava-ov-7b.yaml
#
# Base image. The project pins torch 2.13.0 (pyproject.toml, Makefile); the official PyTorch runtime image
# of that release already contains it, so the torch step below is a no-op there. The tag could not be pulled
# from the machine this file was written on (no Docker Hub access): if your registry has no such tag, or
# your driver is older than the CUDA 12.8 runtime needs (>= 570), pass another official tag, e.g.
#   --build-arg PYTORCH_IMAGE=pytorch/pytorch:<x.y.z>-cuda12.6-cudnn9-runtime --build-arg TORCH_CUDA=cu126
# and the torch step installs torch==2.13.0 from PyTorch's CUDA index for that CUDA version instead.
ARG PYTORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${PYTORCH_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ARG AUTOTUNE_UID=1000
ARG AUTOTUNE_GID=1000

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/etc/autotune/pip-constraints.txt

# System packages: none beyond the base. decord 0.6.0 and av 18 ship manylinux wheels with their own FFmpeg
# libraries (decord.libs/, av.libs/), so no ffmpeg from apt; the import check below proves the wheels load.

# 1. torch, pinned, with CUDA. `torch==2.13.0` also matches the base's 2.13.0+cu128, so nothing is downloaded
#    when the base already has it. Then pin it for every later pip call (PIP_CONSTRAINT): nothing may swap
#    it for a CPU or other CUDA build. If torch did change, the base's torchvision/torchaudio were built
#    against the old one and would fail to import; the project needs neither (adatp/video.py does the
#    preprocessing without torchvision), so they are removed in that case.
RUN set -eux; \
    mkdir -p /etc/autotune; : > /etc/autotune/pip-constraints.txt; \
    before="$(python -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)"; \
    python -m pip install "torch==${TORCH_VERSION}" \
        --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}"; \
    after="$(python -c 'import torch; print(torch.__version__)')"; \
    if [ "$before" != "$after" ]; then python -m pip uninstall -y torchvision torchaudio || true; fi; \
    python -c "import sys, torch; \
assert sys.version_info >= (3, 11), f'python {sys.version} < 3.11 (pyproject requires-python)'; \
assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__; \
assert torch.version.cuda, 'this torch is a CPU build'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"; \
    python -c "import torch; print(f'torch=={torch.__version__}')" > /etc/autotune/pip-constraints.txt

WORKDIR /workspace

# 2. The project's dependencies with the service's extras (tune, video), from pyproject.toml alone: this layer is rebuilt only when they change,
#    not on every source edit.
COPY pyproject.toml /tmp/build/pyproject.toml
RUN set -eux; \
    python -c "import tomllib; \
project = tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']; \
extras = project['optional-dependencies']; \
deps = project['dependencies'] + [d for d in extras['tune'] + extras['video'] if not d.startswith('adatp-autotune')]; \
open('/tmp/build/requirements.txt', 'w').write('\n'.join(deps) + '\n')"; \
    python -m pip install -r /tmp/build/requirements.txt; \
    python -c "import decord, av, optuna, mlflow, psycopg2, transformers; print('deps ok')"

# 3. The project itself (no dependency resolution left to do). README.md is the package's readme.
COPY README.md /tmp/build/README.md
COPY adatp /tmp/build/adatp
COPY autotune /tmp/build/autotune
RUN set -eux; \
    python -m pip install --no-deps /tmp/build; \
    rm -rf /tmp/build; \
    autotune version

# 4. Study specs and the presets that ship with the project; relative paths in a spec resolve against
#    /workspace (the working directory). compose.yaml mounts ../studies over studies/ so that editing a spec
#    needs no rebuild.
COPY studies /workspace/studies
COPY presets /workspace/presets

# Non-root user. Ubuntu 24.04 bases already have uid 1000 (`ubuntu`): that account is replaced.
RUN set -eux; \
    if existing="$(getent passwd "${AUTOTUNE_UID}" | cut -d: -f1)" && [ -n "$existing" ]; then userdel "$existing"; fi; \
    if ! getent group "${AUTOTUNE_GID}" >/dev/null; then groupadd --gid "${AUTOTUNE_GID}" autotune; fi; \
    useradd --create-home --uid "${AUTOTUNE_UID}" --gid "${AUTOTUNE_GID}" --shell /bin/bash autotune; \
    mkdir -p /models /data /workspace/.autotune /home/autotune/.cache/hf_modules; \
    chown -R "${AUTOTUNE_UID}:${AUTOTUNE_GID}" /workspace /home/autotune

# Models are mounted (read-only) at /models, the Hugging Face home: hub ids resolve from /models/hub, local
# save_pretrained copies can live beside it. Nothing is downloaded at run time (HF_HUB_OFFLINE=1); set it to
# 0 for a one-off download into a writable HF_HOME. The modules cache must stay writable, so it lives in home.
ENV HF_HOME=/models \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_MODULES_CACHE=/home/autotune/.cache/hf_modules \
    MPLBACKEND=Agg

USER autotune
# workdir, feature cache, SQLite stores (when not on PostgreSQL) and local MLflow artifacts; presets written here.
VOLUME ["/workspace/.autotune"]

ENTRYPOINT ["autotune"]
CMD ["--help"]
