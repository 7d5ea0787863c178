# The Fargate image: the console and reconciliation service under gunicorn, on port 8080.
#   podman build --format docker --build-arg BASE_IMAGE=... -t conveyor .   (docker build works too)
# The base must provide python3 with the venv module (python:3.12-slim, or Debian's python3 + python3-venv).
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
# Set to a CA bundle path when the build reaches the package index through a TLS-inspecting proxy.
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# A virtualenv: Debian's python refuses system-wide pip, and the venv is all the runtime stage copies.
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# chalice (a dependency of the package) requires pip<26.3.
RUN /opt/venv/bin/pip install --quiet "pip<26.3" && /opt/venv/bin/pip install --quiet ".[console]" \
    && /opt/venv/bin/python -c "import conveyor.console.wsgi"

FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --create-home --home-dir /home/conveyor --shell /usr/sbin/nologin conveyor
COPY --from=build /opt/venv /opt/venv
COPY migrations /app/migrations
# `conveyor migrate` (run as a one-off task) finds the migrations here.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PORT=8080 \
    CONVEYOR_MIGRATIONS_DIR=/app/migrations \
    CONVEYOR_SPOOL_DIR=/tmp/conveyor-settlements
WORKDIR /app
USER conveyor
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
CMD ["gunicorn", "-c", "python:conveyor.console.gunicorn_config", "conveyor.console.wsgi:app"]
