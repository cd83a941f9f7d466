"""llink: teach an English-centric LLM a new language by encoder injection (LLINK)."""

__version__ = "0.1.0"
