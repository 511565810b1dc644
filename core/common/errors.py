"""One exception family for everything a user can get wrong.

The CLI and the HTTP layer translate these (and only these) into a one-line message or a 4xx;
anything else escaping core/ is a bug.
"""


class PatchshiftError(Exception):
    """Base class: the message is written for a factory engineer, naming the file or field."""


class InvalidImageError(PatchshiftError):
    """An input file is not a usable image (empty, truncated, unknown format, absurd size)."""


class WeightsError(PatchshiftError):
    """A backbone weights file is missing, unreadable or does not fit the architecture."""


class ArtifactError(PatchshiftError):
    """A stored model version is missing, corrupt, truncated or of an incompatible format."""


class DatasetError(PatchshiftError):
    """A dataset folder does not follow the MVTec AD layout or holds no usable images."""


class ConfigError(PatchshiftError):
    """A configuration value is out of range or inconsistent with another."""


class CancelledError(PatchshiftError):
    """A long-running job was cancelled between two steps; nothing was written."""


class AdaptationError(PatchshiftError):
    """An adaptation could not produce a usable model (diverged, or its target cannot support
    it)."""
