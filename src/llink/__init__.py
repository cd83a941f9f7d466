"""llink: teach an English-centric LLM a new language by encoder injection (LLINK)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from llink import LLINK` without importing torch for the CLI's --help.
    if name == "LLINK":
        from llink.method.model import LLINK

        return LLINK
    raise AttributeError(f"module 'llink' has no attribute {name!r}")
