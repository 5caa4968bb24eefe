"""``agci demo``: AGCI's mechanics on a small LLaVA built offline."""

from __future__ import annotations

from ..arguments import add_seed, lambdas, refuse


def register(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="AGCI on a small LLaVA built offline: weights, feature change, logits")
    demo.add_argument("--out", default="agci-demo", help="output folder (default: agci-demo)")
    demo.add_argument("--lambda", dest="lambdas", type=lambdas, default=[0.0, 0.25, 0.5, 1.0],
                      help="comma-separated lambdas (default: 0,0.25,0.5,1)")  # fmt: skip
    demo.add_argument("--impl", default="auto", choices=["auto", "reference", "triton"])
    add_seed(demo)
    demo.set_defaults(func=demo_command)


def demo_command(args) -> int:
    from ..demo import print_summary, run_demo

    try:
        summary = run_demo(args.out, lambdas=args.lambdas, impl=args.impl, seed=args.seed)
    except FileExistsError as exc:
        return refuse("demo", exc)
    except OSError as exc:
        problem = exc.strerror or exc
        return refuse("demo", f"--out {args.out} cannot be written ({problem}); give a folder you can write to")
    print_summary(summary)
    print(f"wrote {args.out}/demo.json and {args.out}/demo.png")
    return 0
