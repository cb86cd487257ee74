"""Fused versions of the model's output layer + cross-entropy, each checked against
`tinystories.model.plain_head_loss` (the reference) and swapped in with `model.head_loss = ...`.

  fused_ce   chunked output layer + loss in plain PyTorch; any device, the fast one on CPU
  triton_ce  the same chunking with a Triton softmax/loss kernel, for CUDA (needs triton)

Neither module is imported here, so `import tinystories.kernels` never needs triton.
"""
