"""Train small GPT-2 style language models on TinyStories, on CPU or one GPU.

Modules, in the order data flows through them:
  tokenizer   GPT-2 BPE without network; the llm.c tokenizer file
  sources     where stories come from (archive, JSON, .txt, parquet, synthetic); download: the Hub
  data        stories -> token files (prepare_data.py)
  formats     llm.c model / token files and our training state (read, validate, write atomically)
  llmc        the llm.c weight layout: the model file's 16 tensors and the GPT parameters they hold
  model       the GPT module
  loader      batches from a token file
  device      ranks, device, precision, compile and head-loss choice
  optim       AdamW and the LR schedule
  checkpoint  what a checkpoint holds and how a run resumes
  metrics     the metrics log
  train       the training loop
  generate    sampling with a KV cache
  cli         every command-line flag and the error reporting
"""
