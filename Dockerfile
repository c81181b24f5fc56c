# vecdb server image: a builder stage compiles the native (Cython + C SIMD) extension into a wheel,
# the runtime stage installs only wheels on a slim base and runs as a non-root user.
#
#   docker build -t vecdb .
#   docker run -p 6334:6334 -v vecdb-data:/data -e VECDB_API_KEY=$(openssl rand -hex 24) vecdb
#
# Configuration is by environment (VECDB_*; see docs/server.md) or a TOML file via VECDB_CONFIG.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
# a C compiler for the extension; pinned by the base image's Debian release
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY native ./native
COPY vecdb ./vecdb
# the vecdb wheel (portable SIMD flags, no -march=native) plus every runtime dependency as wheels
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
        "grpcio-health-checking>=1.60" "grpcio-reflection>=1.60" "prometheus-client>=0.19"

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="vecdb" \
      org.opencontainers.image.description="Multi-tenant vector database served over gRPC"
RUN groupadd --system --gid 10001 vecdb \
    && useradd --system --uid 10001 --gid vecdb --home-dir /data --shell /usr/sbin/nologin vecdb \
    && mkdir -p /data && chown vecdb:vecdb /data
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl \
    && rm -rf /wheels
ENV VECDB_DATA=/data \
    VECDB_HOST=0.0.0.0 \
    VECDB_PORT=6334 \
    VECDB_METRICS_HOST=0.0.0.0 \
    VECDB_METRICS_PORT=9100 \
    VECDB_ADDRESS=127.0.0.1:6334 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 6334 9100
# the standard grpc.health.v1 service, through the CLI (exit 0 iff SERVING)
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["vecdb", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["vecdb"]
CMD ["serve"]
