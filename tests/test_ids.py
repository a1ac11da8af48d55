"""Session ids: opaque, passed through unchanged, anything else refused with a reason."""

from __future__ import annotations

import pytest

from worker.errors import InvalidSessionId
from worker.ids import check_session_id


@pytest.mark.parametrize(
    "value",
    ["ses_01HZY3V8Q4KXN2T5R7W9A1B3C4", "01HZY3V8Q4KXN2T5R7W9A1B3C4", "a", "A-b_9", "x" * 128],
)
def test_valid_ids_pass_unchanged(value: str) -> None:
    assert check_session_id(value) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("x" * 129, "129 characters"),
        ("../admin", "outside"),
        ("ses_1/../../x", "outside"),
        ("ses 1", "outside"),
        ("ses_1?x=1", "outside"),
        ("ses_%2F", "outside"),
        ("séance", "outside"),
        ("ses_1\n", "outside"),
        (12345, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_invalid_ids_are_refused_with_a_reason(value: object, reason: str) -> None:
    with pytest.raises(InvalidSessionId, match=reason):
        check_session_id(value)
