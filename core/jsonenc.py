"""JSON encoders built once, for the hot paths that encode small values many times.

``json.dumps`` with any option, and ``JSONEncoder.encode`` itself, build a new
C encoder (and a dict of ids for the circular check) on every call: two
thirds of the cost of encoding a small event or a session row
(docs/explanation/append-path.md). An encoder from :func:`encoder` builds it
once and spells every value exactly as ``json.dumps`` with the same options.
Without the shared dict it is safe on every thread; a cycle ends in
``RecursionError``, turned back into the ``ValueError`` ``json.dumps`` raises.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def encoder(
    *,
    sort_keys: bool = False,
    ensure_ascii: bool = True,
    separators: tuple[str, str] = (", ", ": "),
) -> Callable[[Any], str]:
    """``lambda value: json.dumps(value, sort_keys=..., ensure_ascii=..., separators=...)``."""
    item_separator, key_separator = separators
    standard = json.JSONEncoder(
        sort_keys=sort_keys, ensure_ascii=ensure_ascii, separators=separators
    )
    make: Any = getattr(json.encoder, "c_make_encoder", None)  # untyped in typeshed
    if make is None:  # pragma: no cover - CPython always has the C encoder
        return standard.encode
    strings = (
        json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    )
    built = make(
        None, standard.default, strings, None, key_separator, item_separator, sort_keys, False, True
    )

    def encode(value: Any) -> str:
        try:
            return "".join(built(value, 0))
        except RecursionError:
            raise ValueError("circular reference or nesting too deep to encode") from None

    return encode
