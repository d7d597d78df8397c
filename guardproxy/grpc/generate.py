"""Regenerate the Python modules of grpc_predict_v2.proto: `python -m guardproxy.grpc.generate`.

Needs grpcio-tools (the test extra). The message module is moved into a private descriptor
pool: tritonclient and mlserver register the same `inference.*` names in the default pool, and
a second registration in one process fails.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

GENERATED = Path(__file__).parent / "generated"
PROTO = "guardproxy/grpc/generated/grpc_predict_v2.proto"
MODULES = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")
_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = (
    "# A private pool: tritonclient and mlserver define the same names in the default one.\n"
    "_POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = _POOL.AddSerializedFile("
)


def generate() -> dict[str, str]:
    """The generated modules' text, by file name (RuntimeError when protoc fails)."""
    from grpc_tools import protoc  # test extra only

    root = Path(__file__).parents[2]
    with tempfile.TemporaryDirectory() as out:
        args = ["protoc", f"-I{root}", f"--python_out={out}", f"--pyi_out={out}"]
        if protoc.main([*args, f"--grpc_python_out={out}", str(root / PROTO)]) != 0:
            raise RuntimeError(f"protoc failed on {PROTO}")
        folder = Path(out) / Path(PROTO).parent
        texts = {name: (folder / name).read_text() for name in MODULES}
    if _DEFAULT_POOL not in texts[MODULES[0]]:
        raise RuntimeError("protoc's output no longer registers in the default pool")
    texts[MODULES[0]] = texts[MODULES[0]].replace(_DEFAULT_POOL, _PRIVATE_POOL)
    return texts


def main() -> int:
    """Write the generated modules beside the .proto."""
    for name, text in generate().items():
        (GENERATED / name).write_text(text)
        print(f"wrote {GENERATED / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
