"""The region's policy applied to Open Inference Protocol gRPC calls, as the data port applies it.

For each ModelInfer call (and each ModelStreamInfer message): the region (the pod's, or a
trusted metadata key's), the model by its OIP name, the model's breaker, then its guard chain
over an Exchange built from the decoded documents. Decisions travel as response metadata
(unary) or answer parameters (stream); a block is the gRPC status `status_for` gives its HTTP
status; every finished call becomes the same Observation the HTTP path hands its observers.

Breaker: `reject` and `fallback` both refuse with UNAVAILABLE and a retry delay (a fallback
upstream is an HTTP server; gRPC calls have none); `flag` serves and marks. UNAVAILABLE,
INTERNAL and DEADLINE_EXCEEDED count as the model's failures, a deadline only once the call
ran longer than the breaker's `slow_call` (a client's own short deadline says nothing about
the model); a cancelled call is not counted.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import grpc

from ..breaker.board import BreakerBoard
from ..breaker.state import CLOSED, Admission, CircuitBreaker
from ..guards.base import GuardChain
from ..guards.exchange import Exchange, Refused, Reply, TooManyRows
from ..hotpath.admission import Admitted, BreakerCall, mark
from ..hotpath.observation import Observation, hand_over, observe
from ..hotpath.trust import AMBIGUOUS, AMBIGUOUS_REGION, trusted_value
from ..payloads.errors import TooManyValues
from ..payloads.tensors import TensorError
from ..policy.table import CompiledModel, CompiledPolicy, PolicyTable
from ..policy.thresholds import Snapshot
from .calls import REQUEST_ID, headers_of, infer_path, model_of, request_id_of
from .documents import MessageRecord, request_document
from .hooks import Allow, Failure, InferCall, Metadata, Refuse, http_status, status_for
from .slots import UNGUARDED
from .stats import GuardStats

__all__ = ["FAILURES", "PolicyHook"]

log = logging.getLogger("guardproxy.grpc")

Observer = Callable[[Observation], None]
SERVICE = "/inference.GRPCInferenceService/"
UNGUARDED_MODEL = "no guarded model serves this model"  # unguarded.action: refuse
UNGUARDED_METHOD = "no guarded model serves this method"
# A method's path as protobuf names it: `allow: ["/svc/**"]` must not pass `/svc/../other/M`
# to a model server (or a proxy before it) that resolves dot segments.
_METHOD = re.compile(r"/[A-Za-z_][A-Za-z0-9_.]*/[A-Za-z_][A-Za-z0-9_]*")
# The upstream statuses that count against the model's breaker, as the HTTP status it records.
FAILURES = {
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


@dataclass(slots=True)
class _Pending:
    """A call the hook let through, until its answer (or failure) arrives."""

    request_id: str
    ex: Exchange | None = None  # None: unguarded, only the request id to echo
    model: CompiledModel | None = None
    breaker: BreakerCall | None = None
    began: float = 0.0
    answers: int = 0  # a decoupled model's answers so far


class PolicyHook:
    """An `InferHook` that guards OIP calls with the policy of the call's region and model."""

    def __init__(
        self,
        policies: Snapshot[PolicyTable],
        breakers: BreakerBoard,
        observers: Sequence[Observer] = (),
        region_key: str | None = None,
    ) -> None:
        self.policies = policies
        self.breakers = breakers
        self.observers = tuple(observers)
        self.region_key = region_key.lower() if region_key else None
        self.stats = GuardStats()
        self._pending: dict[InferCall, _Pending] = {}

    def status(self) -> dict[str, Any]:
        """Counters for /status, and the calls waiting for their answer."""
        return {**self.stats.snapshot(), "pending": len(self._pending)}

    async def on_request(self, call: InferCall) -> Refuse | None:
        """Resolve region and model, admit through the breaker, run the request guards."""
        stats = self.stats
        stats.calls += 1
        request_id, replaced = request_id_of(call)
        stats.request_ids_replaced += replaced
        region = self._region(call.metadata)
        if region is AMBIGUOUS:
            stats.refused["ambiguous_region"] += 1
            return Refuse(grpc.StatusCode.INVALID_ARGUMENT, AMBIGUOUS_REGION)
        policy, known = self.policies.current.resolve(region)
        stats.unknown_region += not known
        model = model_of(policy, call.model_name, call.model_version)
        reason = _unguarded(model)
        if not reason:
            return await self._guard(call, request_id, cast(CompiledModel, model))
        if reason != "no_guards" and not _passes(policy, SERVICE + call.method, call):
            stats.refused["unguarded"] += 1
            return Refuse(grpc.StatusCode.NOT_FOUND, UNGUARDED_MODEL, ((REQUEST_ID, request_id),))
        stats.unguarded[reason] += 1
        self._pending[call] = _Pending(request_id)
        return None

    def refuses(self, method: str, metadata: Metadata) -> Refuse | None:
        """Any other method: refused (counted) where the region refuses what no model guards,
        unless its `unguarded.allow` names the method's path; or when the region is ambiguous."""
        region = self._region(metadata)
        if region is AMBIGUOUS:
            self.stats.refused["ambiguous_region"] += 1
            return Refuse(grpc.StatusCode.INVALID_ARGUMENT, AMBIGUOUS_REGION)
        policy, _ = self.policies.current.resolve(region)
        if _passes(policy, method):
            return None
        self.stats.refused["unguarded"] += 1
        return Refuse(grpc.StatusCode.NOT_FOUND, UNGUARDED_METHOD)

    def slot_key(self, name: str, version: str, metadata: Metadata) -> str:
        """The upstream slot key of a call to this model: region/model when the model is
        guarded, as the HTTP path's pool key, else the one key of all unguarded calls."""
        region = self._region(metadata)
        policy, _ = self.policies.current.resolve(None if region is AMBIGUOUS else region)
        model = model_of(policy, name, version)
        if model is None or _unguarded(model):
            return UNGUARDED
        return f"{model.region}/{model.name}"

    def _region(self, metadata: Metadata) -> str | None:
        """The region the trusted key names, if the operator named one (AMBIGUOUS when it
        names more than one)."""
        if self.region_key is None:
            return None
        return trusted_value([str(v) for name, v in metadata if name == self.region_key])

    async def _guard(self, call: InferCall, request_id: str, model: CompiledModel) -> Refuse | None:
        breaker = self.breakers.get(model)
        admission = breaker.admit()
        if admission is Admission.OPEN and breaker.open_action != "flag":
            self.breakers.rejected += 1
            self.stats.refused["breaker_" + breaker.open_action] += 1
            return _breaker_open(request_id, model, breaker)
        self.stats.guarded += 1
        outcome = BreakerCall(Admitted(breaker, admission, False))
        try:
            return await self._screen(call, request_id, model, outcome)
        finally:
            if call not in self._pending:  # refused, blocked or broken before the upstream
                outcome.release()  # a probe that never reached the model frees its slot

    async def _screen(
        self, call: InferCall, request_id: str, model: CompiledModel, outcome: BreakerCall
    ) -> Refuse | None:
        """Run the request guards; None (the call is pending) to go upstream, or a refusal."""
        breaker = outcome.admitted.breaker
        chain = cast(GuardChain, model.chain)
        document, problem, too_many = call.request, "", None
        try:
            document = self._document(call, chain)
        except TooManyValues as exc:  # refused before any of it was decoded
            too_many = TooManyRows(str(exc))
        except TensorError as exc:  # the client's doing: the guards find no inputs, as over HTTP
            problem = f"request tensors: {exc}"
        record = MessageRecord(call.message) if call.message is not None else None
        ex = Exchange.from_documents(
            request_id, model.region, model.name, call.method, SERVICE + call.method,
            headers_of(call.metadata), document, time.perf_counter(), record,
        )  # fmt: skip
        if too_many is not None:
            return self._refused(too_many, ex, model)
        if problem:
            self.stats.undecodable += 1
            ex.errors.append(problem)
            ex.request_errors += 1
        if breaker.state is not CLOSED:
            mark(ex, breaker, outcome.admitted.admission, False)
        try:
            await chain.on_request(ex)
        except Refused as exc:  # refused as over HTTP: nothing observed
            return self._refused(exc, ex, model)
        if ex.reply is not None:
            await chain.observe(ex)
            return self._blocked(ex, model, outcome.admitted)
        self._pending[call] = _Pending(request_id, ex, model, outcome, time.perf_counter())
        return None

    @staticmethod
    def _document(call: InferCall, chain: GuardChain) -> dict[str, Any]:
        """The request with the tensors the policy reads decoded, the rest described."""
        reads = chain.binary  # an OIP model's: the inputs its policy reads, the rows it takes
        if call.message is None or reads is None:
            return call.request
        return request_document(call.message, reads.inputs, reads.max_rows)

    def request_id(self, call: InferCall) -> str | None:
        """The id of an admitted call: echoed to the client, sent upstream, joined by labels."""
        pending = self._pending.get(call)
        return None if pending is None else pending.request_id

    def reads_answer(self, call: InferCall) -> bool:
        """Only a guarded call's answer is decoded: an unguarded one only echoes its id."""
        pending = self._pending.get(call)
        return pending is not None and pending.ex is not None

    async def on_response(
        self, call: InferCall, response: dict[str, Any], final: bool = True
    ) -> Allow | Refuse:
        """Settle the breaker, run the answer guards, observe; the decision as metadata.

        Each answer of a decoupled model's is guarded and observed as an exchange of its own;
        an empty last answer (Triton's end marker) only ends the call.
        """
        pending = self._pending.pop(call, None) if final else self._pending.get(call)
        if pending is None:  # the proxy pairs every answer it passes: a hook used otherwise
            self.stats.unpaired += 1
            return Allow()
        ex, model, breaker = pending.ex, pending.model, pending.breaker
        if ex is None or model is None or breaker is None:
            return Allow(((REQUEST_ID, pending.request_id),))
        pending.answers += 1
        if final and pending.answers > 1 and not response.get("outputs"):
            return Allow(((REQUEST_ID, pending.request_id),))
        if not final or pending.answers > 1:
            ex = _fresh(ex)  # the request's exchange, before any answer's guards ran on it
        ex.upstream_seconds = time.perf_counter() - pending.began
        ex.set_response_document(200, response)
        breaker.settle(200, ex.upstream_seconds)
        try:
            await cast(GuardChain, model.chain).on_response(ex)
        except Refused as exc:
            return self._refused(exc, ex, model)
        if ex.reply is not None:
            return self._blocked(ex, model, breaker.admitted)
        self._observe(ex, model, breaker.admitted)
        changed = ex.response_json() if ex.response_changed else None
        return Allow(_metadata(ex, model), changed)

    async def on_failure(self, call: InferCall, failure: Failure) -> Metadata:
        """No answer to guard: count the upstream's failure, observe, echo the ids."""
        pending = self._pending.pop(call, None)
        if pending is None:
            return ()
        ex, model, breaker = pending.ex, pending.model, pending.breaker
        if ex is None or model is None or breaker is None:
            return ((REQUEST_ID, pending.request_id),)
        self.stats.failures[failure.code.name] += 1
        try:
            if failure.code is grpc.StatusCode.CANCELLED:
                return ()  # the client left (or the stream ended first): nobody to answer
            seconds = time.perf_counter() - pending.began
            ex.upstream_seconds = seconds
            self._record_failure(ex, failure, breaker, seconds)
            # an errored exchange is sampled (up to max_always a window)
            await cast(GuardChain, model.chain).observe(ex)
            self._observe(ex, model, breaker.admitted)
            return _metadata(ex, model)
        finally:
            breaker.release()  # no outcome counted (cancelled, the client's deadline): slot back

    def _record_failure(
        self, ex: Exchange, failure: Failure, breaker: BreakerCall, seconds: float
    ) -> None:
        if failure.code is grpc.StatusCode.OK:  # answered, but not a ModelInferResponse we read
            ex.status, ex.unscored = 200, True
            ex.errors.append("the answer could not be decoded")
            breaker.settle(200, seconds)
            return
        ex.status = http_status(failure.code)
        ex.errors.append(f"upstream: {failure.code.name}")
        deadline = failure.code is grpc.StatusCode.DEADLINE_EXCEEDED
        if deadline and seconds < breaker.admitted.breaker.spec.slow_call:
            return  # the client's own deadline, shorter than a slow call: not the model's fault
        # Only FAILURES count against the model; any other status is an answer (e.g. 400).
        breaker.settle(FAILURES.get(failure.code) or min(ex.status, 499), seconds)

    def _blocked(self, ex: Exchange, model: CompiledModel, admitted: Admitted) -> Refuse:
        reply: Reply = ex.reply  # type: ignore[assignment]
        self.stats.blocked += 1
        ex.status = reply.status
        self._observe(ex, model, admitted)
        return Refuse(status_for(reply.status), reply.error, _metadata(ex, model))

    def _refused(self, exc: Refused, ex: Exchange, model: CompiledModel) -> Refuse:
        self.stats.refused[exc.kind] += 1
        return Refuse(status_for(exc.status), exc.message, _metadata(ex, model))

    def _observe(self, ex: Exchange, model: CompiledModel, admitted: Admitted) -> None:
        """Hand the observers the immutable record of the finished call."""
        hand_over(observe(ex, model, admitted), self.observers, self.stats.observer_errors)


def _unguarded(model: CompiledModel | None) -> str:
    """Why a call passes unguarded ("" when it is guarded)."""
    if model is None:
        return "undeclared_model"
    if model.spec.protocol != "kserve_v2":
        return "not_oip"
    return "no_guards" if model.chain is None else ""


def _passes(policy: CompiledPolicy, method: str, call: InferCall | None = None) -> bool:
    """Whether a call no guarded model takes goes on: its region passes such calls, or the
    region's `unguarded.allow` names the method's path or, for an inference, the model's
    equivalent HTTP path (`/v2/models/<name>/infer`)."""
    allowed = policy.allowed
    if allowed is None:
        return True
    if _METHOD.fullmatch(method) and allowed.matches(method):
        return True
    path = infer_path(call.model_name, call.model_version) if call is not None else None
    return path is not None and allowed.matches(path)


def _fresh(ex: Exchange) -> Exchange:
    """A copy of a request's exchange for one more answer: what the answer guards change
    (verdicts, flags, errors, annotations, the reply) starts from the request's."""
    return replace(
        ex, verdicts=list(ex.verdicts), flags=list(ex.flags), errors=list(ex.errors),
        annotations=dict(ex.annotations), groups=list(ex.groups),
    )  # fmt: skip


def _metadata(ex: Exchange, model: CompiledModel) -> tuple[tuple[str, str], ...]:
    """The response metadata of a guarded call: the X-Guard-* headers, lower case."""
    return (
        (REQUEST_ID, ex.request_id),
        ("x-guard-region", model.region),
        ("x-guard-model", model.name),
        ("x-guard-policy", model.policy_version),
        *((name.lower(), value) for name, value in ex.annotations.items()),
    )


def _breaker_open(request_id: str, model: CompiledModel, breaker: CircuitBreaker) -> Refuse:
    """UNAVAILABLE while the breaker is open, with the retry delay of a 503's Retry-After."""
    metadata = (
        (REQUEST_ID, request_id),
        ("x-guard-region", model.region),
        ("x-guard-model", model.name),
        ("x-guard-policy", model.policy_version),
        ("x-guard-breaker", breaker.state_name),
    )
    return Refuse(
        grpc.StatusCode.UNAVAILABLE, "circuit breaker open", metadata, breaker.retry_after()
    )
