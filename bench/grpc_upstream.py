"""The gRPC benchmark model server: the demo Adult model over OIP ModelInfer (grpc.aio)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio

from guardproxy.demo.model import LogisticModel, load_model
from guardproxy.demo.server import v2_rows
from guardproxy.grpc.documents import request_document
from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb
from guardproxy.payloads.tensors import pack

from .upstream import new_loop

INFER = "/inference.GRPCInferenceService/ModelInfer"


def score(model: LogisticModel, raw: bytes) -> bytes:
    """Score every row of a ModelInferRequest; the ModelInferResponse with score and label."""
    request = pb.ModelInferRequest.FromString(raw)
    scores = [model.score(row) for row in v2_rows(request_document(request))]
    n = len(scores)
    answer = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
    answer.outputs.add(name="score", datatype="FP32", shape=[n])
    answer.outputs.add(name="label", datatype="INT64", shape=[n])
    answer.raw_output_contents.append(pack("FP32", scores, "score"))
    answer.raw_output_contents.append(pack("INT64", [int(s >= 0.5) for s in scores], "label"))
    return answer.SerializeToString()


class Handler(grpc.GenericRpcHandler):
    """ModelInfer on raw bytes; every other method is unimplemented."""

    def __init__(self) -> None:
        self.model = load_model()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The handler of ModelInfer."""
        if details.method != INFER:
            return None
        model = self.model

        async def infer(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
            return score(model, request)

        return grpc.unary_unary_rpc_method_handler(infer)


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:port until killed."""
    server = aio.server()
    server.add_generic_rpc_handlers((Handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m bench.grpc_upstream --port P`."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    loop = new_loop()
    try:
        loop.run_until_complete(serve(args.port))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
