"""On PYTHONPATH with AGCI_TRACE_LAMBDA=FILE, every AGCI injection a patched forward makes appends
"<pid> <lambda> transformers" to FILE: how the tests see, from outside, that a value reached the forward of a
subprocess (and of which process). The vLLM plugin's model classes write "<pid> <lambda> vllm", in vLLM's
workers."""

import os

if os.environ.get("AGCI_TRACE_LAMBDA"):
    import agci.patches.hooks as _hooks  # the wrappers look inject up there
    import agci.vllm.models as _vllm_models  # the same for agci's vLLM classes (vllm itself is not imported)

    def _traced(inject, engine):
        def traced_inject(features, lam, *args, **kwargs):
            with open(os.environ["AGCI_TRACE_LAMBDA"], "a") as f:
                f.write(f"{os.getpid()} {lam} {engine}\n")
            return inject(features, lam, *args, **kwargs)

        return traced_inject

    _hooks.inject = _traced(_hooks.inject, "transformers")
    _vllm_models.inject = _traced(_vllm_models.inject, "vllm")
