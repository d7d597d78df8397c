"""What this process is and what it uses: `guardproxy_build_info` and the process metrics.

Both are read when /metrics is scraped, never on the request path: the build labels are
fixed at start, and prometheus_client's process collector reads /proc at collection time.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from importlib import metadata

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import InfoMetricFamily
from prometheus_client.registry import Collector

from guardproxy import __version__

BUILD_INFO = "guardproxy_build"  # the family; its sample and Prometheus name end in _info


def package_version(name: str) -> str:
    """An installed distribution's version, or "" when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def build_labels() -> dict[str, str]:
    """The labels of guardproxy_build_info: this version and what it runs on."""
    return {
        "version": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "opentelemetry_sdk": package_version("opentelemetry-sdk"),
    }


class BuildInfo(Collector):
    """`guardproxy_build_info{version, python, implementation, opentelemetry_sdk} 1`."""

    def __init__(self) -> None:
        self.labels = build_labels()

    def describe(self) -> list[InfoMetricFamily]:
        """The family's name, so the registry refuses a duplicate."""
        return [self._family()]

    def collect(self) -> Iterator[InfoMetricFamily]:
        """The one sample, always 1."""
        family = self._family()
        family.add_metric([], self.labels)
        yield family

    def _family(self) -> InfoMetricFamily:
        return InfoMetricFamily(
            BUILD_INFO, "The guardproxy version and the Python and OpenTelemetry SDK it runs on."
        )


def register_process_metrics(registry: CollectorRegistry) -> None:
    """Build info plus process_resident_memory_bytes, _cpu_seconds_total, _open_fds and more."""
    registry.register(BuildInfo())
    ProcessCollector(registry=registry)
