"""Logs: text or JSON lines with secrets masked, written off the event loop; the access log."""

from guardproxy.logs.access import AccessLog
from guardproxy.logs.setup import (
    FORMATS,
    LEVELS,
    configure_logging,
    dropped,
    parse_format,
    parse_level,
    stop_logging,
)
from guardproxy.masking import Masker, mask_url

__all__ = [
    "FORMATS",
    "LEVELS",
    "AccessLog",
    "Masker",
    "configure_logging",
    "dropped",
    "mask_url",
    "parse_format",
    "parse_level",
    "stop_logging",
]
