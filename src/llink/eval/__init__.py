"""Evaluations: retrieval, generation quality, LLM judge, token budget, numeric fidelity."""


class EvalError(ValueError):
    """An evaluation cannot run as asked (unknown system, missing outputs, bad judge choice)."""
