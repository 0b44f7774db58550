"""Stand-in for icecream (not installable here). pyiqa's vendored mPLUG-Owl2 does `from icecream import ic`
at import time; `ic` is never called on the scoring path. Behaves like icecream.ic: prints and returns its args."""
import sys


def ic(*args):
    print("ic|", *args, file=sys.stderr)
    if not args:
        return None
    return args[0] if len(args) == 1 else args


def install(*a, **k):
    pass
