"""GroupGuard: groups from a header, an input feature or a path; telemetry forms."""

from __future__ import annotations

import pytest

from guardproxy.guards.chain import GuardContext
from guardproxy.guards.exchange import AmbiguousRequest, TooManyRows
from guardproxy.guards.groups import GroupGuard, telemetry_group
from guardproxy.payloads import compile_payload
from tests.guards.exchanges import chain, exchange, policy, v2_request

GROUPS = {"values": ["female", "male"]}


async def groups_of(attribute: dict[str, object], ex_kwargs: dict[str, object]) -> list[str]:
    guards = chain(policy(groups={**GROUPS, "attribute": attribute}), GuardContext(), "v1")
    ex = exchange(**ex_kwargs)  # type: ignore[arg-type]
    await guards.on_request(ex)
    assert guards.errors == {}
    return ex.groups


TRUSTED = {"header": "X-Group", "trusted": True}


async def test_group_from_header_with_other() -> None:
    got = await groups_of(TRUSTED, {"request": {}, "headers": {"x-group": "female"}})
    assert got == ["female"]
    assert await groups_of(TRUSTED, {"request": {}, "headers": {"X-Group": "x"}}) == ["other"]
    assert await groups_of(TRUSTED, {"request": {}}) == ["other"]


def test_a_group_header_needs_the_operator_to_trust_it() -> None:
    with pytest.raises(ValueError, match="set by the client"):
        policy(groups={**GROUPS, "attribute": {"header": "X-Group"}})
    with pytest.raises(ValueError, match="applies only to a header"):
        policy(groups={**GROUPS, "attribute": {"input": "sex", "trusted": True}})


async def test_group_per_row_from_input() -> None:
    request = v2_request("female", "male", "nonbinary")
    assert await groups_of({"input": "sex"}, {"request": request}) == ["female", "male", "other"]


async def test_group_from_jsonpath() -> None:
    request = {"parameters": {"group": "male"}, "inputs": []}
    assert await groups_of({"jsonpath": "$.parameters.group"}, {"request": request}) == ["male"]


async def test_unreadable_request_counts_and_leaves_groups_empty() -> None:
    guards = chain(policy(groups={**GROUPS, "attribute": {"input": "sex"}}), GuardContext(), "v1")
    ex = exchange({"inputs": [{"name": "age", "shape": [1], "data": [3]}]})
    await guards.on_request(ex)
    assert guards.errors == {"groups": 1}
    assert ex.groups == [] and ex.reply is None
    assert "no input or column named 'sex'" in ex.errors[0]


def test_telemetry_group_modes() -> None:
    assert telemetry_group("female", "label") == "female"
    hashed = telemetry_group("female", "hashed")
    assert hashed == telemetry_group("female", "hashed") and len(hashed) == 8
    assert hashed != telemetry_group("male", "hashed")
    assert telemetry_group("female", "none") == ""


@pytest.mark.parametrize("value", [True, 1])
async def test_non_string_values_compare_as_text(value: object) -> None:
    guards = chain(
        policy(groups={"values": ["true", "1"], "attribute": {"jsonpath": "$.g"}}),
        GuardContext(),
        "v1",
    )
    ex = exchange({"g": value})
    await guards.on_request(ex)
    assert ex.groups == [str(value).lower()]


async def test_a_path_group_over_the_row_limit_is_refused_counting_no_further() -> None:
    spec = policy(
        {"protocol": "jsonpath", "score": {"path": "$.scores[*]"}},
        groups={**GROUPS, "attribute": {"jsonpath": "$.rows[*].sex"}},
    )
    guards = chain(spec, GuardContext(max_rows=4))
    ex = exchange({"rows": [{"sex": "female"}] * 1000})
    with pytest.raises(TooManyRows, match="a batch of 5 rows is over the limit of 4"):
        await guards.on_request(ex)  # 5, not 1000: it stopped counting past the limit


class Rendered(dict[str, str]):
    """A group value that is an object, counting how often it is rendered as text."""

    renders = 0

    def __repr__(self) -> str:
        type(self).renders += 1
        return super().__repr__()

    __str__ = __repr__


OPENAI = {"protocol": "openai", "labels": {"deny": ["x"]}}


async def test_an_object_shared_by_every_row_maps_to_other_unrendered() -> None:
    # OpenAI gives each of n rows the same value: a 200 KB object was rendered n times.
    spec = policy(OPENAI, groups={**GROUPS, "attribute": {"input": "sex"}})
    assert spec.groups is not None
    payload = compile_payload(spec)
    guard = GroupGuard(spec.groups, payload)
    values = payload.feature({"metadata": {"sex": Rendered(k="x" * 1000)}, "n": 100}, "sex")
    Rendered.renders = 0
    assert [guard.group_of(v) for v in values] == ["other"] * 100
    assert Rendered.renders == 0
    scalars = [["female"], "male", None, 1.5, [True], True, b"female", ["female", "male"]]
    assert [guard.group_of(v) for v in scalars] == ["female", "male"] + ["other"] * 6


async def test_an_openai_n_past_the_limit_is_refused_as_too_many_rows() -> None:
    spec = policy(OPENAI, groups={**GROUPS, "attribute": {"input": "sex"}})
    guards = chain(spec, GuardContext(max_rows=4))
    request = {"model": "m", "messages": [], "metadata": {"sex": "female"}, "n": 20_000}
    with pytest.raises(TooManyRows, match="a batch of 20000 rows is over the limit of 4"):
        await guards.on_request(exchange(request))


MALE = '{"name":"sex","shape":[1],"datatype":"BYTES","data":["male"]}'
FEMALE = MALE.replace("male", "female")


@pytest.mark.parametrize(
    "body",
    [
        '{"inputs":[{"name":"sex","shape":[1],"datatype":"BYTES","data":["male"],'
        '"data":["female"]}]}',
        '{"inputs":[' + MALE + '],"inputs":[' + FEMALE + "]}",
        '{"inputs":[{"name":"sex","name":"race","shape":[1],"datatype":"BYTES","data":["male"]},'
        '{"name":"race","name":"sex","shape":[1],"datatype":"BYTES","data":["female"]}]}',
        '{"inputs":[{"name":"sex","shape":[1],"datatype":"BYTES","d\\u0061ta":["male"],'
        '"data":["female"]}]}',
    ],
    ids=["data twice", "inputs twice", "names swapped", "an escaped key"],
)
async def test_a_request_that_repeats_a_key_is_refused(body: str) -> None:
    # orjson keeps the last of a repeated key, RapidJSON (Triton) the first: the guards would
    # read female where the model reads male, and the client would choose its threshold.
    for attribute in ({"input": "sex"}, {"jsonpath": "$.inputs[?name=='sex'].data[0]"}):
        guards = chain(policy(groups={**GROUPS, "attribute": attribute}))
        ex = exchange(None)
        ex.body = body.encode()
        with pytest.raises(AmbiguousRequest, match="names a key more than once"):
            await guards.on_request(ex)
    honest = exchange(None)
    honest.body = ('{"inputs":[' + MALE + "]}").encode()
    await chain(policy(groups={**GROUPS, "attribute": {"input": "sex"}})).on_request(honest)
    assert honest.groups == ["male"]
