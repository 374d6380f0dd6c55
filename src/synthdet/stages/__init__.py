"""One module per DVC stage: `python -m synthdet.stages.<name>`."""
