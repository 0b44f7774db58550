"""Import-only stand-in (see tokenizers/__init__.py)."""
from tokenizers import _Unavailable


class BPE(_Unavailable):
    pass


class Unigram(_Unavailable):
    pass


class WordLevel(_Unavailable):
    pass


class WordPiece(_Unavailable):
    pass
