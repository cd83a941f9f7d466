"""Reports and log summaries of run folders: plots, tables, one self-contained file."""
