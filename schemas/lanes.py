"""Priority lanes, deadlines and rate limits on the data plane (issue 29): the names the
gateway, the workers and the model server share on the wire.

A request is in the `interactive` lane (someone waits) or the `batch` lane (ingestion),
named by `PRIORITY_HEADER`; `TIMEOUT_HEADER` is the seconds its caller waits. The model
server restates these names (model_server/lanes.py: it imports no other package);
tests/model_server/test_wire_contract.py keeps the two equal.
"""

from typing import Literal

PRIORITY_HEADER = "X-Greenroom-Priority"
TIMEOUT_HEADER = "X-Request-Timeout"
TOKENS_HEADER = "X-Greenroom-Tokens"
Lane = Literal["interactive", "batch"]
LANES: tuple[Lane, ...] = ("interactive", "batch")
MAX_TIMEOUT_S = 86_400.0


def effective_lane(key_lane: Lane, asked: str | None) -> Lane:
    """The lane a request runs in: its key's lane, lowered to `batch` when the caller asks
    (`asked`, the header's value, already checked). A batch-lane key cannot raise itself to
    interactive: the lane is the key owner's promise to let queries go first, and a key
    that could lift it would make the promise no promise."""
    if key_lane == "batch" or asked == "batch":
        return "batch"
    return "interactive"
