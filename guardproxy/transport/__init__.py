"""A lean HTTP/1.1 transport: a server and an upstream keep-alive pool on httptools (llhttp).

It imports nothing else from guardproxy: stdlib, httptools (and uvloop when the caller runs it).
"""

from .client import Body, Pool
from .config import PoolConfig, ServerConfig
from .counters import PoolCounters, ServerCounters
from .errors import (
    BadRequest,
    BodyTooLarge,
    ClientDisconnected,
    RequestError,
    RequestTimeout,
    TransportError,
    UpstreamError,
)
from .framing import HeadError
from .headers import HeaderList, HeaderPairs, Headers
from .request import Request
from .response import ResponseWriter
from .server import Server, json_error
from .shared import ErrorBuilder, Handler
from .upstream_response import UpstreamResponse

__all__ = [
    "BadRequest",
    "Body",
    "BodyTooLarge",
    "ClientDisconnected",
    "ErrorBuilder",
    "Handler",
    "HeadError",
    "HeaderList",
    "HeaderPairs",
    "Headers",
    "Pool",
    "PoolConfig",
    "PoolCounters",
    "Request",
    "RequestError",
    "RequestTimeout",
    "ResponseWriter",
    "Server",
    "ServerConfig",
    "ServerCounters",
    "TransportError",
    "UpstreamError",
    "UpstreamResponse",
    "json_error",
]
