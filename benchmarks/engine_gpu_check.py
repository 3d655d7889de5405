"""GPU correctness check of the engine's CUDA-graph decode (CI has no GPU, so this is run by hand):

    python benchmarks/engine_gpu_check.py

In fp32 on CUDA, the graph decode must give the same tokens as the dynamic (eager) decode for greedy and
seeded sampled requests, with more requests than rows (continuous batching reuses rows). Prints a summary
line and exits non-zero on a mismatch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatforge.engine import Engine, SamplingParams  # noqa: E402
from chatforge.model import GPT, ModelConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import _tokenizer  # noqa: E402


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tok = _tokenizer(2048)
    torch.manual_seed(0)
    failures = 0
    for style in ("llama", "gpt2"):
        cfg = ModelConfig.preset_style(style, vocab_size=2048, n_layer=2, d_model=128, n_head=4, max_seq_len=128)
        model = GPT(cfg).cuda().eval()
        with torch.no_grad():
            model.lm_head.weight.mul_(8) if not cfg.tie_embeddings else model.wte.weight.mul_(3)
        gen = torch.Generator().manual_seed(1)
        prompts = [torch.randint(10, 2000, (int(torch.randint(4, 40, (1,), generator=gen)),), generator=gen).tolist()
                   for _ in range(7)]
        params = [SamplingParams(max_tokens=20 + 7 * i, temperature=0.0 if i % 2 else 0.9, top_k=30, seed=i)
                  for i in range(len(prompts))]
        outs = {}
        for mode in ("dynamic", "static", "graph"):
            eng = Engine(model, tok, max_batch=3, decode_mode=mode)
            outs[mode] = [c.token_ids for c in eng.generate(prompts, params)]
            outs[mode + "_again"] = [c.token_ids for c in eng.generate(prompts, params)]  # graph reused
        for mode in ("static", "graph", "graph_again"):
            same = outs[mode] == outs["dynamic"]
            failures += not same
            print(f"{style}: {mode} == dynamic: {same}")
    print("OK" if not failures else f"{failures} MISMATCHES")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
