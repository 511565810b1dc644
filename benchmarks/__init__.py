"""Studies: the measurements behind the docs' numbers, run from a checkout.

    python -m benchmarks.<name> --help

Not part of the installed product; they use it through its public API and the adapter registry.
"""
