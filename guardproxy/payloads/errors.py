"""The one error every payload accessor and guard raises for a payload it cannot read."""

from __future__ import annotations


class PayloadError(Exception):
    """A request or answer is not shaped as the protocol and the policy say."""


class MalformedJson(PayloadError, ValueError):
    """A body that is not JSON (a ValueError too, for callers that parse outside guards)."""


class MalformedBinary(PayloadError, ValueError):
    """A binary tensor body whose framing, sizes or tensors disagree."""
