"""Name-based addressing: one grammar to pick modules (or parameters) by dotted name.

- ``"fc2"``, ``"attention.output.dense"``: tail match on ``.`` boundaries;
- ``"[r]<regex>"``: OpenDelta's regex: the leftmost ``re.search`` match must end at the end of the
  name and start at its beginning or right after a ``.`` (``[r][0-5]\\.attention`` is layers 0-5);
- ``"re:<regex>"``: the regex must match the *full* dotted name;
- a full dotted path is just the longest possible tail.

A name that is no module's is read through the family's common structure (``attn.q``, ``ff``,
``layer_norm``, ...). A selector that still matches nothing is an error naming the closest names
when it should patch something, and a warning when its miss changes nothing (an exclusion, a module
to keep trainable): a typo must never turn a delta into a silent no-op.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable, Iterable, Sequence

from fxdelta.core.errors import FxDeltaWarning, SelectorError

_SEARCH, _FULL = "[r]", "re:"
_REGEX_PREFIXES = (_SEARCH, _FULL)


def _regex_body(pattern: str) -> str | None:
    for prefix in _REGEX_PREFIXES:
        if pattern.startswith(prefix):
            return pattern[len(prefix) :]
    return None


def compile_pattern(pattern: str) -> Callable[[str], bool]:
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
    if pattern.startswith(_FULL):
        return lambda name: regex.fullmatch(name) is not None
    return lambda name: _ends_a_tail(regex.search(name), name)


def _ends_a_tail(found: re.Match[str] | None, name: str) -> bool:
    """OpenDelta's ``[r]`` rule: the (leftmost) match is a tail of the name on a ``.`` boundary."""
    if found is None or found.end() != len(name):
        return False
    return found.start() == 0 or name[found.start() - 1] == "."


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


# What a selector means when it is not a module's name (a common-structure name, e.g. ``attn.q``).
Expand = Callable[[str], Sequence[str] | None]


def resolve(names: Sequence[str], pattern: str, expand: Expand | None = None, *, prefer: bool = False) -> set[str]:
    """The names ``pattern`` selects: as written, else through ``expand`` (first, with ``prefer``)."""
    predicate = compile_pattern(pattern)
    direct = {n for n in names if n and predicate(n)}
    if expand is None or (direct and not prefer):
        return direct
    meaning = expand(pattern)
    if not meaning:
        return direct
    via: set[str] = set()
    for selector in meaning:
        pred = compile_pattern(selector)
        via |= {n for n in names if n and pred(n)}
    return via or direct


def select(
    names: Sequence[str],
    patterns: Sequence[str],
    exclude: Sequence[str] = (),
    *,
    what: str = "module",
    expand: Expand | None = None,
    prefer_expand: bool = False,
) -> list[str]:
    """Names (in their original order) matched by any of ``patterns`` and none of ``exclude``.

    A pattern that names no module is read through ``expand`` (the family's common structure);
    ``prefer_expand`` reads it that way first (OpenDelta's ``common_structure=True``). A pattern that
    still matches nothing is an error: it would patch nothing. An exclusion that matches nothing
    removes nothing, which is only a warning (OpenDelta's configs list names some models lack).
    """
    if isinstance(patterns, str) or isinstance(exclude, str):
        raise SelectorError(f"{what} selectors must be a list of strings, got a bare string; wrap it: [{patterns!r}]")
    if not patterns:
        raise SelectorError(f"no {what} selectors given: pass at least one name or pattern")
    chosen: set[str] = set()
    for pattern in patterns:
        found = resolve(names, pattern, expand, prefer=prefer_expand)
        if not found:
            raise SelectorError(
                f"{what} selector {pattern!r} matches no {what} of the backbone"
                f"{' and is no common-structure name it has' if expand else ''}; "
                f"closest names: {closest_names(pattern, names)}"
            )
        chosen |= found
    dropped: set[str] = set()
    for pattern in exclude:
        found = resolve(names, pattern, expand, prefer=prefer_expand)
        if not found:
            unmatched(pattern, names, f"{what} exclusion")
        dropped |= found
    selected = [n for n in names if n in chosen and n not in dropped]
    if not selected:
        raise SelectorError(
            f"the {what} selectors {list(patterns)} minus exclusions {list(exclude)} leave nothing to patch"
        )
    return selected


def unmatched(pattern: str, names: Iterable[str], role: str) -> None:
    """Warn that a selector whose miss changes nothing (an exclusion, something to keep trainable) matched
    nothing: a typo must be seen, but configs written for other models must still run."""
    warnings.warn(
        f"{role} {pattern!r} matches nothing in this model, so it does nothing; closest names: "
        f"{closest_names(pattern, names)}",
        FxDeltaWarning,
        stacklevel=4,
    )
