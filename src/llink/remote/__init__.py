"""Launching llink jobs on hosted GPUs (optional extras, e.g. ``pip install llink[modal]``)."""
