"""``guaita check-config``: validate a config file the way the daemon would."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from edge.config import ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="config file (default: $GUAITA_CONFIG or /etc/guaita.toml)"
    )
    parser.add_argument("--print", action="store_true", help="print the effective settings")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 1
    if args.print:
        print(json.dumps(asdict(cfg), indent=2))
    print(f"{cfg.source}: OK (observatory {cfg.observatory})")
    return 0
