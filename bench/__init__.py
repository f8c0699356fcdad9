"""Benchmarks of eeipu: they stand beside the product and may use all of it.

Nothing in ``eeipu``, ``cache``, ``pipelines`` or ``api`` imports this package: the
``eeipu bench`` commands join the CLI as a plugin (entry-point group ``eeipu.cli``, see
``bench.cli.register``).
"""
