"""Keep secrets out of logs, dead letters and error messages.

Which values are secret is the configuration's to say (``config.sensitive``,
``Settings.sensitive_values``); this module masks them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from pydantic import SecretStr

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s:]*:[^/@\s]*@", re.I)
MASK = "***"


def make_scrubber(secrets: Iterable[SecretStr | str | None]) -> Callable[[str], str]:
    """A function that masks every known secret, and credentials in any URL, in a text."""
    values = sorted(
        {s.get_secret_value() if isinstance(s, SecretStr) else s for s in secrets if s is not None}
        - {""},
        key=len,
        reverse=True,
    )
    # whsec_ secrets are used by their base64 part too; mask it on its own as well.
    values += [v.removeprefix("whsec_") for v in values if v.startswith("whsec_")]

    def scrub(text: str) -> str:
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
        return _URL_CREDENTIALS.sub(rf"\g<scheme>{MASK}@", text)

    return scrub
