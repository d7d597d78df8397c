"""Row and column tables: TF Serving REST, MLflow and Seldon Core v1."""

from __future__ import annotations

from typing import Any

from guardproxy.payloads.base import Payload
from guardproxy.payloads.canonical import canonical, shared_suffix, short_name
from guardproxy.payloads.errors import AmbiguousInput, PayloadError
from guardproxy.payloads.fields import as_list, feature_rows, field, floats, pick, singleton
from guardproxy.payloads.jsonpath import Doc, Slot
from guardproxy.payloads.tensors import shape_size


class TFServing(Payload):
    """TF Serving REST predict: row `instances` or columnar `inputs`; `predictions`/`outputs`."""

    protocol = "tfserving"
    _answer_keys = ("predictions", "outputs")

    def _table(self, doc: Doc) -> tuple[list[Any], dict[str, Any] | None]:
        if isinstance(doc, dict) and "instances" in doc:
            return as_list(doc["instances"], "request instances"), None
        inputs = field(doc, "inputs", "request")
        if isinstance(inputs, dict):
            return [], inputs
        return as_list(inputs, "request inputs"), None

    def _names(self, doc: Doc) -> list[Any] | None:
        return None

    def feature(self, request_doc: Doc, name: str) -> list[object]:
        """A feature from row dicts, named row lists, or a column."""
        rows, columns = self._table(request_doc)
        if columns is not None:
            return singleton(as_list(field(columns, name, "request inputs"), f"input {name!r}"))
        return feature_rows(rows, self._names(request_doc), name, "request")

    def group_feature(self, request_doc: Doc, name: str) -> list[object]:
        """As `feature`; a column named twice is AmbiguousInput (which one a model reads is
        up to its server)."""
        values = self.feature(request_doc, name)
        names = self._names(request_doc)
        if isinstance(names, list) and names.count(name) > 1:
            raise AmbiguousInput(f"column {name!r} is given more than once")
        return values

    def row_keys(self, request_doc: Doc, rows: int) -> list[bytes]:
        """Per row, its values (by column name when the table names its columns)."""
        table, columns = self._table(request_doc)
        if columns is not None:
            per_row = {k: c for k, c in columns.items() if isinstance(c, list) and len(c) == rows}
            suffix = shared_suffix({k: c for k, c in columns.items() if k not in per_row})
            keyed = [(short_name(k), c) for k, c in per_row.items()]  # once, not once per row
            return [canonical({k: c[i] for k, c in keyed}) + suffix for i in range(rows)]
        names = self._names(request_doc)
        if len(table) != rows:
            raise PayloadError(f"{len(table)} rows in the request for {rows} scores")
        short = [short_name(n) for n in names] if isinstance(names, list) else None
        return [canonical(_named(row, short)) for row in table]

    def _answer(self, doc: Doc) -> tuple[Any, Any]:
        """(container, key) of the predictions, a list of rows or a dict of columns."""
        if isinstance(doc, list):
            return [doc], 0
        for key in self._answer_keys:
            if isinstance(doc, dict) and key in doc:
                return doc, key
        raise PayloadError(f"answer has none of {', '.join(self._answer_keys)}")

    def _rows(self, doc: Doc, output: str | None) -> list[Any]:
        container, key = self._answer(doc)
        value = container[key]
        if isinstance(value, dict):
            if output is None and len(value) != 1:
                raise PayloadError("answer: several output columns, set model.score.output")
            column = (
                next(iter(value.values())) if output is None else field(value, output, "answer")
            )
            return singleton(as_list(column, "answer column"))
        return as_list(value, "answer")

    def _scores(self, response_doc: Doc) -> list[float]:
        values = [
            pick(row, self.output, self.index, "prediction")
            for row in self._rows(response_doc, self.output)
        ]
        return floats(values, "predictions")

    def _label_slots(self, response_doc: Doc) -> list[Slot]:
        if self.labels_path is not None:
            return self.labels_path.slots(response_doc)
        key = self.labels_output or "labels"
        container, answer_key = self._answer(response_doc)
        rows = container[answer_key]
        if isinstance(rows, dict):
            column = as_list(field(rows, key, "answer"), "labels column")
            return [(column, i) for i in range(len(column))]
        rows = as_list(rows, "answer")
        return [(r, key) if isinstance(r, dict) else (rows, i) for i, r in enumerate(rows)]

    def rewrite(self, response_doc: Doc, decisions: list[int]) -> None:
        """Replace the label column (label_output) or the whole predictions list."""
        container, key = self._answer(response_doc)
        rows = container[key]
        if isinstance(rows, dict) or (
            isinstance(rows, list) and rows and isinstance(rows[0], dict)
        ):
            return self._rewrite_column(rows, decisions)
        if len(as_list(rows, "answer")) != len(decisions):
            raise PayloadError("predictions do not match the decisions")
        rows[:] = decisions
        return None

    def _rewrite_column(self, rows: Any, decisions: list[int]) -> None:
        name = self.label_output or "label"
        if isinstance(rows, dict):
            field(rows, name, "answer")
            rows[name] = decisions
            return
        for row in rows:
            field(row, name, "prediction")
        for row, decision in zip(rows, decisions, strict=True):
            row[name] = decision


class MLflow(TFServing):
    """MLflow /invocations: dataframe_split, dataframe_records, instances or inputs."""

    protocol = "mlflow"

    def _table(self, doc: Doc) -> tuple[list[Any], dict[str, Any] | None]:
        if isinstance(doc, dict) and "dataframe_split" in doc:
            split = field(doc, "dataframe_split", "request")
            return as_list(field(split, "data", "dataframe_split"), "dataframe_split data"), None
        if isinstance(doc, dict) and "dataframe_records" in doc:
            return as_list(doc["dataframe_records"], "dataframe_records"), None
        return super()._table(doc)

    def _names(self, doc: Doc) -> list[Any] | None:
        split = doc.get("dataframe_split") if isinstance(doc, dict) else None
        return split.get("columns") if isinstance(split, dict) else None


class SeldonV1(TFServing):
    """Seldon Core v1: `data.ndarray` rows or `data.tensor`, optional `data.names`."""

    protocol = "seldon_v1"

    def _table(self, doc: Doc) -> tuple[list[Any], dict[str, Any] | None]:
        return _seldon_rows(field(doc, "data", "request")), None

    def _names(self, doc: Doc) -> list[Any] | None:
        names = doc["data"].get("names")
        return names if isinstance(names, list) else None

    def _answer(self, doc: Doc) -> tuple[Any, Any]:
        data = field(doc, "data", "answer")
        field(data, "ndarray", "answer data")
        return data, "ndarray"

    def _rows(self, doc: Doc, output: str | None) -> list[Any]:
        data = field(doc, "data", "answer")
        rows = _seldon_rows(data)
        names = data.get("names")
        if output is not None and isinstance(names, list) and output in names:
            column = names.index(output)
            return [as_list(row, "answer row")[column] for row in rows]
        return rows

    def _scores(self, response_doc: Doc) -> list[float]:
        rows = self._rows(response_doc, self.output)
        return floats([pick(row, None, self.index, "prediction") for row in rows], "data")

    def rewrite(self, response_doc: Doc, decisions: list[int]) -> None:
        """Replace the named label column, or the whole ndarray with one decision per row."""
        data = field(response_doc, "data", "answer")
        rows = _seldon_rows(data)
        key = "ndarray"
        names = data.get("names")
        if len(rows) != len(decisions):
            raise PayloadError("answer rows do not match the decisions")
        if self.label_output and isinstance(names, list) and self.label_output in names:
            column = names.index(self.label_output)
            rows = [as_list(row, "answer row")[:] for row in rows]
            for row, decision in zip(rows, decisions, strict=True):
                row[column] = decision
            data.pop("tensor", None)
            data[key] = rows
            return
        data.pop("tensor", None)
        data[key] = [[d] for d in decisions]
        data["names"] = [self.label_output or "decision"]


def _named(row: Any, names: list[str] | None) -> Any:
    """A list row with named columns as a mapping, so column order is not content."""
    if names is not None and isinstance(row, list) and len(row) == len(names):
        return dict(zip(names, row, strict=True))
    return row


def _seldon_rows(data: Any) -> list[Any]:
    if isinstance(data, dict) and "ndarray" in data:
        return as_list(data["ndarray"], "data.ndarray")
    tensor = field(data, "tensor", "data")
    shape = as_list(field(tensor, "shape", "data.tensor"), "data.tensor shape")
    values = as_list(field(tensor, "values", "data.tensor"), "data.tensor values")
    size = shape_size(shape, len(values), lambda why: PayloadError(f"data.tensor: {why}"))
    rows = shape[0] if shape else 0
    if not shape or size != len(values):
        raise PayloadError(f"data.tensor: {len(values)} values for shape {shape}")
    if size == 0 and rows > 0:  # rows no value backs: a few bytes of shape, millions of lists
        raise PayloadError("data.tensor: rows of no values")
    width = size // rows if rows else 0
    return [values[i * width : (i + 1) * width] for i in range(rows)]
