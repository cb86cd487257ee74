"""The weight layout, written down once: llm.c's table, and the rows other blocks add or drop.

An llm.c model file (formats.py) stores a GPT-2's weights as the 16 tensors of `tensors`, in that
order. A tensor of a per-layer weight holds all L layers, stacked along its first axis; linear
weights are stored (out, in), as nn.Linear holds them. Our GPT (model.py) names its parameters as
Hugging Face's GPT-2 does (less the `transformer.` prefix), so the table's third column names both;
in it, `{i}` stands for the layer.

A model of another block (GPTConfig's architecture fields) has the rows its config asks for, in the
same order and the same way: no wpe under rotary positions, no biases without `bias` (and no norm
biases under RMSNorm), a gate under SwiGLU, an lm_head when the head is not tied, and the shapes of
its kv heads and MLP width. Our own model file (formats.py) stores those rows; for GPT-2's block the
table is exactly llm.c's 16.

Everything else is derived from the table, by name: the shapes of a model file's tensors
(formats.model_tensor_shapes), the parameter count (GPTConfig.num_parameters), moving weights in
and out of a GPT (model_params, load_params; model.read_gpt), and the exports and imports (hf.py,
gguf_file.py: renamed and gathered, with each program's names for the rows).

This module imports nothing at the top, so that config.py can count parameters with it while the
command line starts without torch.
"""


def tensors(config) -> list[tuple[str, tuple[int, ...], str]]:
    """(llm.c name, shape in the file, parameter name) of the tensors of a model file for `config`
    (a GPTConfig), in file order: llm.c's 16 for GPT-2's block."""
    V, T, L, C, F = config.padded_vocab_size, config.block_size, config.n_layer, config.n_embd, config.hidden_size
    QKV = (config.n_head + 2 * config.kv_heads) * config.head_size  # q, then k and v of the kv heads
    learned, bias, swiglu = config.position == "learned", config.bias, config.mlp == "swiglu"
    norm_bias = bias and config.norm == "layernorm"
    rows = [  # (llm.c name, shape, parameter, whether the config has it)
        ("wte", (V, C), "wte.weight", True),  # token embedding (and output head when tied); rows vocab_size.. are padding
        ("wpe", (T, C), "wpe.weight", learned),  # position embedding
        ("ln1w", (L, C), "h.{i}.ln_1.weight", True),
        ("ln1b", (L, C), "h.{i}.ln_1.bias", norm_bias),
        ("qkvw", (L, QKV, C), "h.{i}.attn.c_attn.weight", True),  # q, k, v in that order
        ("qkvb", (L, QKV), "h.{i}.attn.c_attn.bias", bias),
        ("attprojw", (L, C, C), "h.{i}.attn.c_proj.weight", True),
        ("attprojb", (L, C), "h.{i}.attn.c_proj.bias", bias),
        ("ln2w", (L, C), "h.{i}.ln_2.weight", True),
        ("ln2b", (L, C), "h.{i}.ln_2.bias", norm_bias),
        ("fcgatew", (L, F, C), "h.{i}.mlp.c_gate.weight", swiglu),
        ("fcgateb", (L, F), "h.{i}.mlp.c_gate.bias", swiglu and bias),
        ("fcw", (L, F, C), "h.{i}.mlp.c_fc.weight", True),
        ("fcb", (L, F), "h.{i}.mlp.c_fc.bias", bias),
        ("fcprojw", (L, C, F), "h.{i}.mlp.c_proj.weight", True),
        ("fcprojb", (L, C), "h.{i}.mlp.c_proj.bias", bias),
        ("lnfw", (C,), "ln_f.weight", True),  # final norm
        ("lnfb", (C,), "ln_f.bias", norm_bias),
        ("lmheadw", (config.vocab_size, C), "lm_head.weight", not config.tied_head),  # an untied output head
    ]
    return [(name, shape, parameter) for name, shape, parameter, present in rows if present]


def _pieces(config, names: dict):
    """(row's llm.c name, layer or None, the other program's name, the row's rows it holds: a slice) of
    every tensor that `names` gives (see `renamed`), in file order."""
    H, KV, hs = config.n_head, config.kv_heads, config.head_size
    qkv_bounds = (0, H * hs, (H + KV) * hs, (H + 2 * KV) * hs)  # q, then k and v of the kv heads
    for name, shape, parameter in tensors(config):
        layered = per_layer(parameter)
        targets = names[name]
        if isinstance(targets, tuple):  # qkvw's (qkvb's) three parts
            parts = [(target, slice(a, b)) for target, a, b in zip(targets, qkv_bounds, qkv_bounds[1:])]
        else:
            parts = [(targets, slice(0, config.vocab_size if name == "wte" else shape[1 if layered else 0]))]
        for layer in range(config.n_layer) if layered else [None]:
            for target, rows in parts:
                yield name, layer, target.format(i=layer), rows


def renamed(config, params: dict, names: dict) -> dict:
    """The table's tensors `params` as another program names them (fp32 numpy, contiguous): `names` maps
    a row's llm.c name to the name of one layer's tensor ({i}: the layer), or to three names, q's, k's and
    v's, for a qkvw (qkvb) that the program splits; wte loses its padding rows. Every row of the config
    must be named."""
    import numpy as np

    out = {}
    for name, layer, target, rows in _pieces(config, names):
        value = params[name] if layer is None else params[name][layer]
        out[target] = np.ascontiguousarray(value[rows], dtype=np.float32)
    return out


def renamed_shapes(config, names: dict) -> dict:
    """The shape of each tensor `renamed` gives, by name, in its order."""
    shapes = {name: shape[1:] if per_layer(parameter) else shape for name, shape, parameter in tensors(config)}
    return {target: (rows.stop - rows.start, *shapes[name][1:]) for name, _, target, rows in _pieces(config, names)}


def gathered(config, values: dict, names: dict) -> dict:
    """`renamed` undone: the tensors `values` (numpy, by the other program's names, every one present with
    its shape) as the table's fp32 tensors, wte's padding rows zero."""
    import numpy as np

    params = {name: np.zeros(shape, dtype=np.float32) for name, shape, _ in tensors(config)}
    for name, layer, target, rows in _pieces(config, names):
        (params[name] if layer is None else params[name][layer])[rows] = values[target]
    return params


def per_layer(parameter: str) -> bool:
    """Whether a table row holds one parameter per layer (stacked in the file) or a single one."""
    return "{i}" in parameter


def parameter_names(parameter: str, n_layer: int) -> list[str]:
    """The names of the parameters one llm.c tensor holds."""
    return [parameter.format(i=i) for i in range(n_layer)] if per_layer(parameter) else [parameter]


def split(parameter: str, value, n_layer: int) -> dict:
    """One llm.c tensor (numpy or torch) as the parameters it holds, by name: its layers, or itself."""
    if per_layer(parameter):
        return {parameter.format(i=i): value[i] for i in range(n_layer)}
    return {parameter: value}


def model_params(model) -> dict:
    """The weights of a GPT as the tensors of its table (fp32 numpy arrays, in file order), ready for
    formats.write_model."""
    import torch

    state = model.state_dict()
    out = {}
    for name, shape, parameter in tensors(model.config):
        parts = [state[p] for p in parameter_names(parameter, model.config.n_layer)]
        out[name] = torch.stack(parts).reshape(shape).float().cpu().numpy()  # a copy, not a view of the weights
    return out


def load_params(model, params: dict):
    """Copy the table's tensors `params` (as formats.read_model gives them) into a GPT's
    parameters, by name (every parameter must be given, with its shape); returns the model."""
    import torch

    state = {}
    for name, _, parameter in tensors(model.config):
        state.update(split(parameter, params[name], model.config.n_layer))
    model.load_state_dict({p: torch.tensor(value, dtype=torch.float32) for p, value in state.items()})
    return model

