"""Entry points: the ``sessionstream`` command line."""
