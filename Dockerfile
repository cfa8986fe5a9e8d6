# The container the pipeline's processes run in: slimreg (the `slimreg` command) with the VALIS engine.
#   docker build -t ghcr.io/slimreg/slimreg:0.1.0 .
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 MALLOC_ARENA_MAX=2
RUN apt-get update && apt-get install -y --no-install-recommends procps && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/slimreg
COPY pyproject.toml README.md ./
COPY slimreg ./slimreg
RUN pip install ".[valis]"

# VALIS' DISK/LightGlue weights are optional; put a torch hub folder here to use them:
ENV SLIMREG_WEIGHTS_DIR=/opt/slimreg/weights
RUN slimreg --version
