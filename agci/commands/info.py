"""``agci info``: versions, device, and which implementation of the op runs."""

from __future__ import annotations

from ..arguments import refuse


def register(subparsers) -> None:
    info = subparsers.add_parser("info", help="versions, device and which implementation of the op will run")
    info.set_defaults(func=info_command)


def info_command(args) -> int:
    import torch

    from .. import __version__
    from ..fingerprints import versions
    from ..kernels import IMPL_ENV, resolve_impl, triton_available

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = resolve_impl("auto", torch.empty(0, device=device, dtype=torch.bfloat16))
    except ValueError as exc:
        return refuse("info", exc)
    print(f"agci {__version__}")
    installed = versions("torch", "triton")
    for name in ("torch", "transformers", "triton"):
        print(f"{name} {installed[name] or 'not installed'}")
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}")
    print(f"triton kernels usable on {device}: {triton_available(device)}")
    print(f"impl='auto' on {device} bf16 runs: {chosen} (set {IMPL_ENV}=reference|triton to force)")
    return 0
