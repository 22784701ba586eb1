"""`lab2prod models list | show VERSION | promote VERSION [--alias A] | rollback`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from service.registry import PRODUCTION


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="list, show, promote and roll back versions in the model registry",
        description="Manage the registry (settings.registry_url, default ./models).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="versions with their aliases and accuracy").set_defaults(
        handler=list_versions)
    show = actions.add_parser("show", help="print a version's model card (JSON)")
    show.add_argument("version", help="a version (v3) or an alias (production)")
    show.set_defaults(handler=show_card)
    promote = actions.add_parser("promote", help="point an alias at a version")
    promote.add_argument("version", help="a version (v3) or an alias")
    promote.add_argument("--alias", default=PRODUCTION, help="alias to move (default: production)")
    promote.set_defaults(handler=promote_version)
    actions.add_parser(
        "rollback", help="swap production and previous (undo the last release or promotion)"
    ).set_defaults(handler=rollback)


def _registry() -> Any:
    from service.registry import open_registry
    from service.settings import get_settings

    settings = get_settings()
    return open_registry(settings.registry_url, settings.model_name)


def _fail(exc: Exception) -> int:
    print(f"lab2prod models: error: {exc}", file=sys.stderr)
    return 1


def list_versions(args: argparse.Namespace) -> int:
    """One line per version: aliases, accuracy, the runtime the release chose, run, publish time."""
    from service.registry import RegistryError

    registry = _registry()
    try:
        versions, aliases = registry.versions(), registry.aliases()
    except RegistryError as exc:
        return _fail(exc)
    if not versions:
        print(f"no versions of {registry.model_name} in {registry.url}; "
              "run `lab2prod release` to publish one")
        return 0
    named: dict[str, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        named.setdefault(version, []).append(alias)
    print(f"{'VERSION':<8} {'ALIASES':<24} {'ACCURACY':>8}  {'DATASET':<14} {'RUNTIME':<12} "
          f"{'RUN':<24} PUBLISHED")
    for version in versions:
        card = _card_or_empty(registry, version)
        accuracy = ((card.get("metrics") or {}).get("candidate") or {}).get("accuracy")
        dataset = ((card.get("data") or {}).get("evaluation") or {}).get("name", "")
        runtime = (card.get("runtimes") or {}).get("chosen") or "-"
        print(
            f"{version:<8} {','.join(named.get(version, [])) or '-':<24} "
            f"{f'{accuracy:.4f}' if accuracy is not None else '-':>8}  {dataset or '-':<14} "
            f"{runtime:<12} {card.get('run_id', '-'):<24} {card.get('published_at', '-')}"
        )
    return 0


def _card_or_empty(registry: Any, version: str) -> dict[str, Any]:
    try:
        return dict(registry.card(version))
    except (OSError, ValueError):  # a version without a readable card still gets listed
        return {}


def show_card(args: argparse.Namespace) -> int:
    from service.registry import RegistryError

    registry = _registry()
    try:
        card = registry.card(args.version)
    except RegistryError as exc:
        return _fail(exc)
    print(json.dumps(card, indent=2))
    return 0


def promote_version(args: argparse.Namespace) -> int:
    from service.registry import RegistryError

    registry = _registry()
    try:
        before = registry.aliases().get(args.alias)
        version = registry.promote(args.version, args.alias)
    except RegistryError as exc:
        return _fail(exc)
    print(f"{registry.model_name} {args.alias}: {before or 'unset'} -> {version}")
    return 0


def rollback(args: argparse.Namespace) -> int:
    from service.registry import RegistryError

    registry = _registry()
    try:
        before = registry.aliases().get(PRODUCTION)
        version = registry.rollback()
    except RegistryError as exc:
        return _fail(exc)
    print(f"{registry.model_name} production: {before} -> {version} (previous is now {before})")
    return 0
