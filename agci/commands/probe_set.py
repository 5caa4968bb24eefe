"""``agci probe-set``: build a probe set (with its manifest) from image-caption pairs."""

from __future__ import annotations

from ..arguments import add_force, add_seed, refuse


def register(subparsers) -> None:
    pset = subparsers.add_parser(
        "probe-set", help="build a position + similarity probe set (with a manifest) from pairs"
    )
    pset.add_argument("out", help="output folder")
    pset.add_argument(
        "--source",
        default="synthetic:60",
        help="synthetic[:N], synthetic-textured[:N], a folder, a .jsonl/.csv of image+caption, hf:NAME[:SPLIT]",
    )
    add_seed(pset)
    pset.add_argument("--canvas", type=int, default=840)
    pset.add_argument("--negatives-per-pair", type=int, default=3)
    pset.add_argument("--no-similarity", action="store_true")
    pset.add_argument("--max-pairs", type=int)
    pset.add_argument("--image-column", default="image")
    pset.add_argument("--caption-column", default="caption")
    add_force(pset, "delete a set built with other options and build again")
    pset.add_argument("--from-manifest", help="rebuild exactly the set that this manifest.json describes")
    pset.set_defaults(func=probe_set_command)


def probe_set_command(args) -> int:
    from ..bias.probe_sets import SetOptions, build, rebuild

    try:
        if args.from_manifest:
            manifest = rebuild(args.from_manifest, args.out, force=args.force)
        else:
            options = SetOptions(
                source=args.source, seed=args.seed, canvas=args.canvas, negatives_per_pair=args.negatives_per_pair,
                similarity=not args.no_similarity, max_pairs=args.max_pairs, image_column=args.image_column,
                caption_column=args.caption_column,
            )  # fmt: skip
            manifest = build(args.out, options, force=args.force)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as exc:
        return refuse("probe-set", exc)
    print(
        f"{args.out}: {manifest['questions']} position questions "
        f"({manifest['positives']} Yes, {manifest['negatives']} No), "
        f"{manifest['similarity_samples']} similarity samples, {len(manifest['skipped'])} pairs skipped"
    )
    return 0
