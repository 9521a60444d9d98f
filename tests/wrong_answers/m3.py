"""Plausible wrong answers to milestone 3 (CURRICULUM.md); each must fail with a teaching message.

Where a wrong answer is the reference with one mistake, ``variant`` derives it from the code.
"""

from pathlib import Path

from ftlab.course.wrong import WrongAnswer, variant

ROOT = Path(__file__).resolve().parents[2]

WRONG_ANSWERS = [
    WrongAnswer(task="M3.1", label="symmetric 16-level grid without exact zero",
                message_contains=("without exact zero",),
                code='''
                    levels = torch.special.ndtri(torch.linspace(1 - NF4_OFFSET, NF4_OFFSET, 16)
                                                 .double()).float()
                    return levels / levels.max()
                '''),
    WrongAnswer(task="M3.1", label="levels not normalised to [-1, 1]",
                message_contains=("divide by the largest",),
                code=variant(ROOT, "M3.1", "return levels / levels.max()", "return levels")),
    WrongAnswer(task="M3.2", label="one global absmax", message_contains=("global absmax",),
                code='''
                    flat = weight.detach().reshape(-1).float()
                    absmax = flat.abs().max()
                    codes = nearest_code(flat * (1.0 / absmax), nf4_codebook())
                    codes = torch.cat([codes, codes.new_full((n % 2,), 7)])
                    return (codes[0::2] << 4) | codes[1::2], absmax
                '''),
    WrongAnswer(task="M3.2", label="nibble order wrong", message_contains=("nibble order wrong",),
                code=variant(ROOT, "M3.2", "(codes[0::2] << 4) | codes[1::2]",
                             "(codes[1::2] << 4) | codes[0::2]")),
    WrongAnswer(task="M3.2", label="odd-size padding nibble wrong (0, not the zero level's 7)",
                message_contains=("padding nibble wrong",),
                code='''
                    blocks = as_blocks(weight.detach().reshape(-1).float(), block_size)
                    absmax = blocks.abs().amax(dim=1)
                    scaled = blocks * (1.0 / absmax.clamp(min=TINY)).unsqueeze(1)
                    codes = nearest_code(scaled.reshape(-1)[:n], nf4_codebook())
                    codes = torch.cat([codes, codes.new_zeros(n % 2)])
                    return (codes[0::2] << 4) | codes[1::2], absmax
                '''),
    WrongAnswer(task="M3.2", label="one absmax per row instead of per block of 64",
                message_contains=("absmax per row",),
                code=variant(ROOT, "M3.2",
                             "as_blocks(weight.detach().reshape(-1).float(), block_size)",
                             "weight.detach().float().reshape(len(weight), -1)")),
    WrongAnswer(task="M3.2", label="padding bytes of the last block kept",
                message_contains=("padding bytes kept",),
                code=variant(ROOT, "M3.2", "return packed[: (n + 1) // 2], absmax",
                             "return packed, absmax")),
    WrongAnswer(task="M3.3", label="nibbles unpacked low first", message_contains=("high nibble",),
                code=variant(ROOT, "M3.3", "[code[byte >> 4], code[byte & 0xF]]",
                             "[code[byte & 0xF], code[byte >> 4]]")),
    WrongAnswer(task="M3.4", label="mean not subtracted", message_contains=("mean not subtracted",),
                code=variant(ROOT, "M3.4", "offset = absmax.mean()",
                             "offset = absmax.new_zeros(())")),
    WrongAnswer(task="M3.4", label="one scale for all absmax values",
                message_contains=("block 256",),
                code=variant(ROOT, "M3.4", "as_blocks(absmax - offset, block_size)",
                             "(absmax - offset).reshape(1, -1)")),
    WrongAnswer(task="M3.5", label="weight kept in full precision",
                message_contains=("weight kept in full precision",),
                code=variant(ROOT, "M3.5", 'self.register_buffer("bias", bias)',
                             'self.register_buffer("bias", bias)\n'
                             'self.register_buffer("weight_copy", linear.weight.detach().clone())')),
    WrongAnswer(task="M3.5", label="bias left trainable",
                message_contains=("gradient to the frozen weight",),
                code=variant(ROOT, "M3.5", 'self.register_buffer("bias", bias)',
                             "self.bias = None if bias is None else nn.Parameter(bias)")),
    WrongAnswer(task="M3.5", label="float weight kept as a trainable parameter",
                message_contains=("gradient to the frozen weight",),
                code=variant(ROOT, "M3.5", 'self.register_buffer("bias", bias)',
                             'self.register_buffer("bias", bias)\n'
                             "self.weight = nn.Parameter(linear.weight.detach().clone())")),
    WrongAnswer(task="M3.6", label="second-level scales not counted",
                message_contains=("32 bits per 256 blocks",),
                code=variant(ROOT, "M3.6", " + 32 / (block_size * absmax_block_size)", "")),
    WrongAnswer(task="M3.6", label="absmax counted in bytes, not bits",
                message_contains=("32 bits per block",),
                code=variant(ROOT, "M3.6", "4 + 32 / block_size", "4 + 4 / block_size")),
    # --- round 3 (issue #30): mistakes derived from the specification's whole input domain ---
    WrongAnswer(task="M3.1", label="levels divided by the maximum in float64 (an ulp off)",
                message_contains=("rounding order",),
                code=variant(ROOT, "M3.1", "]).float().sort().values\nreturn levels / levels.max()",
                             "]).sort().values\nreturn (levels / levels.max()).float()")),
    WrongAnswer(task="M3.1", label="zero level is -ndtri(0.5) = -0.0",
                message_contains=("-0.0",),
                code="""
                    positive = torch.linspace(NF4_OFFSET, 0.5, 9)[:-1].double()
                    negative = torch.linspace(NF4_OFFSET, 0.5, 8).double()
                    levels = torch.cat([torch.special.ndtri(positive),
                                        -torch.special.ndtri(negative)]).float().sort().values
                    return levels / levels.max()
                """),
    WrongAnswer(task="M3.2", label="absmax 0 not clamped (an all-zero block gives NaN)",
                message_contains=("NaN",),
                code=variant(ROOT, "M3.2", "(1.0 / absmax.clamp(min=TINY))", "(1.0 / absmax)")),
    WrongAnswer(task="M3.2", label="absmax clamped to an epsilon of 1e-8",
                message_contains=("epsilon",),
                code=variant(ROOT, "M3.2", "absmax.clamp(min=TINY)", "absmax.clamp(min=1e-8)")),
    WrongAnswer(task="M3.2", label="block divided by its absmax (not times 1 / absmax)",
                message_contains=("divided by the absmax",),
                code=variant(ROOT, "M3.2", "blocks * (1.0 / absmax.clamp(min=TINY)).unsqueeze(1)",
                             "blocks / absmax.clamp(min=TINY).unsqueeze(1)")),
    WrongAnswer(task="M3.2", label="block_size ignored (64 hard-coded)",
                message_contains=("block_size ignored",),
                code=variant(ROOT, "M3.2", ".float(), block_size)", ".float(), 64)")),
    WrongAnswer(task="M3.2", label="scaled in the weight's dtype (bfloat16 maths)",
                message_contains=("float32 whatever the weight's dtype",),
                code="""
                    blocks = as_blocks(weight.detach().reshape(-1), block_size)
                    absmax = blocks.abs().amax(dim=1)
                    scaled = blocks * (1.0 / absmax.clamp(min=TINY)).unsqueeze(1)
                    codes = nearest_code(scaled.reshape(-1).float(), nf4_codebook())
                    packed = (codes[0::2] << 4) | codes[1::2]
                    return packed[: (n + 1) // 2], absmax.float()
                """),
    WrongAnswer(task="M3.2", label="nearest level by argmin |x - level| (ties round up)",
                message_contains=("halfway",),
                code=variant(ROOT, "M3.2",
                             "codes = nearest_code(scaled.reshape(-1), nf4_codebook())",
                             "levels = nf4_codebook().to(scaled.device)\n"
                             "codes = (scaled.reshape(-1, 1) - levels).abs().argmin(1)"
                             ".to(torch.uint8)")),
    WrongAnswer(task="M3.2", label="weight not detached (absmax keeps the graph)",
                message_contains=("not detached",),
                code=variant(ROOT, "M3.2", "weight.detach().reshape(-1)", "weight.reshape(-1)")),
    WrongAnswer(task="M3.2", label="weight scaled in place", message_contains=("in place",),
                code=variant(ROOT, "M3.2", "blocks * (1.0 / absmax.clamp(min=TINY)).unsqueeze(1)",
                             "blocks.mul_((1.0 / absmax.clamp(min=TINY)).unsqueeze(1))")),
    WrongAnswer(task="M3.2", label="packed bytes created on the CPU", message_contains=("device",),
                code=variant(ROOT, "M3.2", "packed = (codes[0::2] << 4) | codes[1::2]",
                             "packed = torch.zeros(codes.numel() // 2, dtype=torch.uint8)\n"
                             "packed |= (codes[0::2] << 4) | codes[1::2]")),
    WrongAnswer(task="M3.3", label="dequantized with block_size 64 whatever the argument",
                message_contains=("block_size",),
                code=variant(ROOT, "M3.3", "reshape(-1)[:n], block_size)", "reshape(-1)[:n], 64)")),
    WrongAnswer(task="M3.3", label="level times absmax computed in the output dtype",
                message_contains=("multiplied in",),
                code=variant(ROOT, "M3.3", "(levels * absmax.unsqueeze(1))",
                             "(levels.to(dtype) * absmax.unsqueeze(1).to(dtype))")),
    WrongAnswer(task="M3.3", label="reshaped to 2-D (shape[0], -1) only",
                message_contains=("any number of dimensions",),
                code=variant(ROOT, "M3.3", ".reshape(shape).to(dtype)",
                             ".reshape(shape[0], -1).to(dtype)")),
    WrongAnswer(task="M3.4", label="padded before subtracting the mean",
                message_contains=("padded before subtracting",),
                code=variant(ROOT, "M3.4", "as_blocks(absmax - offset, block_size)",
                             "as_blocks(absmax, block_size) - offset")),
    WrongAnswer(task="M3.4", label="mean taken over the zero-padded blocks",
                message_contains=("mean over the padding",),
                code=variant(ROOT, "M3.4",
                             "offset = absmax.mean()\n"
                             "blocks = as_blocks(absmax - offset, block_size)",
                             "blocks = as_blocks(absmax, block_size)\noffset = blocks.mean()\n"
                             "blocks = blocks - offset")),
    WrongAnswer(task="M3.4", label="codes of the padding kept",
                message_contains=("codes of the padding kept",),
                code=variant(ROOT, "M3.4", "scaled.reshape(-1)[: absmax.numel()]",
                             "scaled.reshape(-1)")),
    WrongAnswer(task="M3.4", label="offset returned as a Python float",
                message_contains=("Python number",),
                code=variant(ROOT, "M3.4", "offset = absmax.mean()",
                             "offset = absmax.mean().item()")),
    WrongAnswer(task="M3.4", label="scale 0 not clamped (equal absmax values give NaN)",
                message_contains=("NaN",),
                code=variant(ROOT, "M3.4", "(1.0 / scales.clamp(min=TINY))", "(1.0 / scales)")),
    WrongAnswer(task="M3.4", label="centred values divided by the scale",
                message_contains=("divided by the scale",),
                code=variant(ROOT, "M3.4", "blocks * (1.0 / scales.clamp(min=TINY)).unsqueeze(1)",
                             "blocks / scales.clamp(min=TINY).unsqueeze(1)")),
    WrongAnswer(task="M3.4", label="ties rounded up (bucketize right=True)",
                message_contains=("halfway",),
                code=variant(ROOT, "M3.4",
                             "codes = nearest_code(scaled.reshape(-1)[: absmax.numel()], "
                             "dynamic_code())",
                             "code = dynamic_code().to(absmax.device)\n"
                             "codes = torch.bucketize(scaled.reshape(-1)[: absmax.numel()], "
                             "(code[1:] + code[:-1]) / 2, right=True).to(torch.uint8)")),
    WrongAnswer(task="M3.5", label="double_quant argument ignored",
                message_contains=("double_quant ignored",),
                code=variant(ROOT, "M3.5", "quantize_weight(linear.weight.detach(), block_size, "
                             "double_quant)",
                             "quantize_weight(linear.weight.detach(), block_size)")),
    WrongAnswer(task="M3.5", label="bias cloned without detach (gradients reach the original)",
                message_contains=("bias not detached",),
                code=variant(ROOT, "M3.5", "linear.bias.detach().clone()", "linear.bias.clone()")),
    WrongAnswer(task="M3.5", label="bias shares memory with the original layer",
                message_contains=("bias not copied",),
                code=variant(ROOT, "M3.5", "linear.bias.detach().clone()", "linear.bias.detach()")),
    WrongAnswer(task="M3.5", label="bias kept as a frozen nn.Parameter",
                message_contains=("frozen nn.Parameter",),
                code=variant(ROOT, "M3.5", 'self.register_buffer("bias", bias)',
                             "self.bias = None if bias is None else "
                             "nn.Parameter(bias, requires_grad=False)")),
    WrongAnswer(task="M3.5", label="a zero bias registered when the linear has none",
                message_contains=("bias None",),
                code=variant(ROOT, "M3.5", "bias = None if linear.bias is None else",
                             "bias = torch.zeros(self.out_features) if linear.bias is None else")),
    WrongAnswer(task="M3.5", label="buffers not persistent (missing from the state dict)",
                message_contains=("persistent=False",),
                code=variant(ROOT, "M3.5", "self.register_buffer(name, tensor)",
                             "self.register_buffer(name, tensor, persistent=False)")),
    WrongAnswer(task="M3.5", label="float weight kept as a plain attribute",
                message_contains=("plain attribute",),
                code=variant(ROOT, "M3.5", 'self.register_buffer("bias", bias)',
                             'self.register_buffer("bias", bias)\n'
                             "self.weight = linear.weight.detach()")),
    WrongAnswer(task="M3.6", label="absmax_block_size ignored (256 hard-coded)",
                message_contains=("absmax_block_size ignored",),
                code=variant(ROOT, "M3.6", "32 / (block_size * absmax_block_size)",
                             "32 / (block_size * 256)")),
]
