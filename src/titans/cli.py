"""The ``titans`` command."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from titans.demo import run_demo

    run_demo()
    return 0


def _verify(args: argparse.Namespace) -> int:
    from titans.equations import verify

    return verify()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="titans", description="Titans: neural long-term memory at test time."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="watch the memory memorise key/value pairs at test time").set_defaults(
        run=_demo
    )
    commands.add_parser("verify", help="run each equation's tests and list their status").set_defaults(
        run=_verify
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
