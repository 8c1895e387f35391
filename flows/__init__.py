"""Prefect flows users trigger (build, train, evaluate) and the ``magicseg`` command line."""
