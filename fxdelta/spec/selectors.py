"""Name-based addressing: one grammar to pick modules (or parameters) by dotted name.

- ``"fc2"``, ``"attention.output.dense"``: tail match on ``.`` boundaries;
- ``"[r]<regex>"`` or ``"re:<regex>"``: the regex must match the *full* dotted name;
- a full dotted path is just the longest possible tail.

A selector that matches nothing is always an error naming the closest names: a typo must never
turn a delta into a silent no-op.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence

from fxdelta.core.errors import SelectorError

_REGEX_PREFIXES = ("[r]", "re:")


def _regex_body(pattern: str) -> str | None:
    for prefix in _REGEX_PREFIXES:
        if pattern.startswith(prefix):
            return pattern[len(prefix) :]
    return None


def compile_pattern(pattern: str):
    """Return a predicate ``name -> bool`` for one selector; bad regexes raise ``SelectorError``."""
    if not isinstance(pattern, str) or not pattern:
        raise SelectorError(f"a module selector must be a non-empty string, got {pattern!r}")
    body = _regex_body(pattern)
    if body is None:
        suffix = "." + pattern
        return lambda name: name == pattern or name.endswith(suffix)
    try:
        regex = re.compile(body)
    except re.error as e:
        raise SelectorError(f"selector {pattern!r} is not a valid regex: {e}") from e
    return lambda name: regex.fullmatch(name) is not None


def matches(pattern: str, name: str) -> bool:
    """Whether ``pattern`` selects the dotted ``name``."""
    return compile_pattern(pattern)(name)


def closest_names(pattern: str, names: Iterable[str], n: int = 5) -> list[str]:
    """The ``n`` names a user most likely meant, compared tail to tail.

    A tail selector such as ``"fc3"`` is compared with the tails of the same depth (``"fc2"``),
    so the suggestion is something the user can paste back.
    """
    body = _regex_body(pattern)
    probe = body if body is not None else pattern
    depth = probe.count(".") + 1
    tails: dict[str, None] = {}
    for name in names:
        if name:
            tails.setdefault(".".join(name.split(".")[-depth:]), None)
    return difflib.get_close_matches(probe, list(tails), n=n, cutoff=0.0)


def select(
    names: Sequence[str],
    patterns: Sequence[str],
    exclude: Sequence[str] = (),
    *,
    what: str = "module",
) -> list[str]:
    """Names (in their original order) matched by any of ``patterns`` and none of ``exclude``.

    Every pattern, included or excluded, must match at least one name.
    """
    if isinstance(patterns, str) or isinstance(exclude, str):
        raise SelectorError(f"{what} selectors must be a list of strings, got a bare string; wrap it: [{patterns!r}]")
    if not patterns:
        raise SelectorError(f"no {what} selectors given: pass at least one name or pattern")
    chosen = _matching(names, patterns, what)
    dropped = _matching(names, exclude, what) if exclude else set()
    selected = [n for n in names if n in chosen and n not in dropped]
    if not selected:
        raise SelectorError(
            f"the {what} selectors {list(patterns)} minus exclusions {list(exclude)} leave nothing to patch"
        )
    return selected


def _matching(names: Sequence[str], patterns: Sequence[str], what: str) -> set[str]:
    hit: set[str] = set()
    for pattern in patterns:
        predicate = compile_pattern(pattern)
        found = {n for n in names if n and predicate(n)}
        if not found:
            raise SelectorError(
                f"{what} selector {pattern!r} matches no {what} of the backbone; "
                f"closest names: {closest_names(pattern, names)}"
            )
        hit |= found
    return hit
