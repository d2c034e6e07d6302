"""The one exception family of fxdelta.

Every error a user can trigger is an ``FxDeltaError``; the subclasses say which part of the
input was wrong, so callers can catch narrowly. Messages name the problem and the fix.
"""


class FxDeltaError(Exception):
    """Base class of every error raised by fxdelta."""


class ConfigError(FxDeltaError, ValueError):
    """A delta spec or hyper-parameter is invalid (names the field and the bad value)."""


class SelectorError(FxDeltaError, LookupError):
    """A module selector matched nothing, or matched a module the method cannot patch."""


class UnsupportedModelError(FxDeltaError):
    """fxdelta cannot plan the backbone as given (unknown family, no example inputs, ...)."""


class CheckpointError(FxDeltaError):
    """A delta checkpoint is missing, corrupt, or was saved for another backbone."""


class StateError(FxDeltaError, RuntimeError):
    """The backbone was changed behind fxdelta's back (e.g. another tool replaced a forward)."""


class MergeError(FxDeltaError):
    """A delta cannot be folded into the backbone's weights (or unfolded), or folding it would change outputs
    beyond the dtype's bound; the backbone is left as it was."""


class FxDeltaWarning(UserWarning):
    """Something that runs but may not do what was meant (a selector to keep trainable matched nothing, an
    unknown key in a config dict was ignored)."""
