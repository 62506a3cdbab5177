"""The ``derd-scale`` subcommands, one module each with ``build_parser(prog)`` and ``main(argv, prog)``.

Run them as ``derd-scale SUBCOMMAND`` (``derd_scale/cli.py``), ``python -m derd_scale.commands.NAME``
or through the ``launch/*.py`` shims. Floor 6 (entry points): they may import anything.
"""
