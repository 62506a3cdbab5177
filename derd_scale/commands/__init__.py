"""The ``derd-scale`` subcommands, one module each with ``build_parser(prog)`` and ``main(argv, prog)``.

Run them as ``derd-scale SUBCOMMAND`` (``derd_scale/cli.py``), ``python -m derd_scale.commands.NAME``
or through the ``launch/*.py`` shims. Floor 6 (entry points): they may import anything.
"""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage block), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def add_override_option(p: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE``, repeatable, into ``args.overrides``: the one spelling of a dotted config
    override for every entry point and benchmark (``config_from_dict`` reads them)."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def config_parser(prog: str, description: str, config_help: str, set_example: str) -> OneLineParser:
    """The parser of a config-driven subcommand (train, evaluate, teacher) with the options they
    share: ``--config``, repeatable ``--set KEY=VALUE``, ``--print-schema``, ``--print-config``."""
    p = OneLineParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help=f"{config_help}; omitted = all defaults")
    add_override_option(p, f"dotted override, repeatable (e.g. {set_example})")
    p.add_argument("--print-schema", action="store_true", help="print every option with type and default, then exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, then exit")
    return p
