"""Protocol presets: compiled accessors for scores, features and labels in model payloads."""

from __future__ import annotations

from ..policy.models import DecisionSpec, LabelsSpec, ModelSpec
from .base import JsonPathPayload, Payload, is_json_answer
from .chat import OpenAIChat
from .jsonpath import Doc, JsonPath, Slot
from .tables import MLflow, SeldonV1, TFServing
from .v2 import KServeV2

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
    "is_json_answer",
]

PRESETS: dict[str, type[Payload]] = {
    "kserve_v2": KServeV2,
    "tfserving": TFServing,
    "mlflow": MLflow,
    "seldon_v1": SeldonV1,
    "openai": OpenAIChat,
    "jsonpath": JsonPathPayload,
}


def compile_payload(model: ModelSpec, labels: LabelsSpec, decision: DecisionSpec) -> Payload:
    """The compiled accessor for the policy's protocol (ValueError on a bad path)."""
    return PRESETS.get(model.protocol, JsonPathPayload)(model, labels, decision)
