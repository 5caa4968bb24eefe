"""``agci set-lambda``: write the key into a checkpoint's config.json."""

from __future__ import annotations

import json
from pathlib import Path

from ..arguments import refuse
from ..configs import LAMBDA_KEY


def register(subparsers) -> None:
    setl = subparsers.add_parser("set-lambda", help=f"write {LAMBDA_KEY} into a checkpoint's config.json")
    setl.add_argument("checkpoint", help="checkpoint folder (or its config.json)")
    setl.add_argument("value", help="lambda >= 0; 0 turns AGCI off")
    setl.set_defaults(func=set_lambda_command)


def set_lambda_command(args) -> int:
    from ..configs import parse_lambda
    from ..patches.discovery import check_model_type
    from ..runs import write_text

    path = Path(args.checkpoint)
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        return refuse("set-lambda", f"no config.json at {config_path}; pass a checkpoint folder")
    try:
        value = parse_lambda(args.value)
    except ValueError as exc:
        if "is not a number" not in str(exc):
            return refuse("set-lambda", exc)
        return refuse(
            "set-lambda", f"lambda {args.value!r} is not a number; give a number >= 0, e.g. 0.5 (0 turns AGCI off)"
        )
    restore = "repair it, or restore the checkpoint's original config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return refuse(
            "set-lambda",
            f"{config_path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); {restore}",
        )
    except UnicodeDecodeError as exc:
        return refuse("set-lambda", f"{config_path} is not UTF-8 text ({exc.reason} at byte {exc.start}); {restore}")
    except OSError as exc:
        return refuse("set-lambda", f"cannot read {config_path} ({exc.strerror or exc}); check its permissions")
    if not isinstance(config, dict):
        kinds = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}
        held = kinds.get(type(config), "null")
        return refuse("set-lambda", f"{config_path} holds {held}, not a JSON object of settings; {restore}")
    model_type = config.get("model_type")
    try:
        check_model_type(model_type, where=f"{config_path}: ")
    except ValueError as exc:
        return refuse("set-lambda", exc)
    previous = config.get(LAMBDA_KEY)
    config[LAMBDA_KEY] = value
    try:
        write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        return refuse(
            "set-lambda", f"cannot write {config_path} ({exc.strerror or exc}); check the folder's permissions"
        )
    print(f"{config_path}: {LAMBDA_KEY} {previous} -> {value} ({model_type})")
    return 0
