"""Plausible wrong answers to milestone 2 (CURRICULUM.md); each must fail with a teaching message.

Where a wrong answer is the reference with one mistake, ``variant`` derives it from the code.
"""

from pathlib import Path

from ftlab.course.wrong import WrongAnswer, variant, variants

ROOT = Path(__file__).resolve().parents[2]


_CALL = "LoRALinear(getattr(parent, child), r, alpha, dropout)"
_PRODUCT = "(self.lora_B.float() @ self.lora_A.float())"

WRONG_ANSWERS = [
    WrongAnswer(task="M2.1", label="B initialised randomly", message_contains=("B random",),
                code=variant(ROOT, "M2.1", "torch.zeros(out_features, r,",
                             "0.02 * torch.randn(out_features, r,")),
    WrongAnswer(task="M2.1", label="scaling alpha instead of alpha / r",
                message_contains=("alpha instead of alpha / r",),
                code=variant(ROOT, "M2.1", "self.scaling = alpha / r", "self.scaling = alpha")),
    WrongAnswer(task="M2.1", label="dropout probability ignored",
                message_contains=("nn.Dropout of the given probability",),
                code=variant(ROOT, "M2.1", "nn.Dropout(dropout)", "nn.Dropout()")),
    WrongAnswer(task="M2.1", label="A created in float32 whatever the base dtype",
                message_contains=("base weight's dtype",),
                code=variant(ROOT, "M2.1", "torch.empty(r, in_features, dtype=weight.dtype,",
                             "torch.empty(r, in_features,")),
    WrongAnswer(task="M2.2", label="dropout applied to the base path",
                message_contains=("dropout applied to the base path",),
                code='''
                    x = self.lora_dropout(x)
                    return self.base_layer(x) + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)
                '''),
    WrongAnswer(task="M2.2", label="transposes swapped", message_contains=("transposes swapped",),
                code="return self.base_layer(x) + self.scaling * (x @ self.lora_A @ self.lora_B)"),
    WrongAnswer(task="M2.2", label="dropout applied after B (to the whole update)",
                message_contains=("dropout applied after B",),
                code="return self.base_layer(x) + self.scaling * self.lora_dropout("
                     "x @ self.lora_A.T @ self.lora_B.T)"),
    WrongAnswer(task="M2.2", label="dropout applied between A and B",
                message_contains=("dropout applied between A and B",),
                code="return self.base_layer(x) + self.scaling * ("
                     "self.lora_dropout(x @ self.lora_A.T) @ self.lora_B.T)"),
    WrongAnswer(task="M2.3", label="LM head adapted", message_contains=("lm_head",),
                code='''
                    return [name for name, module in model.named_modules() if is_linear(module)
                            and (names is None or name.rsplit(".", 1)[-1] in names)]
                '''),
    WrongAnswer(task="M2.3", label="LM head requested by name silently dropped",
                message_contains=("requested by name silently dropped",),
                code='''
                    if names is None:
                        model_type = getattr(getattr(model, "config", None), "model_type", None)
                        names = KNOWN_TARGETS.get(model_type)
                    head = getattr(model, "get_output_embeddings", lambda: None)()
                    return [name for name, module in model.named_modules()
                            if is_linear(module) and module is not head
                            and (names is None or name.rsplit(".", 1)[-1] in names)]
                '''),
    WrongAnswer(task="M2.3", label="LM head requested by name adapted",
                message_contains=("requested by name adapted",),
                code=variant(ROOT, "M2.3", "if module is head:",
                             "if module is head and not explicit:")),
    WrongAnswer(task="M2.4", label="base left trainable", message_contains=("base left trainable",),
                code='''
                    for name in targets:
                        parent_name, _, child = name.rpartition(".")
                        parent = model.get_submodule(parent_name) if parent_name else model
                        layer = LoRALinear(getattr(parent, child), r, alpha, dropout)
                        for p in layer.base_layer.parameters():
                            p.requires_grad_(True)
                        setattr(parent, child, layer)
                    return model
                '''),
    WrongAnswer(task="M2.4", label="norms and embeddings left trainable",
                message_contains=("norms trainable",),
                code='''
                    for name in targets:
                        parent_name, _, child = name.rpartition(".")
                        parent = model.get_submodule(parent_name) if parent_name else model
                        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
                    return model
                '''),
    WrongAnswer(task="M2.4", label="model frozen after wrapping (adapters frozen too)",
                message_contains=("freeze the model before wrapping",),
                code='''
                    for name in targets:
                        parent_name, _, child = name.rpartition(".")
                        parent = model.get_submodule(parent_name) if parent_name else model
                        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
                    model.requires_grad_(False)
                    return model
                '''),
    WrongAnswer(task="M2.5", label="scale applied twice", message_contains=("scale applied twice",),
                code=variant(ROOT, "M2.5", "return self.scaling *",
                             "return self.scaling * self.scaling *")),
    WrongAnswer(task="M2.5", label="update transposed: (in, out) instead of (out, in)",
                message_contains=("shape (16, 24) = (out, in)",),
                code=variant(ROOT, "M2.5", "(self.lora_B.float() @ self.lora_A.float())",
                             "(self.lora_A.float().T @ self.lora_B.float().T)")),
    WrongAnswer(task="M2.5", label="B transposed in the product (shape error)",
                message_contains=("B (out, r) @ A (r, in)", "RuntimeError"),
                code=variant(ROOT, "M2.5", "(self.lora_B.float() @ self.lora_A.float())",
                             "(self.lora_B.float().T @ self.lora_A.float())")),
    WrongAnswer(task="M2.5", label="update computed in the adapter's dtype",
                message_contains=("compute the merge in float32",),
                code=variant(ROOT, "M2.5", "(self.lora_B.float() @ self.lora_A.float())",
                             "(self.lora_B @ self.lora_A)")),
    WrongAnswer(task="M2.5", label="product in bfloat16, cast to float32 afterwards",
                message_contains=("cast A and B to float32 before the product",),
                code=variant(ROOT, "M2.5", "(self.lora_B.float() @ self.lora_A.float())",
                             "(self.lora_B @ self.lora_A).float()")),
    # issue #30: the specification over its input domain, not one worked example
    WrongAnswer(task="M2.1", label="integer division alpha // r (0 when alpha < r)",
                message_contains=("integer division",),
                code=variant(ROOT, "M2.1", "self.scaling = alpha / r",
                             "self.scaling = alpha // r")),
    WrongAnswer(task="M2.1", label="A created on the CPU whatever the base device",
                message_contains=("base weight's device",),
                code=variant(ROOT, "M2.1", "device=weight.device))\nnn.init", "))\nnn.init")),
    WrongAnswer(task="M2.1", label="sizes read from base.weight.shape (Conv1D is (in, out))",
                message_contains=("linear_dims",),
                code=variant(ROOT, "M2.1", "self.base_layer = base\n",
                             "self.base_layer = base\nout_features, in_features = "
                             "base.weight.shape\n")),
    WrongAnswer(task="M2.1", label="dtype and device from base.weight (a 4-bit base has none)",
                message_contains=("dense_weight(base)",),
                code=variants(ROOT, "M2.1", ("dtype=weight.dtype,", "dtype=base.weight.dtype,"),
                              ("device=weight.device)", "device=base.weight.device)"))),
    WrongAnswer(task="M2.1", label="whole layer frozen after creating A and B, A unfrozen only",
                message_contains=("freeze only the base",),
                code=variant(ROOT, "M2.1", "self.lora_dropout = nn.Dropout(dropout) if dropout "
                             "> 0 else nn.Identity()\n",
                             "self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else "
                             "nn.Identity()\nself.requires_grad_(False)\n"
                             "self.lora_A.requires_grad_(True)\n")),
    WrongAnswer(task="M2.1", label="only the base weight frozen (bias left trainable)",
                message_contains=("weight and bias",),
                code=variant(ROOT, "M2.1", "for p in base.parameters():\n    "
                             "p.requires_grad_(False)", "base.weight.requires_grad_(False)")),
    WrongAnswer(task="M2.1", label="A a plain tensor, not an nn.Parameter",
                message_contains=("nn.Parameter",),
                code=variant(ROOT, "M2.1", "self.lora_A = nn.Parameter(torch.empty(r, "
                             "in_features, dtype=weight.dtype,",
                             "self.lora_A = (torch.empty(r, in_features, requires_grad=True, "
                             "dtype=weight.dtype,")),
    WrongAnswer(task="M2.2", label="F.dropout(x, p): dropout active in eval mode too",
                message_contains=("dropout active in eval mode",),
                code=variant(ROOT, "M2.2", "self.lora_dropout(x)",
                             "torch.nn.functional.dropout(x, getattr(self.lora_dropout, 'p', "
                             "0.0))")),
    WrongAnswer(task="M2.2", label="scaling recomputed as alpha / r (ignores adapters_disabled)",
                message_contains=("adapters_disabled",),
                code=variant(ROOT, "M2.2", "* self.scaling", "* (self.alpha / self.r)")),
    WrongAnswer(task="M2.2", label="update added in the adapter's dtype (float32 output)",
                message_contains=("base output's dtype",),
                code=variant(ROOT, "M2.2", "(low_rank @ self.lora_B.T).to(result.dtype)",
                             "(low_rank @ self.lora_B.T)")),
    WrongAnswer(task="M2.2", label="x not cast to the adapter's dtype",
                message_contains=("cast x to lora_A's dtype",),
                code=variant(ROOT, "M2.2", "    adapter_input = adapter_input.to("
                             "self.lora_A.dtype)", "    pass")),
    WrongAnswer(task="M2.2", label="base path under torch.no_grad() (no gradient to x)",
                message_contains=("base path under torch.no_grad()",),
                code=variant(ROOT, "M2.2", "result = self.base_layer(x)",
                             "with torch.no_grad():\n    result = self.base_layer(x)")),
    WrongAnswer(task="M2.2", label="lora_A used through .data (A gets no gradient)",
                message_contains=(".data or .detach()",),
                code=variant(ROOT, "M2.2", "adapter_input @ self.lora_A.T",
                             "adapter_input @ self.lora_A.data.T")),
    WrongAnswer(task="M2.2", label="base path as F.linear(x, W, b) (wrong for Conv1D)",
                message_contains=("self.base_layer(x)",),
                code=variant(ROOT, "M2.2", "result = self.base_layer(x)",
                             "result = torch.nn.functional.linear(x, self.base_layer.weight, "
                             "self.base_layer.bias)")),
    WrongAnswer(task="M2.2", label="scaling applied in place to the adapter input (changes x)",
                message_contains=("x modified in place",),
                code=variant(ROOT, "M2.2", "low_rank = (adapter_input @ self.lora_A.T) * "
                             "self.scaling", "adapter_input *= self.scaling\n"
                             "low_rank = adapter_input @ self.lora_A.T")),
    WrongAnswer(task="M2.2", label="scaling applied twice (on x @ A.T and on the update)",
                message_contains=("scaling applied twice",),
                code=variant(ROOT, "M2.2", "return result + (low_rank",
                             "return result + self.scaling * (low_rank")),
    WrongAnswer(task="M2.3", label="unknown model_type adapts nothing (no generic rule)",
                message_contains=("adapted nothing",),
                code=variant(ROOT, "M2.3", "names = KNOWN_TARGETS.get(model_type)",
                             "names = KNOWN_TARGETS.get(model_type, ())")),
    WrongAnswer(task="M2.3", label="requested names matched as substrings",
                message_contains=("substring",),
                code=variant(ROOT, "M2.3", 'name.rsplit(".", 1)[-1] not in names',
                             "not any(n in name for n in names)")),
    WrongAnswer(task="M2.3", label="requested names matched as suffixes (endswith)",
                message_contains=("suffix",),
                code=variant(ROOT, "M2.3", 'name.rsplit(".", 1)[-1] not in names',
                             "not any(name.endswith(n) for n in names)")),
    WrongAnswer(task="M2.3", label="LM head recognised by the name lm_head",
                message_contains=("get_output_embeddings() returns",),
                code=variant(ROOT, "M2.3", "if module is head:",
                             'if name.rsplit(".", 1)[-1] == "lm_head":')),
    WrongAnswer(task="M2.3", label="get_output_embeddings called on a model without it",
                message_contains=("only when the model has that method",),
                code=variant(ROOT, "M2.3", 'model.get_output_embeddings() if hasattr(model, '
                             '"get_output_embeddings") else None',
                             "model.get_output_embeddings()")),
    WrongAnswer(task="M2.3", label="KNOWN_TARGETS indexed (KeyError for an unknown model)",
                message_contains=("KNOWN_TARGETS.get",),
                code=variant(ROOT, "M2.3", "names = KNOWN_TARGETS.get(model_type)",
                             "names = KNOWN_TARGETS[model_type]")),
    WrongAnswer(task="M2.3", label="names=[] treated like None",
                message_contains=("names=[] treated like None",),
                code=variant(ROOT, "M2.3", "if names is None:", "if not names:")),
    WrongAnswer(task="M2.4", label="r and alpha swapped in the LoRALinear call",
                message_contains=("LoRALinear's order",),
                code=variant(ROOT, "M2.4", _CALL,
                             "LoRALinear(getattr(parent, child), alpha, r, dropout)")),
    WrongAnswer(task="M2.4", label="rsplit('.', 1) fails on a top-level name",
                message_contains=("top-level name",),
                code=variant(ROOT, "M2.4", 'parent_name, _, child = name.rpartition(".")\n    '
                             "parent = model.get_submodule(parent_name) if parent_name else "
                             "model", 'parent_name, child = name.rsplit(".", 1)\n    '
                             "parent = model.get_submodule(parent_name)")),
    WrongAnswer(task="M2.4", label="injected into a deep copy, which is returned",
                message_contains=("modify the model in place",),
                code=variant(ROOT, "M2.4", "for p in model.parameters():",
                             "model = __import__('copy').deepcopy(model)\n"
                             "for p in model.parameters():")),
    WrongAnswer(task="M2.4", label="a copy of the target wrapped",
                message_contains=("not a copy",),
                code=variant(ROOT, "M2.4", _CALL, "LoRALinear(__import__('copy').deepcopy("
                             "getattr(parent, child)), r, alpha, dropout)")),
    WrongAnswer(task="M2.4", label="targets found by scanning named_modules (typos skipped)",
                message_contains=("skipped silently",),
                code=variant(ROOT, "M2.4", "for name in targets:",
                             "for name, _ in list(model.named_modules()):\n"
                             "    if name not in targets:\n        continue")),
    WrongAnswer(task="M2.4", label="only weights frozen (biases left trainable)",
                message_contains=("freeze every parameter",),
                code=variant(ROOT, "M2.4", "for p in model.parameters():\n    "
                             "p.requires_grad_(False)", "for n, p in model.named_parameters():\n"
                             '    if n.endswith("weight"):\n        p.requires_grad_(False)')),
    WrongAnswer(task="M2.4", label="the caller's targets sorted in place",
                message_contains=("caller's targets",),
                code=variant(ROOT, "M2.4", "for name in targets:",
                             "targets.sort()\nfor name in targets:")),
    WrongAnswer(task="M2.5", label="scaling recomputed as alpha / r",
                message_contains=("self.scaling",),
                code=variant(ROOT, "M2.5", "return self.scaling *",
                             "return self.alpha / self.r *")),
    WrongAnswer(task="M2.5", label="update moved to the CPU",
                message_contains=("adapter's device",),
                code=variant(ROOT, "M2.5", _PRODUCT,
                             "(self.lora_B.float().cpu() @ self.lora_A.float().cpu())")),
    WrongAnswer(task="M2.5", label="scaling multiplied into B in place (.float() is no copy)",
                message_contains=("in-place op on A or B",),
                code=variant(ROOT, "M2.5", "return self.scaling * " + _PRODUCT,
                             "b = self.lora_B.float()\nb *= self.scaling\n"
                             "return b @ self.lora_A.float()")),
]
