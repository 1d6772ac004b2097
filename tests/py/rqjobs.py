"""The job RQ's worker runs (a module of its own: RQ imports jobs by name)."""


def double(n):
    return n * 2
