"""patchshift core: the ML engine (PatchCore, adaptation, metrics). Knows nothing of HTTP."""

__version__ = "0.1.0"
