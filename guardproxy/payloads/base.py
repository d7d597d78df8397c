"""The Payload accessor every protocol refines, and the generic JSON-path one."""

from __future__ import annotations

from guardproxy.payloads.canonical import canonical, indexed
from guardproxy.payloads.errors import PayloadError
from guardproxy.payloads.fields import floats, label_row, label_value
from guardproxy.payloads.jsonpath import Doc, JsonPath, Slot
from guardproxy.policy.models import ModelPolicy


class Payload:
    """Reads and changes one protocol's requests and answers; compiled once per policy."""

    protocol = "jsonpath"
    texts = False  # openai: labels are free text, guarded by word, not by exact label

    def __init__(self, model: ModelPolicy) -> None:
        self.output = model.score.output
        self.index = model.score.index
        self.score_path = JsonPath(model.score.path) if model.score.path else None
        self.labels_path = JsonPath(model.labels.path) if model.labels.path else None
        self.labels_output = model.labels.output
        self.label_output = model.decision.label_output

    def version(self, response_doc: Doc) -> str | None:
        """The model version the answer names, when the protocol carries one."""
        return None

    def feature(self, request_doc: Doc, name: str) -> list[object]:
        """A named input feature, one value per row."""
        raise PayloadError(f"{self.protocol} requests have no named features")

    def group_feature(self, request_doc: Doc, name: str) -> list[object]:
        """The feature the group is read from: as `feature`, but AmbiguousInput where the
        guards and a model could each read another input of that name."""
        return self.feature(request_doc, name)

    def row_keys(self, request_doc: Doc, rows: int) -> list[bytes]:
        """One canonical byte string per scored row (what a randomized decision draws from).

        Without a notion of rows, the whole request is the subject; a policy for such a
        protocol should name decision.subject, since any field a client adds changes it.
        """
        return indexed(canonical(request_doc), rows)

    def scores(self, response_doc: Doc) -> list[float]:
        """The model's score for each row."""
        if self.score_path is not None:
            return floats(self.score_path.find(response_doc), self.score_path.text)
        return self._scores(response_doc)

    def _scores(self, response_doc: Doc) -> list[float]:
        raise PayloadError(f"{self.protocol} answers carry no score; set model.score.path")

    def labels(self, response_doc: Doc) -> list[list[str]]:
        """The output labels (or texts) of each row."""
        return [
            label_row(container[key], "labels")
            for container, key in self._label_slots(response_doc)
        ]

    def json_rows(self, response_doc: Doc) -> frozenset[int]:
        """The rows of `labels` whose texts the client parses as JSON: none but in chat."""
        return frozenset()

    def set_labels(self, response_doc: Doc, labels: list[list[str]]) -> None:
        """Write back each row's labels (after suppression), in the original's form."""
        slots = self._label_slots(response_doc)
        if len(slots) != len(labels):
            raise PayloadError(f"{len(labels)} label rows for {len(slots)} in the answer")
        for (container, key), row in zip(slots, labels, strict=True):
            container[key] = label_value(container[key], row)

    def _label_slots(self, response_doc: Doc) -> list[Slot]:
        if self.labels_path is None:
            raise PayloadError(f"{self.protocol} answers: set labels.path or labels.output")
        return self.labels_path.slots(response_doc)

    def annotate(
        self, response_doc: Doc, decisions: list[int], thresholds: list[float | str]
    ) -> None:
        """Add the decisions and thresholds (a mixed rule as its label) to the answer."""
        if not isinstance(response_doc, dict):
            raise PayloadError("cannot annotate an answer that is not a JSON object")
        response_doc["guardproxy"] = {"decisions": decisions, "thresholds": thresholds}

    def rewrite(self, response_doc: Doc, decisions: list[int]) -> None:
        """Replace the model's own label with the decisions."""
        if self.label_output is None or not self.label_output.startswith("$"):
            raise PayloadError(f"{self.protocol} answers: decision.label_output must be a path")
        slots = JsonPath(self.label_output).slots(response_doc)
        if len(slots) != len(decisions):
            raise PayloadError(f"{self.label_output} matches {len(slots)} of {len(decisions)} rows")
        for (container, key), decision in zip(slots, decisions, strict=True):
            container[key] = decision


class JsonPathPayload(Payload):
    """Any JSON answer, read through configured JSON paths."""

    def __init__(self, model: ModelPolicy) -> None:
        super().__init__(model)
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
            raise PayloadError(f"request has nothing at {path.text}")
        return values
