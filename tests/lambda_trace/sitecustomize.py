"""On PYTHONPATH with AGCI_TRACE_LAMBDA=FILE, every AGCI injection a patched forward makes appends
"<pid> <lambda>" to FILE: how the tests see, from outside, that a value reached the forward of a
subprocess (and of which process)."""

import os

if os.environ.get("AGCI_TRACE_LAMBDA"):
    import agci.patches.hooks as _hooks  # the wrappers look inject up there

    _inject = _hooks.inject

    def _traced_inject(features, lam, *args, **kwargs):
        with open(os.environ["AGCI_TRACE_LAMBDA"], "a") as f:
            f.write(f"{os.getpid()} {lam}\n")
        return _inject(features, lam, *args, **kwargs)

    _hooks.inject = _traced_inject
