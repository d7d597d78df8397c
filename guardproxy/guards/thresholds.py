"""DecisionGuard: each row's score against the threshold in force for its group."""

from __future__ import annotations

from ..exchange import Exchange, Verdict
from ..payloads import Payload, is_json_answer
from ..policy.models import DecisionSpec
from ..snapshots import Snapshot, ThresholdTable
from .base import GuardError


class DecisionGuard:
    """Decides score >= threshold per row and reports it in headers, the body, or the label."""

    name = "decision"

    def __init__(
        self,
        spec: DecisionSpec,
        payload: Payload,
        thresholds: Snapshot[ThresholdTable],
        missing_group: str = "*",
    ) -> None:
        self.on_error = spec.on_error
        self._payload = payload
        self._snapshot = thresholds
        self._static = dict(spec.per_group)
        self._default = spec.threshold
        self._annotate = spec.annotate
        self._missing = missing_group

    def threshold(self, region: str, group: str, key: str) -> float:
        """The threshold for (region, group); a learned rule wins over the policy's."""
        rule = self._snapshot.current.rule(region, group)
        if rule is not None:
            return rule.threshold_for(key)
        return self._static.get(group, self._default)

    def _groups(self, ex: Exchange, rows: int) -> list[str]:
        groups = ex.groups or [self._missing]
        if len(groups) == rows:
            return groups
        if len(groups) == 1:
            return groups * rows
        raise GuardError(f"{len(groups)} groups for {rows} scores")

    async def on_request(self, ex: Exchange) -> None:
        """Nothing to do before the upstream answers."""

    async def on_response(self, ex: Exchange) -> None:
        """Decide every row, then record and report all of it at once."""
        if not is_json_answer(ex):
            return
        doc = ex.response_json()
        scores = self._payload.scores(doc)
        groups = self._groups(ex, len(scores))
        rid, region = ex.request_id, ex.region
        thresholds = [
            self.threshold(region, g, rid if i == 0 else f"{rid}:{i}") for i, g in enumerate(groups)
        ]
        decisions = [int(s >= t) for s, t in zip(scores, thresholds, strict=True)]
        self._report(ex, doc, decisions, thresholds)
        ex.verdicts.extend(map(Verdict, groups, scores, thresholds, decisions))

    def _report(self, ex: Exchange, doc: object, decisions: list[int], th: list[float]) -> None:
        if self._annotate == "body":
            self._payload.annotate(doc, decisions, th)
            ex.replace_response_json(doc)
        elif self._annotate == "rewrite":
            self._payload.rewrite(doc, decisions)
            ex.replace_response_json(doc)
        ex.annotations["X-Guard-Decision"] = ",".join(map(str, decisions))
        ex.annotations["X-Guard-Threshold"] = ",".join(f"{t:.4g}" for t in th)
        ex.annotations["X-Guard-Threshold-Version"] = self._snapshot.current.version
