"""Import-only stand-in for Hugging Face `tokenizers` (the Rust package is not installable here).

It has no dist-info on purpose: transformers' is_tokenizers_available() checks importlib.metadata and stays
False, so only the slow (SentencePiece) LlamaTokenizer exists. The names below only let modules that do
`from tokenizers import ...` at import time (convert_slow_tokenizer, used for import_protobuf) load; any use raises.
"""
__version__ = "0.0.0-stub"


class _Unavailable:
    def __init__(self, *a, **k):
        raise RuntimeError("tokenizers is not available in this environment (import-only stub)")

    def __getattr__(self, name):
        raise RuntimeError("tokenizers is not available in this environment (import-only stub)")


class AddedToken(_Unavailable):
    pass


class Regex(_Unavailable):
    pass


class Tokenizer(_Unavailable):
    pass


class Encoding(_Unavailable):
    pass


class ByteLevelBPETokenizer(_Unavailable):
    pass


class _Module:
    def __init__(self, name):
        self.__name__ = "tokenizers." + name

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unavailable


decoders = _Module("decoders")
normalizers = _Module("normalizers")
pre_tokenizers = _Module("pre_tokenizers")
processors = _Module("processors")
trainers = _Module("trainers")
