"""Header lists as received: arrival order kept, case-insensitive lookup built on first use."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

HeaderList = list[tuple[bytes, bytes]]
HeaderPairs = Sequence[tuple[bytes, bytes]]


class Headers:
    """(name, value) byte pairs in arrival order, names as sent; lookups ignore case."""

    __slots__ = ("_index", "raw")

    def __init__(self, raw: HeaderList) -> None:
        self.raw = raw
        self._index: dict[bytes, list[bytes]] | None = None

    def _build(self) -> dict[bytes, list[bytes]]:
        index: dict[bytes, list[bytes]] = {}
        for name, value in self.raw:
            key = name.lower()
            found = index.get(key)
            if found is None:
                index[key] = [value]
            else:
                found.append(value)
        self._index = index
        return index

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """The first value of the header `name` (any case), else `default`."""
        index = self._index if self._index is not None else self._build()
        # Callers name headers in lower case: then the name is its own key, hash kept.
        found = index.get(name if name.islower() else name.lower())
        return found[0] if found else default

    def getall(self, name: bytes) -> list[bytes]:
        """Every value of the header `name`, in arrival order."""
        index = self._index if self._index is not None else self._build()
        return list(index.get(name if name.islower() else name.lower(), ()))

    def tokens(self, name: bytes) -> set[bytes]:
        """The comma-separated tokens of every `name` header, lower-cased (e.g. Connection)."""
        return {
            token.strip().lower()
            for value in self.getall(name)
            for token in value.split(b",")
            if token.strip()
        }

    def __contains__(self, name: object) -> bool:
        index = self._index if self._index is not None else self._build()
        return isinstance(name, bytes) and name.lower() in index

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        # Names only: values may carry credentials, and a repr can end up in a log.
        return f"Headers({[name for name, _ in self.raw]!r})"
