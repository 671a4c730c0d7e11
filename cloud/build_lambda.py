"""Build the Lambda deployment zip: ``cloud/*.py`` + the event schema and its validator.

No third-party packages go in: boto3 is in the Lambda runtime, and the validator is ours.
``edge/__init__.py`` is left out on purpose: ``edge`` then imports as a namespace package, so
nothing the Pi side adds to its package init can ever break the Lambda. The zip is
byte-for-byte reproducible (fixed timestamps and order), so an unchanged build does not
change the function's code hash on redeploy.

    python -m cloud.build_lambda [--output build/lambda.zip]
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "build" / "lambda.zip"
EXTRA = ("edge/eventschema.py", "edge/schemas/event.schema.json")
_EPOCH = (1980, 1, 1, 0, 0, 0)


def members(root: Path = ROOT) -> list[str]:
    """Paths (relative to the repo root, '/'-separated) that go into the zip, sorted."""
    names = [p.relative_to(root).as_posix() for p in (root / "cloud").glob("*.py")]
    names.extend(EXTRA)
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(f"missing from the source tree: {', '.join(missing)}")
    return sorted(names)


def build(output: Path = DEFAULT_OUTPUT, root: Path = ROOT) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in members(root):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o100644 << 16  # regular file, rw-r--r--
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, (root / name).read_bytes())
    tmp.replace(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    path = build(args.output)
    print(f"{path} ({path.stat().st_size} bytes): {', '.join(members())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
