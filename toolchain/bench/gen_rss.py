"""Peak RSS of one generation in a fresh process: `python -m toolchain.bench.gen_rss KIND ...` prints JSON.

KIND ours DECODER EMBEDDING THREADS | genai DIR THREADS | torch HF_DIR THREADS; then PROMPT_IDS (comma
list) and NEW_TOKENS. A process of its own, so one candidate's buffers do not count for the next.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> None:
    kind, *rest = argv
    ids, tokens = [int(t) for t in rest[-2].split(",")], int(rest[-1])
    if kind == "ours":
        from export.gen_session import GenSessions
        from export.generate import generate

        sessions = GenSessions(rest[0], rest[1], threads=int(rest[2]))
        generate(sessions, ids, max_new_tokens=tokens)
    elif kind == "genai":
        import onnxruntime_genai as og

        from export.genai import genai_generate

        genai_generate(og.Model(rest[0]), ids, tokens, min_new_tokens=tokens)
    else:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(int(rest[1]))
        model = AutoModelForCausalLM.from_pretrained(rest[0], dtype=torch.float32).eval()
        with torch.no_grad():
            model.generate(torch.tensor([ids]), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    from toolchain.bench.peak import status_kb

    print(json.dumps({"peak_rss_mb": (status_kb("VmHWM") or 0) / 1024}))


if __name__ == "__main__":
    main(sys.argv[1:])
