"""guardproxy serving its gRPC port in front of the small OIP model server, with real policies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from grpc import aio

from guardproxy.grpc import INFER
from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb
from guardproxy.payloads.tensors import pack
from guardproxy.testing import (
    RunningProxy,
    proxy_settings,
    running_proxy,
    serving,
    upstream_app,
    write_policies,
)

from .conftest import stream_infer
from .upstream import Model, Script, start_model

ADMIN = {"Authorization": "Bearer admin-secret"}
FEEDBACK = {"Authorization": "Bearer feedback-secret"}

# The echo model scores every row 0.25: a Female row (threshold 0.2) is positive, Male not.
POLICY = """
region: default
models:
  - name: echo
    score: {output: score}
  - name: tagger
    score: {output: score}
    labels: {deny: [gorilla], action: block, output: tags}
  - name: forbidden
    score: {output: score}
    labels:
      deny: [gorilla]
      action: block
      output: tags
      block: {status: 403, message: not shown in this region}
  - name: suppressor
    score: {output: score}
    labels: {deny: [gorilla], action: suppress, output: tags}
  - name: annotated
    score: {output: score}
    decision: {annotate: body}
  - name: scored-json
    protocol: tfserving
groups:
  attribute: {input: sex}
  values: [Female, Male]
decision:
  threshold: 0.5
  per_group: {Female: 0.2}
  adapt: {}  # learned thresholds (tests publish them) serve only a policy that adapts
sampling: {rate: 1.0}
drift:
  reference: {warmup: 10}
  window: 10
  signals: [score, {input: age}]
breaker:
  open: {action: OPEN_ACTION}
  slow_call: 0.2s
"""
REGION = """
region: sg
extends: default
decision:
  threshold: 0.1
"""


@dataclass
class Guarded:
    """The running proxy, its gRPC target and the model server behind it."""

    proxy: RunningProxy
    model: Model
    target: str
    samples: Path


def policy(open_action: str = "reject", extra: str = "") -> str:
    """The test policy with a breaker open action, and more YAML appended."""
    return POLICY.replace("OPEN_ACTION", open_action) + extra


@asynccontextmanager
async def guarded(
    tmp_path: Path, text: str | None = None, script: Script | None = None, **settings: Any
) -> AsyncIterator[Guarded]:
    """The model server, guardproxy's gRPC port before it (and an HTTP upstream for serve);
    with a `script`, the server's streams send what it gives."""
    server, model, port = await start_model(script)
    policies = write_policies(
        tmp_path / "policies", {"default.yaml": text or policy(), "sg.yaml": REGION}
    )
    samples = tmp_path / "samples"
    try:
        async with serving(upstream_app()) as http_upstream:
            values = proxy_settings(
                http_upstream, policies=policies, samples_dir=samples,
                grpc_listen=("127.0.0.1", 0), grpc_upstream=f"127.0.0.1:{port}", **settings,
            )  # fmt: skip
            async with running_proxy(values) as running:
                assert running.grpc_target is not None
                yield Guarded(running, model, running.grpc_target, samples)
    finally:
        await server.stop(1.0)


def rows(
    model: str = "echo",
    sex: Sequence[str] = ("Female", "Male"),
    tags: Sequence[str] | None = None,
    request_id: str = "",
    **parameters: Any,
) -> pb.ModelInferRequest:
    """A raw-tensor request: `sex` (BYTES), `age` (FP32) and maybe `tags`, one row per sex."""
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    n = len(sex)
    request.inputs.add(name="sex", datatype="BYTES", shape=[n])
    request.raw_input_contents.append(pack("BYTES", list(sex), "sex"))
    request.inputs.add(name="age", datatype="FP32", shape=[n])
    request.raw_input_contents.append(pack("FP32", [30.0 + i for i in range(n)], "age"))
    if tags is not None:
        request.inputs.add(name="tags", datatype="BYTES", shape=[len(tags)])
        request.raw_input_contents.append(pack("BYTES", list(tags), "tags"))
    for key, value in parameters.items():
        if isinstance(value, float):
            request.parameters[key].double_param = value
        else:
            request.parameters[key].string_param = str(value)
    return request


async def infer(
    target: str, request: pb.ModelInferRequest, metadata: Sequence[tuple[str, str]] = ()
) -> tuple[pb.ModelInferResponse, dict[str, Any], dict[str, Any]]:
    """One ModelInfer call: the answer, its initial and its trailing metadata."""
    async with aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            INFER, pb.ModelInferRequest.SerializeToString, pb.ModelInferResponse.FromString
        )(request, metadata=tuple(metadata))
        answer = await call
        return answer, dict(await call.initial_metadata()), dict(await call.trailing_metadata())


async def stream(
    target: str, requests: Sequence[pb.ModelInferRequest], metadata: Sequence[Any] = ()
) -> list[pb.ModelStreamInferResponse]:
    """One ModelStreamInfer call: every answer, in order."""
    async with aio.insecure_channel(target) as channel:
        call = stream_infer(channel)(iter(requests), metadata=tuple(metadata))
        return [answer async for answer in call]


def grpc_status(g: Guarded) -> dict[str, Any]:
    """The gRPC port's section of /status."""
    return cast(dict[str, Any], g.proxy.runtime.status()["grpc"])


def parameters(answer: pb.ModelInferResponse) -> dict[str, str]:
    """An answer's string parameters."""
    return {k: v.string_param for k, v in answer.parameters.items() if v.string_param}
