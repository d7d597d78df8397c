"""What the tests of LLM APIs through a running proxy share: a chat model's policies."""

from __future__ import annotations

WITHHELD = "withheld by policy"
# A chat model that blocks one term; region `suppress` masks it instead.
POLICIES = {
    "default.yaml": f"""
region: default
models: [{{name: chat, protocol: openai}}]
labels: {{deny: [gorilla], action: block, block: {{message: "{WITHHELD}"}}}}
""",
    "suppress.yaml": "region: suppress\nextends: default\nlabels: {action: suppress}\n",
    "strict.yaml": "region: strict\nextends: default\nlabels: {on_error: fail_closed}\n",
}
TOOL = "<tool>"  # in a test's pieces: the rest of the piece is a piece of a tool call's input
BROKEN = "<broken>"  # in a test's pieces: an event whose data is not JSON
