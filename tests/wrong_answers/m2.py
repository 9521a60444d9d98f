"""Plausible wrong answers to milestone 2 (CURRICULUM.md); each must fail with a teaching message.

Where a wrong answer is the reference with one mistake, ``variant`` derives it from the code.
"""

from pathlib import Path

from ftlab.course.wrong import WrongAnswer, variant

ROOT = Path(__file__).resolve().parents[2]

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
]
