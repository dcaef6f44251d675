"""Entry point: `lora-studio` / `python -m studio` opens the window; with a verb, the CLI runs."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("--gui", "gui"):
        from studio.gui.app import run_gui

        return run_gui(args[1:] if args else [])
    from studio.cli.main import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
