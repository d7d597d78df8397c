"""The generated modules match the .proto, and the .proto matches tritonclient's on the wire."""

from __future__ import annotations

import re
from pathlib import Path

import tritonclient.grpc.service_pb2 as triton_pb
from google.protobuf import descriptor_pb2

from guardproxy.grpc.generate import GENERATED, MODULES, generate
from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb

_VERSION = re.compile(r"^(# Protobuf Python Version: .*|GRPC_GENERATED_VERSION = .*)$", re.M)


def file_proto(descriptor: object) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(proto)  # type: ignore[attr-defined]
    return proto


def test_the_generated_modules_match_the_proto() -> None:
    fresh = generate()
    committed = {name: (GENERATED / name).read_text() for name in MODULES}
    versions = _VERSION.findall(committed[MODULES[0]]) + _VERSION.findall(committed[MODULES[2]])
    if versions == _VERSION.findall(fresh[MODULES[0]]) + _VERSION.findall(fresh[MODULES[2]]):
        assert fresh == committed, "run: python -m guardproxy.grpc.generate"
    namespace: dict[str, object] = {}
    exec(compile(fresh[MODULES[0]], "fresh_pb2", "exec"), namespace)  # a private pool: no clash
    assert file_proto(namespace["DESCRIPTOR"]) == file_proto(pb.DESCRIPTOR)


def test_every_definition_is_wire_compatible_with_tritonclient() -> None:
    ours = file_proto(pb.DESCRIPTOR)
    theirs = {m.name: m for m in file_proto(triton_pb.DESCRIPTOR).message_type}
    for message in ours.message_type:
        assert message.name in theirs, message.name
        assert_fields(message, theirs[message.name])
    their_service = next(
        s for s in file_proto(triton_pb.DESCRIPTOR).service if s.name == ours.service[0].name
    )
    their_methods = {m.name: m for m in their_service.method}
    for method in ours.service[0].method:
        assert method == their_methods[method.name]


def assert_fields(
    ours: descriptor_pb2.DescriptorProto, theirs: descriptor_pb2.DescriptorProto
) -> None:
    their_fields = {f.name: f for f in theirs.field}
    for f in ours.field:
        other = their_fields[f.name]
        assert (f.number, f.type, f.label, f.type_name) == (
            other.number, other.type, other.label, other.type_name,
        ), f"{ours.name}.{f.name}"  # fmt: skip
    nested = {m.name: m for m in theirs.nested_type}
    for message in ours.nested_type:
        assert_fields(message, nested[message.name])


def test_the_proto_ships_with_the_package_and_its_licence() -> None:
    proto = Path(pb.__file__).with_name("grpc_predict_v2.proto").read_text()
    assert "Licensed under the Apache License, Version 2.0" in proto
    assert "docs/predict-api/v2/grpc_predict_v2.proto" in proto


def test_messages_cross_between_the_two_definitions() -> None:
    ours = pb.ModelInferRequest(model_name="m", id="r", raw_input_contents=[b"\x01\x00"])
    ours.inputs.add(name="x", datatype="FP16", shape=[1]).parameters["p"].double_param = 0.5
    ours.parameters["n"].uint64_param = 2**64 - 1
    theirs = triton_pb.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.inputs[0].parameters["p"].double_param == 0.5
    assert theirs.parameters["n"].uint64_param == 2**64 - 1
    assert pb.ModelInferRequest.FromString(theirs.SerializeToString()) == ours
