# syntax=docker/dockerfile:1
# gearmesh node image: `docker build -t gearmesh .` from the repository root.
# Two stages: the first builds a virtualenv with gearmesh and its
# dependencies; the second copies only that virtualenv onto a clean slim
# base, so no compiler, pip cache or source tree ends up in the image.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# Every dependency ships binary wheels for this platform; if one ever does
# not, install build-essential here - it stays in this stage.
RUN python -m venv /opt/gearmesh
WORKDIR /src
# pyproject.toml names README.md as the long description: the build needs it.
COPY pyproject.toml README.md ./
COPY node ./node
COPY cluster ./cluster
COPY gearmesh ./gearmesh
# A regular (non-editable) install, so the image does not need /src. pip
# also compiles the bytecode now, which matters because at run time the
# root filesystem is read-only.
RUN /opt/gearmesh/bin/pip install .

FROM python:${PYTHON_VERSION}-slim
# A fixed numeric id, so Kubernetes' runAsNonRoot can verify it, and the
# chart's securityContext (10001) matches the image.
RUN groupadd --system --gid 10001 gearmesh \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/gearmesh --shell /usr/sbin/nologin gearmesh \
 && mkdir -p /var/lib/gearmesh \
 && chown 10001:10001 /var/lib/gearmesh
# The same base image in both stages, so the virtualenv's python symlink
# points at an interpreter that exists here too.
COPY --from=build /opt/gearmesh /opt/gearmesh
ENV PATH=/opt/gearmesh/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GEARMESH_DATA_DIR=/var/lib/gearmesh
USER 10001:10001
WORKDIR /var/lib/gearmesh
# 4730 Gearman (clients, workers, admin), 4731 peer gRPC, 4732 HTTP
# (/metrics, /healthz, /readyz).
EXPOSE 4730 4731 4732
ENTRYPOINT ["gearmesh", "serve"]
