# guardproxy: `docker build -t guardproxy .`, then see k8s/README.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GUARDPROXY_POLICIES=/etc/guardproxy/policies \
    GUARDPROXY_SAMPLES=/var/lib/guardproxy/samples

WORKDIR /src
COPY pyproject.toml README.md ./
COPY guardproxy ./guardproxy
RUN pip install . && rm -rf /src

# The example policies, for `docker run`; in Kubernetes a ConfigMap is mounted over them.
COPY policies /etc/guardproxy/policies
RUN mkdir -p /var/lib/guardproxy && chown 65532:65532 /var/lib/guardproxy

WORKDIR /
# A numeric user, so the kubelet can verify runAsNonRoot without an /etc/passwd entry.
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["guardproxy", "serve"]
