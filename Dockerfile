# syntax=docker/dockerfile:1
# servio-bridge: `docker build -t servio-bridge .` then see docker-compose.yml and docs/deploy.md.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# Build stage: install the bridge and its dependencies into a virtualenv that is copied whole.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml ./
COPY bridge ./bridge
RUN /opt/venv/bin/pip install --no-cache-dir .

# Runtime stage: the same Python, the virtualenv, an unprivileged user and the spool volume.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="servio-bridge" \
      org.opencontainers.image.description="Servio HMS webhooks in, one confirmed RabbitMQ message per (entity, action, ID) out." \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid bridge --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin bridge \
    && mkdir -p /var/lib/servio-bridge/spool \
    && chown -R bridge:bridge /var/lib/servio-bridge \
    && chmod 0750 /var/lib/servio-bridge/spool
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BRIDGE_HOST=0.0.0.0 \
    BRIDGE_PORT=8080 \
    BRIDGE_SPOOL_DIR=/var/lib/servio-bridge/spool
# Accepted webhooks live here until RabbitMQ confirms them: it must outlive the container.
VOLUME ["/var/lib/servio-bridge/spool"]
WORKDIR /var/lib/servio-bridge
USER 10001:10001
EXPOSE 8080
# Liveness only (the process answers); readiness (/readyz) is for orchestrators that route traffic.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BRIDGE_PORT', '8080') + '/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["servio-bridge"]
CMD ["serve"]
