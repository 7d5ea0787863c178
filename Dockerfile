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
# The runtime package only: .dockerignore keeps src/conveyor_tools (the development tooling) out.
COPY src/conveyor ./src/conveyor
# The console's front-end assets, pinned in src/conveyor/console/package-lock.json: built by `npm ci`
# unless the build context already has them (`make` builds them on the host).
RUN if [ ! -f src/conveyor/console/static/vendor/htmx.min.js ]; then \
        apt-get update -qq && apt-get install -y -qq --no-install-recommends npm >/dev/null \
        && npm ci --prefix src/conveyor/console --no-audit --no-fund --loglevel=error; \
    fi && test -f src/conveyor/console/static/vendor/pico.min.css
# The core and the console's extras; not the local stack's (chalice, moto, ...) nor dev's.
# A regular install, so nothing points back at /src; then the build's tools and the `conveyor`
# command (development tooling) leave the venv.
RUN /opt/venv/bin/pip install --quiet ".[console]" \
    && /opt/venv/bin/pip uninstall --quiet --yes pip setuptools wheel && rm /opt/venv/bin/conveyor \
    && /opt/venv/bin/python -c "import conveyor.console.wsgi"

FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --create-home --home-dir /home/conveyor --shell /usr/sbin/nologin conveyor
COPY --from=build /opt/venv /opt/venv
COPY migrations /app/migrations
# A one-off task can apply them: python3 -c "import os; from conveyor.migrations_runner import upgrade; upgrade(os.environ['DATABASE_URL'])"
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
