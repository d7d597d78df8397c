"""DecisionGuard: each row's score against the threshold in force for its group."""

from __future__ import annotations

from typing import NamedTuple

from guardproxy.guards.draws import THRESHOLD, Draws
from guardproxy.guards.exchange import (
    MAX_ROWS,
    AmbiguousRequest,
    Exchange,
    Verdict,
    check_rows,
    is_json_answer,
    read_request,
)
from guardproxy.guards.subjects import Subjects
from guardproxy.payloads import Payload
from guardproxy.payloads.errors import PayloadError
from guardproxy.policy.models import DecisionSpec
from guardproxy.policy.routes import version_label
from guardproxy.policy.thresholds import Snapshot, ThresholdRule, ThresholdTable

Reported = float | str  # what a client is told: a threshold, or a mixed rule's label
MAX_RULES = 4096  # (version, group) rules kept per threshold table
# Rows whose decisions and thresholds the headers carry at most. Past it they would outgrow
# what proxies and clients accept (nginx buffers 4 KiB of an answer's headers by default,
# aiohttp takes 8 KiB a field, gRPC 8 KiB of metadata): the body carries them, as
# `annotate: body` puts them, and both headers say "body".
HEADER_ROWS = 256


def _decision(score: float, threshold: float) -> int:
    """1 (positive) when the score reaches the threshold, else 0."""
    return 1 if score >= threshold else 0


class _Rule(NamedTuple):
    """A group's rule with what is reported of it, built once per threshold table."""

    rule: ThresholdRule
    randomized: bool
    label: str


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
        max_rows: int = MAX_ROWS,
    ) -> None:
        self.on_error = spec.on_error
        self._max_rows = max_rows
        self._model = model
        self._payload = payload
        self._snapshot = thresholds
        # Learned thresholds count only while the policy adapts: once `adapt` is taken out,
        # the policy's own thresholds serve again (a learned one had outlived its policy).
        self._learned = spec.adapt is not None
        self._static = {group: ThresholdRule(value) for group, value in spec.per_group.items()}
        self._default = ThresholdRule(spec.threshold)
        self._annotate = spec.annotate
        self._missing = missing_group
        self._draws = draws or Draws()
        self._subjects = Subjects(spec.subject, payload)
        self._table: ThresholdTable | None = None
        self._rules: dict[tuple[str, str], _Rule] = {}
        self._mixes: tuple[ThresholdTable | None, bool] = (None, False)

    def _rule_in(self, table: ThresholdTable, version: str, group: str) -> _Rule:
        # Rules, labels and what body annotations report are built once per threshold table
        # and (version, group), not per row: a table is immutable, a new one is a new object.
        if table is not self._table:
            self._table, self._rules = table, {}
        found = self._rules.get((version, group))
        if found is None:
            rule = table.rule((*self._model, version), group) if self._learned else None
            if rule is None:
                rule = self._static.get(group, self._default)
            found = _Rule(rule, rule.randomized, rule.label)
            if len(self._rules) >= MAX_RULES:  # bounded: versions come from the model's answers
                self._rules.clear()
            self._rules[(version, group)] = found
        return found

    def _groups(self, ex: Exchange, rows: int) -> list[str]:
        groups = ex.groups or [self._missing]
        if len(groups) == rows:
            return groups
        if len(groups) == 1:
            return groups * rows
        raise AmbiguousRequest(f"the request names {len(groups)} groups for {rows} scores")

    def _decide(
        self, ex: Exchange, scores: list[float], table: ThresholdTable
    ) -> tuple[list[str], list[_Rule], list[float], list[int]]:
        groups = self._groups(ex, len(scores))
        version, rule_in = ex.version, self._rule_in
        rules: list[_Rule] = []
        thresholds: list[float] = []
        randomized = False
        for group in groups:  # one loop, not comprehensions: most requests are one row
            rule = rule_in(table, version, group)
            rules.append(rule)
            thresholds.append(rule.rule.low)
            randomized = randomized or rule.randomized
        if randomized:  # only then is the request read for subjects
            draws = self._draws.uniform
            subjects = self._subjects.rows(ex, len(scores))
            thresholds = [
                r.rule.threshold_for(draws(s, THRESHOLD))
                for r, s in zip(rules, subjects, strict=True)
            ]
        # map, not a comprehension over zip(strict=True): both cost more than one row's work.
        decisions = list(map(_decision, scores, thresholds))
        return groups, rules, thresholds, decisions

    def _may_draw(self) -> bool:
        """Whether a learned rule of this model mixes two thresholds (a draw reads the row)."""
        if not self._learned:  # only learned rules mix, and they serve only while adapting
            return False
        table = self._snapshot.current
        seen, mixes = self._mixes
        if table is not seen:  # once per table: a table is immutable, a new one a new object
            model = self._model
            mixes = any(r.randomized for key, r in table.rules.items() if key[:2] == model)
            self._mixes = (table, mixes)
        return mixes

    async def on_request(self, ex: Exchange) -> None:
        """Read the request now when a draw may read it: one the guards cannot read (or
        that repeats a key) is refused before the model is asked, not drawn for at random."""
        if self._may_draw() and self._subjects.from_content(ex):
            read_request(ex, whole=True)

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
        check_rows(len(scores), self._max_rows)
        ex.version = version_label(self._payload.version(doc)) or ex.version
        table = self._snapshot.current
        groups, rules, thresholds, decisions = self._decide(ex, scores, table)
        self._report(ex, doc, decisions, rules, table.version)
        ex.verdicts.extend(map(Verdict, groups, scores, thresholds, decisions))

    @staticmethod
    def _unscored(ex: Exchange) -> None:
        # Loud, not silent: the client sees it, and the model's unscored count grows.
        ex.unscored = True
        ex.annotations["X-Guard-Decision"] = "unscored"

    def _report(
        self, ex: Exchange, doc: object, decisions: list[int], rules: list[_Rule], version: str
    ) -> None:
        if self._annotate == "rewrite":
            self._payload.rewrite(doc, decisions)
        large = len(rules) > HEADER_ROWS
        in_body = self._annotate == "body"
        if in_body or large:
            reported: list[Reported] = [r.label if r.randomized else r.rule.low for r in rules]
            try:
                self._payload.annotate(doc, decisions, reported)
                in_body = True
            except PayloadError:  # an answer with no room for them: the headers, as before
                if in_body:
                    raise
        if in_body or self._annotate == "rewrite":
            ex.replace_response_json(doc)
        annotations = ex.annotations
        if len(rules) == 1:  # the usual single row: no joins
            annotations["X-Guard-Decision"] = "1" if decisions[0] else "0"
            annotations["X-Guard-Threshold"] = rules[0].label
        elif large and in_body:
            annotations["X-Guard-Decision"] = annotations["X-Guard-Threshold"] = "body"
        else:
            annotations["X-Guard-Decision"] = ",".join(map(str, decisions))
            annotations["X-Guard-Threshold"] = ",".join([r.label for r in rules])
        annotations["X-Guard-Threshold-Version"] = version
