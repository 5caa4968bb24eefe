"""Choosing the implementation, and torch.compile of code that calls the op."""

import subprocess
import sys

import pytest
import torch
from conftest import per_image_formula

import agci
from agci.kernels import resolve_impl


def test_auto_picks_reference_on_cpu_and_env_forces_an_impl(monkeypatch, device):
    x = torch.randn(4, 3, device=device)
    monkeypatch.delenv("AGCI_IMPL", raising=False)
    assert resolve_impl("auto", x) == ("triton" if x.is_cuda else "reference")
    monkeypatch.setenv("AGCI_IMPL", "reference")
    assert resolve_impl("auto", x) == "reference"
    monkeypatch.setenv("AGCI_IMPL", "triton")
    assert resolve_impl("auto", x) == "triton"  # on CPU conftest runs the kernels interpreted
    assert resolve_impl("reference", x) == "reference"  # an explicit argument wins
    monkeypatch.setenv("AGCI_IMPL", "fast")
    with pytest.raises(ValueError, match="AGCI_IMPL must be one of"):
        resolve_impl("auto", x)


def test_triton_without_cuda_or_interpreter_explains_the_fix(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_impl("triton", torch.randn(2, 2))


def test_import_is_fast_and_has_no_side_effects():
    code = (
        "import sys, agci; assert 'torch' not in sys.modules and 'transformers' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')); print(agci.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == agci.__version__


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("lengths", [[3, 9, 1], [13]])
def test_torch_compile_matches_eager_without_graph_breaks(impl, lengths, device):
    torch._dynamo.reset()

    def f(x):
        return agci.global_context_broadcast(x * 2.0, 0.6, lengths, impl=impl).square().sum(-1)

    compiled = torch.compile(
        f, fullgraph=True, backend="inductor" if impl == "reference" or device == "cuda" else "aot_eager"
    )
    x = torch.randn(13, 10, device=device)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye, yc = f(xe), compiled(xc)
    torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-5)
    ye.sum().backward()
    yc.sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-5)
    x64 = (x.double() * 2).requires_grad_()
    torch.testing.assert_close(ye.double(), per_image_formula(x64, 0.6, lengths).square().sum(-1), rtol=1e-5, atol=1e-5)


def test_triton_op_is_one_node_in_the_compiled_graph(device):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    f = torch.compile(
        lambda x: agci.global_context_broadcast(x, 0.5, [2, 3], impl="triton"), backend=counter, fullgraph=True
    )
    f(torch.randn(5, 4, device=device))
    assert counter.frame_count == 1
    ops = [str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert sum("global_context_broadcast" in op for op in ops) == 1, ops
