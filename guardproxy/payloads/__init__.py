"""Protocol presets: compiled accessors for scores, features and labels in model payloads."""

from __future__ import annotations

from guardproxy.payloads.base import JsonPathPayload, Payload
from guardproxy.payloads.chat import OpenAIChat
from guardproxy.payloads.jsonpath import Doc, JsonPath, Slot
from guardproxy.payloads.tables import MLflow, SeldonV1, TFServing
from guardproxy.payloads.v2 import KServeV2
from guardproxy.policy.models import ModelPolicy

__all__ = [
    "PRESETS",
    "Doc",
    "JsonPath",
    "JsonPathPayload",
    "KServeV2",
    "MLflow",
    "OpenAIChat",
    "Payload",
    "SeldonV1",
    "Slot",
    "TFServing",
    "compile_payload",
]

PRESETS: dict[str, type[Payload]] = {
    "kserve_v2": KServeV2,
    "tfserving": TFServing,
    "mlflow": MLflow,
    "seldon_v1": SeldonV1,
    "openai": OpenAIChat,
    "jsonpath": JsonPathPayload,
}


def compile_payload(model: ModelPolicy) -> Payload:
    """The compiled accessor for the model's protocol (ValueError on a bad path)."""
    return PRESETS.get(model.protocol, JsonPathPayload)(model)
