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
]
