"""The llm.c weight layout, written down once.

An llm.c model file (formats.py) stores a GPT-2's weights as the 16 tensors of `tensors`, in that
order. A tensor of a per-layer weight holds all L layers, stacked along its first axis; linear
weights are stored (out, in), as nn.Linear holds them. Our GPT (model.py) names its parameters as
Hugging Face's GPT-2 does (less the `transformer.` prefix), so the table's third column names both;
in it, `{i}` stands for the layer.

Everything else is derived from the table, by name: the shapes of a model file's tensors
(formats.model_tensor_shapes), the parameter count (GPTConfig.num_parameters), moving weights in
and out of a GPT (model_params, load_params; model.read_gpt) and the Hugging Face state dict (hf.py).

This module imports nothing at the top, so that config.py can count parameters with it while the
command line starts without torch.
"""


def tensors(config) -> list[tuple[str, tuple[int, ...], str]]:
    """(llm.c name, shape in the file, parameter name) of the 16 tensors of a model file for
    `config` (a GPTConfig), in file order."""
    V, T, L, C = config.padded_vocab_size, config.block_size, config.n_layer, config.n_embd
    return [
        ("wte", (V, C), "wte.weight"),  # token embedding and output head; rows vocab_size.. are padding
        ("wpe", (T, C), "wpe.weight"),  # position embedding
        ("ln1w", (L, C), "h.{i}.ln_1.weight"),
        ("ln1b", (L, C), "h.{i}.ln_1.bias"),
        ("qkvw", (L, 3 * C, C), "h.{i}.attn.c_attn.weight"),  # q, k, v in that order
        ("qkvb", (L, 3 * C), "h.{i}.attn.c_attn.bias"),
        ("attprojw", (L, C, C), "h.{i}.attn.c_proj.weight"),
        ("attprojb", (L, C), "h.{i}.attn.c_proj.bias"),
        ("ln2w", (L, C), "h.{i}.ln_2.weight"),
        ("ln2b", (L, C), "h.{i}.ln_2.bias"),
        ("fcw", (L, 4 * C, C), "h.{i}.mlp.c_fc.weight"),
        ("fcb", (L, 4 * C), "h.{i}.mlp.c_fc.bias"),
        ("fcprojw", (L, C, 4 * C), "h.{i}.mlp.c_proj.weight"),
        ("fcprojb", (L, C), "h.{i}.mlp.c_proj.bias"),
        ("lnfw", (C,), "ln_f.weight"),  # final LayerNorm
        ("lnfb", (C,), "ln_f.bias"),
    ]


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
    """The weights of a GPT as the 16 llm.c tensors (fp32 numpy arrays, in file order), ready for
    formats.write_model."""
    import torch

    state = model.state_dict()
    out = {}
    for name, shape, parameter in tensors(model.config):
        parts = [state[p] for p in parameter_names(parameter, model.config.n_layer)]
        out[name] = torch.stack(parts).reshape(shape).float().cpu().numpy()  # a copy, not a view of the weights
    return out


def load_params(model, params: dict):
    """Copy the 16 llm.c tensors `params` (as formats.read_model gives them) into a GPT's
    parameters, by name (every parameter must be given, with its shape); returns the model."""
    import torch

    state = {}
    for name, _, parameter in tensors(model.config):
        state.update(split(parameter, params[name], model.config.n_layer))
    model.load_state_dict({p: torch.tensor(value, dtype=torch.float32) for p, value in state.items()})
    return model

