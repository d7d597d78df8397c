"""Open Inference Protocol (KServe v2) tensors."""

from __future__ import annotations

from typing import Any

from guardproxy.payloads.base import Payload
from guardproxy.payloads.canonical import canonical, shared_suffix, short_name
from guardproxy.payloads.errors import AmbiguousInput, PayloadError
from guardproxy.payloads.fields import as_list, field, floats, label_row
from guardproxy.payloads.jsonpath import Doc
from guardproxy.payloads.tensors import MAX_ELEMENTS, flatten, shape_size

_UNNAMED: Any = object()


def _tensor(t: Any, where: str, name: Any = _UNNAMED) -> tuple[int, int, list[Any]]:
    """(rows, width, flat row-major data) of a v2 tensor, data flat or nested.

    With a `name`, errors say `where name!r` (formatted only when there is an error).
    """
    try:
        shape, data = t["shape"], t["data"]
    except (KeyError, TypeError):
        shape = data = None
    if type(shape) is not list or not shape:
        raise PayloadError(f"{_place(where, name)}: expected a tensor with shape and data")
    if type(data) is not list:
        raise PayloadError(f"{_place(where, name)}: data must be a list, got {type(data).__name__}")
    if data and type(data[0]) is list:
        data = flatten(data, lambda: PayloadError(f"{_place(where, name)}: ragged nested data"))
    rows = shape[0]
    if len(shape) == 1:  # the usual [N] and [N, k]: no product to bound
        width = 1
    elif len(shape) == 2 and type(shape[1]) is int and shape[1] >= 0:
        width = shape[1]
    else:
        width = shape_size(
            shape[1:], MAX_ELEMENTS, lambda why: PayloadError(f"{_place(where, name)}: {why}")
        )
    if type(rows) is not int or rows < 0 or len(data) != rows * width:
        raise PayloadError(f"{_place(where, name)}: {len(data)} values for shape {shape}")
    return rows, width, data


def _place(where: str, name: Any) -> str:
    return where if name is _UNNAMED else f"{where} {name!r}"


class KServeV2(Payload):
    """Open Inference Protocol (KServe v2, Triton, MLServer)."""

    protocol = "kserve_v2"

    def version(self, response_doc: Doc) -> str | None:
        """The answer's model_version (every OIP server names the version that answered)."""
        value = response_doc.get("model_version") if isinstance(response_doc, dict) else None
        return value if isinstance(value, str) else None

    def feature(self, request_doc: Doc, name: str) -> list[object]:
        """An input named `name` ([N] or [N,1]), or a column of a 2-D input with named columns."""
        inputs = as_list(field(request_doc, "inputs", "request"), "request inputs")
        for t in inputs:
            if isinstance(t, dict) and t.get("name") == name:
                return _tensor(t, "input", name)[2]
        shared = _named_columns(request_doc) or []
        in_shared = name in shared  # once, not once per input: inputs x names holds the loop
        for t in inputs:
            if not isinstance(t, dict):
                continue
            own = _named_columns(t)
            columns = shared if own is None else own
            if in_shared if own is None else name in own:
                _, width, data = _tensor(t, "input", t.get("name"))
                if width != len(columns):
                    raise PayloadError(
                        f"input {t.get('name')!r}: {width} columns, {len(columns)} names"
                    )
                return data[columns.index(name) :: width]
        raise PayloadError(f"request has no input or column named {name!r}")

    def group_feature(self, request_doc: Doc, name: str) -> list[object]:
        """As `feature`; an input of that name given twice is AmbiguousInput (servers
        disagree on which one wins)."""
        inputs = request_doc.get("inputs") if isinstance(request_doc, dict) else None
        if isinstance(inputs, list):
            found = None
            for t in inputs:  # every input looked at once: a second of that name is refused
                if isinstance(t, dict) and t.get("name") == name:
                    if found is not None:
                        raise AmbiguousInput(f"input {name!r} is given more than once")
                    found = t
            if found is not None:
                return _tensor(found, "input", name)[2]
        return self.feature(request_doc, name)

    def row_keys(self, request_doc: Doc, rows: int) -> list[bytes]:
        """Per row, every input's slice for that row by input name (request ids left out)."""
        inputs = as_list(field(request_doc, "inputs", "request"), "request inputs")
        shared = _short_names(_named_columns(request_doc))
        columns: dict[str, Any] = {}
        whole: dict[str, Any] = {}  # inputs that are not one slice per row: in every row's key
        for position, t in enumerate(inputs):
            n, width, data = _tensor(t, "request input")
            name = t.get("name")
            key = short_name(name) if isinstance(name, str) else f"#{position}"
            if n != rows or width == 0:  # no slice of its own per row: a name alone is not one
                whole[key] = data
                continue
            own = _named_columns(t)
            names = shared if own is None else _short_names(own)
            columns[key] = (width, data, names if len(names) == width > 1 else None)
        suffix = shared_suffix(whole)
        return [canonical(_row(columns, i)) + suffix for i in range(rows)]

    def _output(self, response_doc: Doc, name: str | None, what: str) -> Any:
        outputs = as_list(field(response_doc, "outputs", "answer"), "answer outputs")
        for t in outputs:
            if isinstance(t, dict) and (name is None or t.get("name") == name):
                return t
        raise PayloadError(f"answer has no output {name!r} for the {what}")

    def _scores(self, response_doc: Doc) -> list[float]:
        t = self._output(response_doc, self.output, "score")
        _, width, data = _tensor(t, "output", t.get("name"))
        if self.index >= width:
            raise PayloadError(f"output {t.get('name')!r} has no column {self.index}")
        values = data[self.index :: width]
        try:
            return floats(values, "")
        except PayloadError:  # said again with its place, named only when it is needed
            return floats(values, f"output {t.get('name')!r}")

    def _label_tensor(self, response_doc: Doc) -> Any:
        if self.labels_output is not None:
            return self._output(response_doc, self.labels_output, "labels")
        for t in as_list(field(response_doc, "outputs", "answer"), "answer outputs"):
            if isinstance(t, dict) and t.get("datatype") == "BYTES":
                return t
        raise PayloadError("answer has no BYTES output for the labels; set labels.output")

    def labels(self, response_doc: Doc) -> list[list[str]]:
        """Per row: the labels of a BYTES output of shape [N] or [N, K]."""
        if self.labels_path is not None:
            return super().labels(response_doc)
        n, width, data = _tensor(self._label_tensor(response_doc), "labels output")
        return [label_row(data[i * width : (i + 1) * width], "labels output") for i in range(n)]

    def set_labels(self, response_doc: Doc, labels: list[list[str]]) -> None:
        """Rewrite the labels tensor, padding short rows with empty strings."""
        if self.labels_path is not None:
            return super().set_labels(response_doc, labels)
        t = self._label_tensor(response_doc)
        n, width, _ = _tensor(t, "labels output")
        if n != len(labels):
            raise PayloadError(f"{len(labels)} label rows for {n} in the answer")
        width = max(1, *(len(row) for row in labels))
        t["shape"] = [n, width] if len(t["shape"]) > 1 or width > 1 else [n]
        t["data"] = [v for row in labels for v in row + [""] * (width - len(row))]
        return None

    def annotate(
        self, response_doc: Doc, decisions: list[int], thresholds: list[float | str]
    ) -> None:
        """Append INT64 "guardproxy" and "guardproxy_threshold" (FP32; BYTES if a rule is mixed)."""
        outputs = as_list(field(response_doc, "outputs", "answer"), "answer outputs")
        n = len(decisions)
        outputs.append({"name": "guardproxy", "shape": [n], "datatype": "INT64", "data": decisions})
        data: list[float | str] = thresholds
        datatype = "FP32"
        if any(isinstance(t, str) for t in thresholds):  # a mixed rule's label: all as text
            data = [t if isinstance(t, str) else f"{t:.4g}" for t in thresholds]
            datatype = "BYTES"
        outputs.append(
            {"name": "guardproxy_threshold", "shape": [n], "datatype": datatype, "data": data}
        )

    def rewrite(self, response_doc: Doc, decisions: list[int]) -> None:
        """Replace the label output (label_output, else "label" or "predict") with decisions."""
        names = (self.label_output,) if self.label_output else ("label", "predict")
        outputs = as_list(field(response_doc, "outputs", "answer"), "answer outputs")
        found = [t for t in outputs if isinstance(t, dict) and t.get("name") in names]
        if not found:
            raise PayloadError(f"answer has no label output named {' or '.join(names)}")
        t = found[0]
        if _tensor(t, "label output")[0] != len(decisions):
            raise PayloadError("label output rows do not match the decisions")
        text = t.get("datatype") == "BYTES"
        t["shape"] = [len(decisions)]
        t["data"] = [str(d) for d in decisions] if text else decisions


def _row(columns: dict[str, Any], i: int) -> dict[str, Any]:
    """Row i of every input that has one slice per row (by column name when it names them)."""
    out: dict[str, Any] = {}
    for key, (width, data, names) in columns.items():
        value = data[i * width : (i + 1) * width]
        out[key] = dict(zip(names, value, strict=True)) if names else value
    return out


def _short_names(names: list[Any] | None) -> list[str]:
    """Column names as each row's key holds them (a long one as its digest), made once."""
    return [short_name(n) for n in names] if names is not None else []


def _named_columns(holder: Any) -> list[Any] | None:
    """The column names an input (or the request, for all of its inputs) gives, if any."""
    if not isinstance(holder, dict):
        return None
    params = holder.get("parameters")
    names = params.get("columns") if isinstance(params, dict) else None
    names = names if names is not None else holder.get("columns")
    return names if isinstance(names, list) else None
