#!/usr/bin/env python3
"""Numerics of kubetune_varlen's attention on a GPU: torch's varlen kernels with the cuDNN SDPA
backend enabled and disabled (torch picks cuDNN for varlen_attn on Hopper in some versions),
against a float64 per-sequence reference, forward output and q/k/v gradients, with GQA (32
query heads, 8 KV heads, head dim 128: the Mistral-7B/Llama-8B layout) on a packed batch of
rows of uneven length. Prints one JSON line (relative errors ||x - ref|| / ||ref||).

    python bench/varlen_check.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "trainer-image"))


def reference(q: Any, k: Any, v: Any, lengths: list[int]) -> Any:
    import torch
    import torch.nn.functional as F

    groups = q.shape[1] // k.shape[1]
    outs, a = [], 0
    for n in lengths:
        qs = q[a : a + n].double().transpose(0, 1)[None]
        ks = k[a : a + n].double().repeat_interleave(groups, dim=1).transpose(0, 1)[None]
        vs = v[a : a + n].double().repeat_interleave(groups, dim=1).transpose(0, 1)[None]
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            outs.append(
                F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)[0].transpose(0, 1)
            )
        a += n
    return torch.cat(outs)


def main() -> int:
    import torch
    from kubetune_trainer import speed

    lengths = [311, 57, 1024, 140, 502]
    total = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda")
    g = torch.Generator(device="cuda").manual_seed(1)
    q0 = torch.randn(total, 32, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    k0 = torch.randn(total, 8, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    v0 = torch.randn(total, 8, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    dout = torch.randn(total, 32, 128, device="cuda", generator=g, dtype=torch.bfloat16)

    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q0, k0, v0))
    ref = reference(qr, kr, vr, lengths)
    ref.backward(dout.double())
    refs = {"out": ref.detach(), "dq": qr.grad, "dk": kr.grad, "dv": vr.grad}

    speed._GQA_NATIVE = None
    result: dict[str, Any] = {"torch": torch.__version__, "cudnn": torch.backends.cudnn.version()}
    for cudnn in (True, False):
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        speed._GQA_NATIVE = speed._probe_gqa_native()
        q, k, v = (t.detach().clone().requires_grad_() for t in (q0, k0, v0))
        out = speed._varlen_call(q, k, v, cu.to(torch.int32), max(lengths), None)
        out.backward(dout)
        got = {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}
        errs = {
            name: float((got[name].double() - refs[name]).norm() / refs[name].norm())
            for name in refs
        }
        errs["finite"] = all(bool(torch.isfinite(t).all()) for t in got.values())
        errs["gqa_native"] = speed._GQA_NATIVE
        result["cudnn_on" if cudnn else "cudnn_off"] = errs
    torch.backends.cuda.enable_cudnn_sdp(True)
    print(json.dumps(result))
    ok = all(
        result[key][n] < 2e-2 and result[key]["finite"]
        for key in ("cudnn_on", "cudnn_off")
        for n in ("out", "dq", "dk", "dv")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
