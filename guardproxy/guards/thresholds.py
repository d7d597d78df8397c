"""DecisionGuard: each row's score against the threshold in force for its group."""

from __future__ import annotations

from guardproxy.guards.exchange import Exchange, Verdict, is_json_answer
from guardproxy.payloads import Payload
from guardproxy.payloads.errors import PayloadError
from guardproxy.policy.models import DecisionSpec
from guardproxy.policy.routes import version_label
from guardproxy.policy.thresholds import Snapshot, ThresholdTable

_FORMAT = "{:.4g}".format


class DecisionGuard:
    """Decides score >= threshold per row and reports it in headers, the body, or the label."""

    name = "decision"

    def __init__(
        self,
        spec: DecisionSpec,
        payload: Payload,
        thresholds: Snapshot[ThresholdTable],
        model: tuple[str, str],
        missing_group: str = "*",
    ) -> None:
        self.on_error = spec.on_error
        self._model = model
        self._payload = payload
        self._snapshot = thresholds
        self._static = dict(spec.per_group)
        self._default = spec.threshold
        self._annotate = spec.annotate
        self._missing = missing_group

    def threshold(self, version: str, group: str, key: str) -> float:
        """The threshold for a model version's group; a learned rule wins over the policy's."""
        rule = self._snapshot.current.rule((*self._model, version), group)
        if rule is not None:
            return rule.threshold_for(key)
        return self._static.get(group, self._default)

    def _groups(self, ex: Exchange, rows: int) -> list[str]:
        groups = ex.groups or [self._missing]
        if len(groups) == rows:
            return groups
        if len(groups) == 1:
            return groups * rows
        raise PayloadError(f"{len(groups)} groups for {rows} scores")

    def decide(self, ex: Exchange, scores: list[float]) -> tuple[list[str], list[float], list[int]]:
        """(groups, thresholds, decisions) per row; row i > 0 draws with "<id>:<i>"."""
        groups = self._groups(ex, len(scores))
        rid, version, threshold = ex.request_id, ex.version, self.threshold
        if len(scores) == 1:  # the common case, kept cheap
            t = threshold(version, groups[0], rid)
            return groups, [t], [1 if scores[0] >= t else 0]
        thresholds = [
            threshold(version, g, f"{rid}:{i}" if i else rid) for i, g in enumerate(groups)
        ]
        return (
            groups,
            thresholds,
            [1 if s >= t else 0 for s, t in zip(scores, thresholds, strict=True)],
        )

    async def on_request(self, ex: Exchange) -> None:
        """Nothing to do before the upstream answers."""

    async def on_response(self, ex: Exchange) -> None:
        """Decide every row, then record and report all of it at once."""
        if not is_json_answer(ex):
            return
        try:
            doc = ex.response_json()
            scores = self._payload.scores(doc)
        except (PayloadError, ValueError):
            # Loud, not silent: the client sees it, and the model's unscored count grows.
            ex.unscored = True
            ex.annotations["X-Guard-Decision"] = "unscored"
            raise
        ex.version = version_label(self._payload.version(doc)) or ex.version
        groups, thresholds, decisions = self.decide(ex, scores)
        self._report(ex, doc, decisions, thresholds)
        ex.verdicts.extend(map(Verdict, groups, scores, thresholds, decisions))

    def _report(self, ex: Exchange, doc: object, decisions: list[int], th: list[float]) -> None:
        if self._annotate == "body":
            self._payload.annotate(doc, decisions, th)
            ex.replace_response_json(doc)
        elif self._annotate == "rewrite":
            self._payload.rewrite(doc, decisions)
            ex.replace_response_json(doc)
        annotations = ex.annotations
        annotations["X-Guard-Decision"] = ",".join(map(str, decisions))
        annotations["X-Guard-Threshold"] = ",".join(map(_FORMAT, th))
        annotations["X-Guard-Threshold-Version"] = self._snapshot.current.version
