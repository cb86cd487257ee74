"""Train small GPT language models on TinyStories, on CPU or one GPU.

The map of the package, one line per module, is the "Layout" section of README.md (tests/test_docs.py
checks that it names every module).
"""
