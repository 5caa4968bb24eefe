"""``agci ris evaluate|show``: arguments and handler."""

from __future__ import annotations

from pathlib import Path

from ..arguments import add_device, add_force, refuse


def register(subparsers) -> None:
    ris = subparsers.add_parser("ris", help="mid-layer zero-shot referring segmentation with CLIP / SigLIP / SigLIP2")
    ris_sub = ris.add_subparsers(dest="action", required=True)
    evaluate = ris_sub.add_parser("evaluate", help="mIoU, oIoU and Prec@X on RefCOCO/+/g (REFER files), resumable")
    show = ris_sub.add_parser("show", help="the map, regions and chosen mask for one image and expression")
    for cmd in (evaluate, show):
        cmd.add_argument("--model", required=True, help="CLIP, SigLIP or SigLIP2 checkpoint folder or hub id")
        proposals_help = "disk:FOLDER (COCO RLE json or PNG masks per image), mask2former:CKPT or sam:CKPT"
        cmd.add_argument("--proposals", required=True, help=proposals_help)
        cmd.add_argument("--mode", default="full", choices=["full", "global", "pmap"],
                         help="full; global: global score only; pmap: map regions only")  # fmt: skip
        cmd.add_argument("--layer", type=int, help="1-based layer of the map (default: two thirds up, 8 of 12)")
        cmd.add_argument("--normalise", default="channel", choices=["channel", "patch"])
        add_device(cmd, "cpu")
    evaluate.add_argument(
        "--refer", required=True, help="REFER root: <root>/<dataset>/refs(<split_by>).p, instances.json"
    )
    evaluate.add_argument("--dataset", required=True, choices=["refcoco", "refcoco+", "refcocog"])
    evaluate.add_argument("--split", required=True, help="val, testA, testB, test")
    evaluate.add_argument("--split-by", help="unc, umd or google (default: unc; umd for refcocog)")
    evaluate.add_argument("--images", required=True, help="COCO train2014 images folder")
    evaluate.add_argument("--limit", type=int)
    evaluate.add_argument(
        "--v", type=float, help="crop vs whole-image weight of the global score (0.95 RefCOCO/+, 0.85 g)"
    )
    evaluate.add_argument("--translations", help="CSV: sent_id and one column per language")
    evaluate.add_argument("--language", help="a column of --translations to ground with, or centroid (all of them)")
    evaluate.add_argument("--out", required=True,
                          help="results folder (splits may share it); the same inputs resume")  # fmt: skip
    add_force(evaluate)
    show.add_argument("--image", required=True)
    show.add_argument("--text", required=True)
    show.add_argument("--out", required=True, help="PNG path")
    ris.set_defaults(func=ris_command)


def ris_config(args):
    """The :class:`~agci.ris.evaluate.RisConfig` of ``agci ris evaluate``'s arguments (checked as it is made)."""
    from ..ris.evaluate import RisConfig

    return RisConfig(model=args.model, refer_root=Path(args.refer), dataset=args.dataset, split=args.split,
                     images=Path(args.images), proposals=args.proposals, out=Path(args.out), mode=args.mode,
                     layer=args.layer, normalise=args.normalise, limit=args.limit, device=args.device,
                     split_by=args.split_by, translations=Path(args.translations) if args.translations else None,
                     language=args.language, v=args.v, force=args.force)  # fmt: skip


def ris_command(args) -> int:
    from ..ris import evaluate as ris

    try:
        if args.action == "evaluate":
            s = ris.evaluate(ris_config(args))
            print(f"{args.dataset} {args.split} ({s['n']} expressions, {args.mode}): mIoU {s['mIoU']:.4f}, "
                  f"oIoU {s['oIoU']:.4f}, Prec@0.5 {s['Prec@0.5']:.4f}")  # fmt: skip
        else:
            path = ris.picture(args.model, Path(args.image), args.text, args.proposals, Path(args.out), args.mode,
                               args.layer, args.normalise, args.device)  # fmt: skip
            print(f"wrote {path}")
    except (ValueError, FileNotFoundError) as exc:
        return refuse(f"ris {args.action}", exc)
    return 0
