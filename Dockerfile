# The training image: `python -m autolabel.train CELL_DIR [CELL_DIR ...]` on one GPU.
#
#   docker build --platform linux/amd64 -t autolabel-train .                          # no weights baked in
#   docker build --platform linux/amd64 --build-arg BAKE_WEIGHTS=true -t autolabel-train .
#   docker run --rm --gpus all autolabel-train s3://BUCKET/grids/GRID/cells/CELL_ID
#
# Without a Docker daemon (buildah; `make image-test` builds and runs it that way):
#   buildah bud --isolation chroot --layers --format docker -t autolabel-train .
#   buildah bud ... --build-arg BASE_IMAGE=IMAGE ...   # another base (make image-test's stand-in)
# --format docker keeps the SHELL line (the OCI format drops it).
#
# It holds the training package (autolabel/) and its pinned dependencies only: no Prefect,
# no flows/, no credentials. Inside ECS the task role gives S3 access; outside, pass
# credentials at run time (`-e AWS_PROFILE -v ~/.aws:/home/autolabel/.aws:ro`), never at build time.
#
# The base is pinned by tag: torch 2.14.1 + torchvision 0.29.1 built for CUDA 12.6 (the
# versions pyproject.toml pins), Python 3.12. To pin by digest as well, resolve it once with
#   docker buildx imagetools inspect pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime
# and write `ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime@sha256:<digest>`.
# CUDA 12.x runs on any NVIDIA driver >= 525 (minor-version compatibility; the ECS GPU-optimized
# AMI ships a newer one) and on T4, V100, A10G, L4, L40S, A100 and H100 alike. PyPI's default
# torch wheel is built for CUDA 13 instead, which needs driver >= 580 and drops V100.
# BASE_IMAGE replaces it where the registry cannot be reached (it must hold the same torch pins:
# deployments/image_build.py checks).
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/opt/autolabel/app \
    AUTOLABEL_WEIGHTS=/opt/autolabel/weights \
    AUTOLABEL_CACHE=/home/autolabel/.cache/autolabel

# A fixed high uid/gid, not 1000: Ubuntu 24.04 images already have `ubuntu` there.
# -l keeps the lastlog/faillog sparse files (gigabytes for a high uid) out of the layer.
RUN groupadd -g 10001 autolabel \
    && useradd --no-log-init -l -m -u 10001 -g 10001 -s /usr/sbin/nologin autolabel

COPY deployments/image_build.py /opt/autolabel/build/image_build.py

# 1. ImageNet weights (optional): a layer of its own that changes only with this flag.
#    The trainer never downloads; it reads torchvision's file names from $AUTOLABEL_WEIGHTS.
ARG BAKE_WEIGHTS=false
RUN mkdir -p "$AUTOLABEL_WEIGHTS" \
    && case "$BAKE_WEIGHTS" in \
        true) python /opt/autolabel/build/image_build.py weights "$AUTOLABEL_WEIGHTS" ;; \
        false) ;; \
        *) echo "BAKE_WEIGHTS must be true or false, got '$BAKE_WEIGHTS'" >&2; exit 2 ;; \
    esac

# 2. Dependencies, before the code so that code edits reuse this layer: the pins of
#    pyproject.toml [project] dependencies (the same the tests use). torch and torchvision
#    come from the base image; the helper fails the build if those drift from the pins.
COPY pyproject.toml /opt/autolabel/build/pyproject.toml
RUN python /opt/autolabel/build/image_build.py requirements /opt/autolabel/build/pyproject.toml \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm -f /tmp/requirements.txt

# 3. The code: only the training package, owned by root so the runtime user cannot change it.
COPY autolabel/ /opt/autolabel/app/autolabel/

USER 10001:10001
WORKDIR /home/autolabel

ENTRYPOINT ["python", "-m", "autolabel.train"]
