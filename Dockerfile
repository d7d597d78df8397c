# guardproxy: `docker build -t guardproxy .`, then see k8s/README.md.
# Built only from what the repository holds; the build context holds no symbolic links that
# COPY would carry into the image (tests/deploy/test_image.py copies the context the way
# COPY does and validates the result).
FROM python:3.11-slim

ARG VERSION=0.1.0
ARG REVISION=unknown
# Optional extras: `grpc` (grpcio) serves --grpc-listen, `otlp-grpc` exports OTLP over gRPC
# (on the same grpcio); `--build-arg EXTRAS=` for HTTP only.
ARG EXTRAS=grpc,otlp-grpc
LABEL org.opencontainers.image.title="guardproxy" \
      org.opencontainers.image.description="A sidecar that applies fairness, label and drift policies inline in front of any model server" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GUARDPROXY_POLICIES=/etc/guardproxy/policies \
    GUARDPROXY_SAMPLES=/var/lib/guardproxy/samples

WORKDIR /src
COPY pyproject.toml README.md ./
COPY guardproxy ./guardproxy
RUN pip install ".${EXTRAS:+[${EXTRAS}]}" && rm -rf /src

# The example policies, for `docker run`; in Kubernetes a ConfigMap is mounted over them.
COPY policies /etc/guardproxy/policies
RUN mkdir -p /var/lib/guardproxy && chown 65532:65532 /var/lib/guardproxy

WORKDIR /
# A numeric user, so the kubelet can verify runAsNonRoot without an /etc/passwd entry.
USER 65532:65532
EXPOSE 8080 9901 8091
# For docker and compose (Kubernetes uses the pod's probes instead). The slim image has no
# curl: Python asks the admin port, wherever GUARDPROXY_ADMIN puts it, for /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; h, _, p = os.environ.get('GUARDPROXY_ADMIN', '127.0.0.1:9901').rpartition(':'); h = '127.0.0.1' if h in ('', '0.0.0.0', '[::]') else h; u.urlopen(f'http://{h}:{p}/healthz', timeout=2)"]
ENTRYPOINT ["guardproxy", "serve"]
