"""One module per ``edgeprune`` verb, each with ``add_parser(sub)`` and ``run(args) -> int``.

Every verb's module is imported to build the parser, so at import it may load only what its
arguments need (defaults, help text); the work, and torch with it, is imported inside ``run``.
"""
