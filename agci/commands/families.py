"""``agci families``: the supported families, as the registry records them."""

from __future__ import annotations


def register(subparsers) -> None:
    fam = subparsers.add_parser("families", help="the supported model families: hook, grouping, versions, integrations")
    fam.add_argument("--markdown", action="store_true", help="the table as README shows it")
    fam.set_defaults(func=families_command)


def families_command(args) -> int:
    from ..registry import GROUPINGS, HOOKS, markdown_table, text_table

    if args.markdown:
        print(markdown_table(), end="")
        return 0
    print(text_table(), end="")
    print("\nhook:")
    for name, what in HOOKS.items():
        print(f"  {name}: {what}")
    print("images from:")
    for name, what in GROUPINGS.items():
        print(f"  {name}: {what}")
    print("lmms-eval: also 'agci', which serves every family (read from the checkpoint's config)")
    return 0
