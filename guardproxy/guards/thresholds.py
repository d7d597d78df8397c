"""DecisionGuard: each row's score against the threshold in force for its group."""

from __future__ import annotations

from guardproxy.guards.draws import THRESHOLD, Draws
from guardproxy.guards.exchange import Exchange, Verdict, is_json_answer
from guardproxy.guards.subjects import Subjects
from guardproxy.payloads import Payload
from guardproxy.payloads.errors import PayloadError
from guardproxy.policy.models import DecisionSpec
from guardproxy.policy.routes import version_label
from guardproxy.policy.thresholds import Snapshot, ThresholdRule, ThresholdTable

Reported = float | str  # what a client is told: a threshold, or a mixed rule's label


class DecisionGuard:
    """Decides score >= threshold per row and reports it in headers, the body, or the label.

    A randomized rule (two thresholds mixed, as equalized odds needs) draws per row from a
    keyed hash of the row's subject; the client is told the rule, never which side it drew.
    """

    name = "decision"

    def __init__(
        self,
        spec: DecisionSpec,
        payload: Payload,
        thresholds: Snapshot[ThresholdTable],
        model: tuple[str, str],
        missing_group: str = "*",
        draws: Draws | None = None,
    ) -> None:
        self.on_error = spec.on_error
        self._model = model
        self._payload = payload
        self._snapshot = thresholds
        self._static = {group: ThresholdRule(value) for group, value in spec.per_group.items()}
        self._default = ThresholdRule(spec.threshold)
        self._annotate = spec.annotate
        self._missing = missing_group
        self._draws = draws or Draws()
        self._subjects = Subjects(spec.subject, payload)

    def rule(self, version: str, group: str) -> ThresholdRule:
        """The rule for a model version's group; a learned rule wins over the policy's."""
        rule = self._snapshot.current.rule((*self._model, version), group)
        if rule is not None:
            return rule
        return self._static.get(group, self._default)

    def _groups(self, ex: Exchange, rows: int) -> list[str]:
        groups = ex.groups or [self._missing]
        if len(groups) == rows:
            return groups
        if len(groups) == 1:
            return groups * rows
        raise PayloadError(f"{len(groups)} groups for {rows} scores")

    def decide(
        self, ex: Exchange, scores: list[float]
    ) -> tuple[list[str], list[ThresholdRule], list[float], list[int]]:
        """(groups, rules, thresholds, decisions) per row."""
        groups = self._groups(ex, len(scores))
        version = ex.version
        rules = [self.rule(version, group) for group in groups]
        if any(rule.randomized for rule in rules):  # only then is the request read for subjects
            draws = self._draws.uniform
            subjects = self._subjects.rows(ex, len(scores))
            thresholds = [
                r.threshold_for(draws(s, THRESHOLD)) for r, s in zip(rules, subjects, strict=True)
            ]
        else:
            thresholds = [rule.low for rule in rules]
        decisions = [1 if s >= t else 0 for s, t in zip(scores, thresholds, strict=True)]
        return groups, rules, thresholds, decisions

    async def on_request(self, ex: Exchange) -> None:
        """Nothing to do before the upstream answers."""

    async def on_response(self, ex: Exchange) -> None:
        """Decide every row, then record and report all of it at once."""
        if not is_json_answer(ex):
            if ex.streamed:  # a chat stream carries no score: said, counted, on_error applies
                self._unscored(ex)
                raise PayloadError("a streamed answer carries no score")
            return
        try:
            doc = ex.response_json()
            scores = self._payload.scores(doc)
        except (PayloadError, ValueError):
            self._unscored(ex)
            raise
        ex.version = version_label(self._payload.version(doc)) or ex.version
        groups, rules, thresholds, decisions = self.decide(ex, scores)
        self._report(ex, doc, decisions, rules)
        ex.verdicts.extend(map(Verdict, groups, scores, thresholds, decisions))

    @staticmethod
    def _unscored(ex: Exchange) -> None:
        # Loud, not silent: the client sees it, and the model's unscored count grows.
        ex.unscored = True
        ex.annotations["X-Guard-Decision"] = "unscored"

    def _report(
        self, ex: Exchange, doc: object, decisions: list[int], rules: list[ThresholdRule]
    ) -> None:
        if self._annotate == "body":
            reported: list[Reported] = [r.label if r.randomized else r.low for r in rules]
            self._payload.annotate(doc, decisions, reported)
            ex.replace_response_json(doc)
        elif self._annotate == "rewrite":
            self._payload.rewrite(doc, decisions)
            ex.replace_response_json(doc)
        annotations = ex.annotations
        annotations["X-Guard-Decision"] = ",".join(map(str, decisions))
        annotations["X-Guard-Threshold"] = ",".join(rule.label for rule in rules)
        annotations["X-Guard-Threshold-Version"] = self._snapshot.current.version
