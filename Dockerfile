# syntax=docker/dockerfile:1
# aiogate container image: `docker build -t aiogate .`, then
#   docker run -p 8080:8080 -p 9901:9901 -e AIOGATE_UPSTREAM_URL=http://app:8000 \
#     -e JWT_SECRET=... aiogate
# The config is /etc/aiogate/aiogate.yaml (the example config; mount your own over it).
# docs/deployment.md#containers explains every choice below.

# -- build: the wheel, and a virtualenv with it and its pinned dependencies ----------------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY constraints.txt pyproject.toml setup.cfg setup.py MANIFEST.in README.md LICENSE ./
COPY src ./src
COPY systemd/aiogate.service ./systemd/
COPY deploy/grafana/aiogate.json ./deploy/grafana/
COPY deploy/prometheus/alerts.yaml ./deploy/prometheus/
# setup.cfg is the one list of requirements and constraints.txt pins them (the versions CI
# tested); the pip cache mount keeps rebuilds fast without a second, hand-kept list here.
# [tracing]: the image ships OpenTelemetry (off until `tracing.enabled: true`).
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/aiogate \
 && /opt/aiogate/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && set -- /wheels/aiogate-*.whl \
 && /opt/aiogate/bin/pip install -c constraints.txt "$1[tracing]"

# -- runtime: the virtualenv, the example config, an unprivileged user --------------------------
FROM python:3.11-slim
ENV PATH=/opt/aiogate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    AIOGATE_ADMIN_LISTEN=0.0.0.0:9901
RUN groupadd --system --gid 10001 aiogate \
 && useradd --system --uid 10001 --gid aiogate --no-create-home --shell /usr/sbin/nologin aiogate
COPY --from=build /opt/aiogate /opt/aiogate
COPY --chown=root:aiogate --chmod=0640 src/aiogate/data/aiogate.example.yaml /etc/aiogate/aiogate.yaml
# Fail the build on a config the installed aiogate rejects (placeholder values, build only).
RUN AIOGATE_UPSTREAM_URL=http://127.0.0.1:9 JWT_SECRET=build-time-check-only-not-a-real-secret \
    aiogate check -c /etc/aiogate/aiogate.yaml
USER 10001:10001
EXPOSE 8080 9901
# No curl in slim: python's urllib against the admin listener's liveness endpoint.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2)"]
# SIGTERM drains in-flight requests for server.shutdown_timeout (30 s): give `docker stop` or
# Kubernetes' terminationGracePeriodSeconds more than that.
STOPSIGNAL SIGTERM
# Exec form: aiogate is PID 1 and receives SIGTERM/SIGHUP itself.
ENTRYPOINT ["aiogate", "run", "-c", "/etc/aiogate/aiogate.yaml"]
