"""Train small GPT-2 style language models on TinyStories, on CPU or one GPU.

Modules, in the order data flows through them:
  tokenizer  GPT-2 BPE without network; the llm.c tokenizer file
  data       story sources -> token files; the batch loader
  formats    llm.c model / token files and our training state (read, validate, write atomically)
  model      the GPT module
  train      the training loop
  generate   sampling with a KV cache
  cli        every command-line flag and the error reporting
"""
