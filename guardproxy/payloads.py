"""Protocol presets: compiled accessors for scores, features and labels in model payloads."""

from __future__ import annotations

import math
import re
from typing import Any

from .exchange import Exchange
from .guards.base import GuardError
from .policy.models import DecisionSpec, LabelsSpec, ModelSpec

Doc = Any
Slot = tuple[Any, Any]

_TOKEN = re.compile(
    r"\.(?P<key>[A-Za-z_][\w-]*)"
    r"|\.\*|\[\*\]"
    r"|\[(?P<index>-?\d+)\]"
    r"|\[(?P<q>['\"])(?P<qkey>.*?)(?P=q)\]"
    r"|\[\?\(?\s*(?:@\.)?(?P<field>[\w-]+)\s*==\s*"
    r"(?:(?P<fq>['\"])(?P<fstr>.*?)(?P=fq)|(?P<fnum>-?\d+(?:\.\d+)?))\s*\)?\]"
)


class JsonPath:
    """A JSONPath subset ($ .key ['key'] [n] [*] [?name=='x']) compiled once into steps."""

    __slots__ = ("label", "steps", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.steps = _parse_path(text)
        self.label = _path_label(self.steps)

    def find(self, doc: Doc) -> list[Any]:
        """Every value the path selects (empty when nothing matches)."""
        return [container[key] for container, key in self.slots(doc)]

    def slots(self, doc: Doc) -> list[Slot]:
        """(container, key) of every selected value, so callers can replace it."""
        current: list[Slot] = [([doc], 0)]
        for kind, arg, value in self.steps:
            current = [slot for c, k in current for slot in _step(kind, arg, value, c[k])]
        return current


def _parse_path(text: str) -> tuple[tuple[str, Any, Any], ...]:
    if not text.startswith("$"):
        raise ValueError(f"JSON path {text!r} must start with '$'")
    steps: list[tuple[str, Any, Any]] = []
    pos = 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"JSON path {text!r}: cannot read {text[pos:]!r}")
        steps.append(_token_step(match))
        pos = match.end()
    return tuple(steps)


def _token_step(match: re.Match[str]) -> tuple[str, Any, Any]:
    if match["key"] is not None:
        return ("key", match["key"], None)
    if match["qkey"] is not None:
        return ("key", match["qkey"], None)
    if match["index"] is not None:
        return ("index", int(match["index"]), None)
    if match["field"] is not None:
        value: object = match["fstr"] if match["fq"] else float(match["fnum"])
        return ("filter", match["field"], value)
    return ("wild", None, None)


def _path_label(steps: tuple[tuple[str, Any, Any], ...]) -> str:
    """The name a mask uses: the last filter's value (an input's name), else the last key."""
    filters = [str(value) for kind, _, value in steps if kind == "filter"]
    keys = [str(arg) for kind, arg, _ in steps if kind == "key"]
    return (filters or keys or ["path"])[-1]


def _step(kind: str, arg: Any, value: Any, node: Any) -> list[Slot]:
    if kind == "key":
        return [(node, arg)] if isinstance(node, dict) and arg in node else []
    if kind == "index":
        return [(node, arg)] if isinstance(node, list) and -len(node) <= arg < len(node) else []
    if kind == "wild":
        if isinstance(node, dict):
            return [(node, k) for k in node]
        return [(node, i) for i in range(len(node))] if isinstance(node, list) else []
    if not isinstance(node, list):
        return []
    return [(node, i) for i, v in enumerate(node) if isinstance(v, dict) and v.get(arg) == value]


def is_json_answer(ex: Exchange) -> bool:
    """True for a 2xx answer that is (or may be) JSON: the only answers guards change."""
    if not 200 <= ex.status < 300 or not ex.response_body:
        return False
    content_type = ex.response_headers.get("Content-Type", "application/json")
    return "json" in content_type


def _floats(values: list[Any], where: str) -> list[float]:
    out: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise GuardError(f"score in {where} is not a number: {value!r}")
        if not math.isfinite(value):
            raise GuardError(f"score in {where} is not finite: {value!r}")
        out.append(float(value))
    return out


def _get(doc: Doc, key: str, where: str) -> Any:
    if not isinstance(doc, dict):
        raise GuardError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    if key not in doc:
        raise GuardError(f"{where}: missing {key!r}")
    return doc[key]


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise GuardError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _label_row(value: Any, where: str) -> list[str]:
    row = value if isinstance(value, list) else [value]
    if not all(isinstance(label, str) for label in row):
        raise GuardError(f"{where}: labels must be strings")
    return row


def _label_value(original: Any, row: list[str]) -> Any:
    """A suppressed row written back in the original's form (one string or a list)."""
    if isinstance(original, list):
        return row
    if original is None and not row:
        return None
    return row[0] if row else ""


def _pick(row: Any, output: str | None, index: int, where: str) -> Any:
    if isinstance(row, dict):
        if output is None:
            if len(row) != 1:
                raise GuardError(f"{where}: several outputs, set model.score.output")
            row = next(iter(row.values()))
        else:
            row = _get(row, output, where)
    if isinstance(row, list):
        if index >= len(row):
            raise GuardError(f"{where}: no column {index} in a row of {len(row)}")
        row = row[index]
    return row


def _feature_rows(rows: list[Any], names: list[Any] | None, name: str, where: str) -> list[Any]:
    """A named feature from row dicts, or from row lists whose columns are named."""
    if rows and isinstance(rows[0], dict):
        return [_get(row, name, where) for row in rows]
    if names is None or name not in names:
        raise GuardError(f"{where}: no feature named {name!r}")
    column = names.index(name)
    return [_list(row, where)[column] for row in rows]


def _singleton(values: list[Any]) -> list[Any]:
    return [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]


class Payload:
    """Reads and changes one protocol's requests and answers; compiled once per policy."""

    protocol = "jsonpath"
    texts = False  # openai: labels are free text, guarded by word, not by exact label

    def __init__(self, model: ModelSpec, labels: LabelsSpec, decision: DecisionSpec) -> None:
        self.output = model.score.output
        self.index = model.score.index
        self.score_path = JsonPath(model.score.path) if model.score.path else None
        self.labels_path = JsonPath(labels.path) if labels.path else None
        self.labels_output = labels.output
        self.label_output = decision.label_output

    def rows(self, request_doc: Doc) -> int:
        """How many rows (predictions) the request asks for."""
        return 1

    def feature(self, request_doc: Doc, name: str) -> list[object]:
        """A named input feature, one value per row."""
        raise GuardError(f"{self.protocol} requests have no named features")

    def scores(self, response_doc: Doc) -> list[float]:
        """The model's score for each row."""
        if self.score_path is not None:
            return _floats(self.score_path.find(response_doc), self.score_path.text)
        return self._scores(response_doc)

    def _scores(self, response_doc: Doc) -> list[float]:
        raise GuardError(f"{self.protocol} answers carry no score; set model.score.path")

    def labels(self, response_doc: Doc) -> list[list[str]]:
        """The output labels (or texts) of each row."""
        return [
            _label_row(container[key], "labels")
            for container, key in self._label_slots(response_doc)
        ]

    def set_labels(self, response_doc: Doc, labels: list[list[str]]) -> None:
        """Write back each row's labels (after suppression), in the original's form."""
        slots = self._label_slots(response_doc)
        if len(slots) != len(labels):
            raise GuardError(f"{len(labels)} label rows for {len(slots)} in the answer")
        for (container, key), row in zip(slots, labels, strict=True):
            container[key] = _label_value(container[key], row)

    def _label_slots(self, response_doc: Doc) -> list[Slot]:
        if self.labels_path is None:
            raise GuardError(f"{self.protocol} answers: set labels.path or labels.output")
        return self.labels_path.slots(response_doc)

    def annotate(self, response_doc: Doc, decisions: list[int], thresholds: list[float]) -> None:
        """Add the decisions and thresholds to the answer."""
        if not isinstance(response_doc, dict):
            raise GuardError("cannot annotate an answer that is not a JSON object")
        response_doc["guardproxy"] = {"decisions": decisions, "thresholds": thresholds}

    def rewrite(self, response_doc: Doc, decisions: list[int]) -> None:
        """Replace the model's own label with the decisions."""
        if self.label_output is None or not self.label_output.startswith("$"):
            raise GuardError(f"{self.protocol} answers: decision.label_output must be a path")
        slots = JsonPath(self.label_output).slots(response_doc)
        if len(slots) != len(decisions):
            raise GuardError(f"{self.label_output} matches {len(slots)} of {len(decisions)} rows")
        for (container, key), decision in zip(slots, decisions, strict=True):
            container[key] = decision


class JsonPathPayload(Payload):
    """Any JSON answer, read through configured JSON paths."""

    def __init__(self, model: ModelSpec, labels: LabelsSpec, decision: DecisionSpec) -> None:
        super().__init__(model, labels, decision)
        if self.score_path is None and self.labels_path is None:
            raise ValueError("protocol jsonpath needs model.score.path or labels.path")
        self._features: dict[str, JsonPath] = {}

    def feature(self, request_doc: Doc, name: str) -> list[object]:
        """Values a path (or a top-level key) selects, one per row."""
        path = self._features.get(name)
        if path is None:  # bounded: names come from the policy
            path = self._features[name] = JsonPath(name if name.startswith("$") else f"$.{name}")
        values = path.find(request_doc)
        if not values:
            raise GuardError(f"request has nothing at {path.text}")
        return values


def compile_payload(model: ModelSpec, labels: LabelsSpec, decision: DecisionSpec) -> Payload:
    """The compiled accessor for the policy's protocol (ValueError on a bad path)."""
    return PRESETS.get(model.protocol, JsonPathPayload)(model, labels, decision)


def _tensor(t: Any, where: str) -> tuple[int, int, list[Any]]:
    """(rows, width, flat row-major data) of a v2 tensor, data flat or nested."""
    try:
        shape, data = t["shape"], t["data"]
        rows = shape[0]
        width = 1 if len(shape) == 1 else shape[1] if len(shape) == 2 else math.prod(shape[1:])
    except (KeyError, TypeError, IndexError):
        raise GuardError(f"{where}: expected a tensor with shape and data") from None
    if type(data) is not list:
        raise GuardError(f"{where}: data must be a list, got {type(data).__name__}")
    while data and type(data[0]) is list:
        data = [v for part in data for v in part]
    if type(rows) is not int or type(width) is not int or len(data) != rows * width:
        raise GuardError(f"{where}: {len(data)} values for shape {shape}")
    return rows, width, data


class KServeV2(Payload):
    """Open Inference Protocol (KServe v2, Triton, MLServer)."""

    protocol = "kserve_v2"

    def rows(self, request_doc: Doc) -> int:
        """shape[0] of the first input."""
        first = _list(_get(request_doc, "inputs", "request"), "request inputs")
        if not first:
            raise GuardError("request has no inputs")
        return _tensor(first[0], "request input")[0]

    def feature(self, request_doc: Doc, name: str) -> list[object]:
        """An input named `name` ([N] or [N,1]), or a column of a 2-D input with named columns."""
        inputs = _list(_get(request_doc, "inputs", "request"), "request inputs")
        for t in inputs:
            if isinstance(t, dict) and t.get("name") == name:
                return _tensor(t, f"input {name!r}")[2]
        for t in inputs:
            columns = _columns(t, request_doc)
            if name in columns:
                _, width, data = _tensor(t, f"input {t.get('name')!r}")
                if width != len(columns):
                    raise GuardError(
                        f"input {t.get('name')!r}: {width} columns, {len(columns)} names"
                    )
                return data[columns.index(name) :: width]
        raise GuardError(f"request has no input or column named {name!r}")

    def _output(self, response_doc: Doc, name: str | None, what: str) -> Any:
        outputs = _list(_get(response_doc, "outputs", "answer"), "answer outputs")
        for t in outputs:
            if isinstance(t, dict) and (name is None or t.get("name") == name):
                return t
        raise GuardError(f"answer has no output {name!r} for the {what}")

    def _scores(self, response_doc: Doc) -> list[float]:
        t = self._output(response_doc, self.output, "score")
        _, width, data = _tensor(t, f"output {t.get('name')!r}")
        if self.index >= width:
            raise GuardError(f"output {t.get('name')!r} has no column {self.index}")
        return _floats(data[self.index :: width], f"output {t.get('name')!r}")

    def _label_tensor(self, response_doc: Doc) -> Any:
        if self.labels_output is not None:
            return self._output(response_doc, self.labels_output, "labels")
        for t in _list(_get(response_doc, "outputs", "answer"), "answer outputs"):
            if isinstance(t, dict) and t.get("datatype") == "BYTES":
                return t
        raise GuardError("answer has no BYTES output for the labels; set labels.output")

    def labels(self, response_doc: Doc) -> list[list[str]]:
        """Per row: the labels of a BYTES output of shape [N] or [N, K]."""
        if self.labels_path is not None:
            return super().labels(response_doc)
        n, width, data = _tensor(self._label_tensor(response_doc), "labels output")
        return [_label_row(data[i * width : (i + 1) * width], "labels output") for i in range(n)]

    def set_labels(self, response_doc: Doc, labels: list[list[str]]) -> None:
        """Rewrite the labels tensor, padding short rows with empty strings."""
        if self.labels_path is not None:
            return super().set_labels(response_doc, labels)
        t = self._label_tensor(response_doc)
        n, width, _ = _tensor(t, "labels output")
        if n != len(labels):
            raise GuardError(f"{len(labels)} label rows for {n} in the answer")
        width = max(1, *(len(row) for row in labels))
        t["shape"] = [n, width] if len(t["shape"]) > 1 or width > 1 else [n]
        t["data"] = [v for row in labels for v in row + [""] * (width - len(row))]
        return None

    def annotate(self, response_doc: Doc, decisions: list[int], thresholds: list[float]) -> None:
        """Append INT64 output "guardproxy" and FP32 output "guardproxy_threshold"."""
        outputs = _list(_get(response_doc, "outputs", "answer"), "answer outputs")
        n = len(decisions)
        outputs.append({"name": "guardproxy", "shape": [n], "datatype": "INT64", "data": decisions})
        outputs.append(
            {"name": "guardproxy_threshold", "shape": [n], "datatype": "FP32", "data": thresholds}
        )

    def rewrite(self, response_doc: Doc, decisions: list[int]) -> None:
        """Replace the label output (label_output, else "label" or "predict") with decisions."""
        names = (self.label_output,) if self.label_output else ("label", "predict")
        outputs = _list(_get(response_doc, "outputs", "answer"), "answer outputs")
        found = [t for t in outputs if isinstance(t, dict) and t.get("name") in names]
        if not found:
            raise GuardError(f"answer has no label output named {' or '.join(names)}")
        t = found[0]
        if _tensor(t, "label output")[0] != len(decisions):
            raise GuardError("label output rows do not match the decisions")
        text = t.get("datatype") == "BYTES"
        t["shape"] = [len(decisions)]
        t["data"] = [str(d) for d in decisions] if text else decisions


def _columns(t: Any, request_doc: Doc) -> list[Any]:
    """Column names of a 2-D tabular input: its parameters, or the request's."""
    for holder in (t, request_doc):
        if not isinstance(holder, dict):
            continue
        params = holder.get("parameters")
        names = params.get("columns") if isinstance(params, dict) else None
        names = names if names is not None else holder.get("columns")
        if isinstance(names, list):
            return names
    return []


class TFServing(Payload):
    """TF Serving REST predict: row `instances` or columnar `inputs`; `predictions`/`outputs`."""

    protocol = "tfserving"
    _answer_keys = ("predictions", "outputs")

    def rows(self, request_doc: Doc) -> int:
        """Rows of the request table."""
        rows, columns = self._table(request_doc)
        if columns is not None:
            first: Any = next(iter(columns.values()), [])
            return len(first) if isinstance(first, list) else 1
        return len(rows)

    def _table(self, doc: Doc) -> tuple[list[Any], dict[str, Any] | None]:
        if isinstance(doc, dict) and "instances" in doc:
            return _list(doc["instances"], "request instances"), None
        inputs = _get(doc, "inputs", "request")
        if isinstance(inputs, dict):
            return [], inputs
        return _list(inputs, "request inputs"), None

    def _names(self, doc: Doc) -> list[Any] | None:
        return None

    def feature(self, request_doc: Doc, name: str) -> list[object]:
        """A feature from row dicts, named row lists, or a column."""
        rows, columns = self._table(request_doc)
        if columns is not None:
            return _singleton(_list(_get(columns, name, "request inputs"), f"input {name!r}"))
        return _feature_rows(rows, self._names(request_doc), name, "request")

    def _answer(self, doc: Doc) -> tuple[Any, Any]:
        """(container, key) of the predictions, a list of rows or a dict of columns."""
        if isinstance(doc, list):
            return [doc], 0
        for key in self._answer_keys:
            if isinstance(doc, dict) and key in doc:
                return doc, key
        raise GuardError(f"answer has none of {', '.join(self._answer_keys)}")

    def _rows(self, doc: Doc, output: str | None) -> list[Any]:
        container, key = self._answer(doc)
        value = container[key]
        if isinstance(value, dict):
            if output is None and len(value) != 1:
                raise GuardError("answer: several output columns, set model.score.output")
            column = next(iter(value.values())) if output is None else _get(value, output, "answer")
            return _singleton(_list(column, "answer column"))
        return _list(value, "answer")

    def _scores(self, response_doc: Doc) -> list[float]:
        values = [
            _pick(row, self.output, self.index, "prediction")
            for row in self._rows(response_doc, self.output)
        ]
        return _floats(values, "predictions")

    def _label_slots(self, response_doc: Doc) -> list[Slot]:
        if self.labels_path is not None:
            return self.labels_path.slots(response_doc)
        key = self.labels_output or "labels"
        container, answer_key = self._answer(response_doc)
        rows = container[answer_key]
        if isinstance(rows, dict):
            column = _list(_get(rows, key, "answer"), "labels column")
            return [(column, i) for i in range(len(column))]
        rows = _list(rows, "answer")
        return [(r, key) if isinstance(r, dict) else (rows, i) for i, r in enumerate(rows)]

    def rewrite(self, response_doc: Doc, decisions: list[int]) -> None:
        """Replace the label column (label_output) or the whole predictions list."""
        container, key = self._answer(response_doc)
        rows = container[key]
        if isinstance(rows, dict) or (
            isinstance(rows, list) and rows and isinstance(rows[0], dict)
        ):
            return self._rewrite_column(rows, decisions)
        if len(_list(rows, "answer")) != len(decisions):
            raise GuardError("predictions do not match the decisions")
        rows[:] = decisions
        return None

    def _rewrite_column(self, rows: Any, decisions: list[int]) -> None:
        name = self.label_output or "label"
        if isinstance(rows, dict):
            _get(rows, name, "answer")
            rows[name] = decisions
            return
        for row in rows:
            _get(row, name, "prediction")
        for row, decision in zip(rows, decisions, strict=True):
            row[name] = decision


class MLflow(TFServing):
    """MLflow /invocations: dataframe_split, dataframe_records, instances or inputs."""

    protocol = "mlflow"

    def _table(self, doc: Doc) -> tuple[list[Any], dict[str, Any] | None]:
        if isinstance(doc, dict) and "dataframe_split" in doc:
            split = _get(doc, "dataframe_split", "request")
            return _list(_get(split, "data", "dataframe_split"), "dataframe_split data"), None
        if isinstance(doc, dict) and "dataframe_records" in doc:
            return _list(doc["dataframe_records"], "dataframe_records"), None
        return super()._table(doc)

    def _names(self, doc: Doc) -> list[Any] | None:
        split = doc.get("dataframe_split") if isinstance(doc, dict) else None
        return split.get("columns") if isinstance(split, dict) else None


class SeldonV1(TFServing):
    """Seldon Core v1: `data.ndarray` rows or `data.tensor`, optional `data.names`."""

    protocol = "seldon_v1"

    def _table(self, doc: Doc) -> tuple[list[Any], dict[str, Any] | None]:
        return _seldon_rows(_get(doc, "data", "request")), None

    def _names(self, doc: Doc) -> list[Any] | None:
        names = doc["data"].get("names")
        return names if isinstance(names, list) else None

    def _answer(self, doc: Doc) -> tuple[Any, Any]:
        data = _get(doc, "data", "answer")
        _get(data, "ndarray", "answer data")
        return data, "ndarray"

    def _rows(self, doc: Doc, output: str | None) -> list[Any]:
        data = _get(doc, "data", "answer")
        rows = _seldon_rows(data)
        names = data.get("names")
        if output is not None and isinstance(names, list) and output in names:
            column = names.index(output)
            return [_list(row, "answer row")[column] for row in rows]
        return rows

    def _scores(self, response_doc: Doc) -> list[float]:
        rows = self._rows(response_doc, self.output)
        return _floats([_pick(row, None, self.index, "prediction") for row in rows], "data")

    def rewrite(self, response_doc: Doc, decisions: list[int]) -> None:
        """Replace the named label column, or the whole ndarray with one decision per row."""
        data = _get(response_doc, "data", "answer")
        rows = _seldon_rows(data)
        key = "ndarray"
        names = data.get("names")
        if len(rows) != len(decisions):
            raise GuardError("answer rows do not match the decisions")
        if self.label_output and isinstance(names, list) and self.label_output in names:
            column = names.index(self.label_output)
            rows = [_list(row, "answer row")[:] for row in rows]
            for row, decision in zip(rows, decisions, strict=True):
                row[column] = decision
            data.pop("tensor", None)
            data[key] = rows
            return
        data.pop("tensor", None)
        data[key] = [[d] for d in decisions]
        data["names"] = [self.label_output or "decision"]


def _seldon_rows(data: Any) -> list[Any]:
    if isinstance(data, dict) and "ndarray" in data:
        return _list(data["ndarray"], "data.ndarray")
    tensor = _get(data, "tensor", "data")
    shape = _list(_get(tensor, "shape", "data.tensor"), "data.tensor shape")
    values = _list(_get(tensor, "values", "data.tensor"), "data.tensor values")
    width = math.prod(shape[1:])
    if not shape or len(values) != shape[0] * width:
        raise GuardError(f"data.tensor: {len(values)} values for shape {shape}")
    return [values[i * width : (i + 1) * width] for i in range(shape[0])]


class OpenAIChat(Payload):
    """OpenAI chat completions: the choices' message content is the text to guard."""

    protocol = "openai"
    texts = True

    def rows(self, request_doc: Doc) -> int:
        """The number of choices asked for (n)."""
        n = request_doc.get("n", 1) if isinstance(request_doc, dict) else 1
        return n if isinstance(n, int) and n > 0 else 1

    def feature(self, request_doc: Doc, name: str) -> list[object]:
        """A top-level request field or a metadata entry, the same for every choice."""
        meta = request_doc.get("metadata") if isinstance(request_doc, dict) else None
        if isinstance(meta, dict) and name in meta:
            return [meta[name]] * self.rows(request_doc)
        return [_get(request_doc, name, "request")] * self.rows(request_doc)

    def labels(self, response_doc: Doc) -> list[list[str]]:
        """Each choice's message content (no content, e.g. a tool call: no text)."""
        return [
            [] if c[k] is None else _label_row(c[k], "content")
            for c, k in self._label_slots(response_doc)
        ]

    def _label_slots(self, response_doc: Doc) -> list[Slot]:
        if self.labels_path is not None:
            return self.labels_path.slots(response_doc)
        choices = _list(_get(response_doc, "choices", "answer"), "answer choices")
        slots: list[Slot] = []
        for choice in choices:
            message = _get(choice, "message", "choice")
            _get(message, "content", "message")
            slots.append((message, "content"))
        return slots


PRESETS: dict[str, type[Payload]] = {
    "kserve_v2": KServeV2,
    "tfserving": TFServing,
    "mlflow": MLflow,
    "seldon_v1": SeldonV1,
    "openai": OpenAIChat,
    "jsonpath": JsonPathPayload,
}
