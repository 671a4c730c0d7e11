"""``guaita`` console script: one subcommand per job, each living in its own module.

Subcommand modules are imported only when chosen, so ``guaita run`` on the Pi never imports
the training code (or torch), and ``guaita --help`` is instant. A subcommand module provides
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib.metadata import PackageNotFoundError, version

from edge.memory import keep_freed_memory

# name → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("edge.service", "run the detection daemon (watch AllSky, detect, publish)"),
    "demo": ("edge.demo", "simulate a night and run it through the daemon (make demo)"),
    "scan": ("edge.scan", "score a night folder or a whole images tree in one batch"),
    "check-config": ("edge.check_config", "validate a guaita.toml and print the result"),
    "simulate": ("training.simulate", "write simulated AllSky nights with ground truth"),
    "dataset": ("training.dataset", "build a preprocessed, night-split training index"),
    "train": ("training.train", "fine-tune a ResNet with fastai"),
    "evaluate": ("training.evaluate", "evaluate a model on held-out nights, write a report"),
    "coverage": ("training.coverage",
                 "how many meteors an m1 candidate mosaic can hold (choose it before training)"),
    "export": ("training.export", "export ONNX, quantize to int8, check parity, write bundle"),
    "trail-stage": ("training.trail_stage",
                    "fit a bundle's trail stage on training-night candidates (a new bundle)"),
    "trail-classifier": ("training.trail_classifier",
                         "give a bundle the trail classifier, fitted on its training nights"),
    "alert-threshold": ("training.alert_threshold",
                        "choose a bundle's threshold by its pipeline alerts on validation nights"),
    "model": ("edge.model_admin", "publish, list, show or roll back model bundles"),
    "bridge": ("cloud.bridge", "local stand-in for the IoT rule: MQTT → ingest handler"),
    "provision": ("edge.provision", "register this Pi as an AWS IoT thing, install its cert"),
}


def package_version() -> str:
    try:
        return version("guaita")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guaita", description="Meteor detection for AllSky cameras."
    )
    parser.add_argument("--version", action="version", version=f"guaita {package_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sp)
            sp.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(command if command in COMMANDS else None)
    except ImportError as exc:
        print(f"guaita {command}: this install lacks what it needs ({exc}).", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0 if args.command is None else 2
    keep_freed_memory()  # per-frame temporaries reused, not page-faulted anew (edge/memory.py)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
