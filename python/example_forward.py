"""engram in a PyTorch forward pass: an Engram module's input rows come from engram, on the GPU, waited for
on the current stream, for a decode loop of a few sequences. Needs a store (engram synth + engram ingest).

    ENGRAM_LIBRARY=.../libengram.so.0 PYTHONPATH=python python3 python/example_forward.py STORE_DIR
"""

import sys

import torch

import engram


def rms_norm(x, eps=1e-6):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class EngramModule(torch.nn.Module):
    """The reference's Engram block on engram's rows: key/value projections of the dequantised rows, the
    gate (RMSNorm dot product, signed square root, sigmoid) and the residual add."""

    def __init__(self, row_width, hidden):
        super().__init__()
        self.key = torch.nn.Linear(row_width, hidden, bias=False, dtype=torch.bfloat16)
        self.value = torch.nn.Linear(row_width, hidden, bias=False, dtype=torch.bfloat16)

    def forward(self, h, rows_bf16):
        k, v = self.key(rows_bf16), self.value(rows_bf16)
        score = (rms_norm(h) * rms_norm(k)).sum(-1, keepdim=True) / h.shape[-1] ** 0.5
        gate = torch.sigmoid(torch.sign(score) * score.abs().sqrt())
        return h + gate * v


def main(store_dir):
    store = engram.Store(store_dir)
    rt = engram.Runtime(store, backend="gpu", resident=True, hbm_cache_bytes=64 << 20, max_tokens=1024)
    info, hidden = store.info, 512
    layers = [EngramModule(info["columns"] * info["dim"], hidden).cuda() for _ in range(info["num_layers"])]
    seqs = [rt.sequence() for _ in range(4)]
    h = torch.zeros(len(seqs), hidden, device="cuda", dtype=torch.bfloat16)
    for k in range(16):
        step = rt.submit([(s, [(7919 * (k + 1) + 13 * q) % info["compressed_vocab_size"]]) for q, s in enumerate(seqs)])
        for l, module in enumerate(layers):
            rt.wait_stream(step, l)  # the current stream waits on the device for the layer's rows
            out = rt.output(step, l)
            h = module(h, out.bf16)
            rt.done_stream(step, l)
        rt.finish(step)
    torch.cuda.synchronize()
    print(f"{len(seqs)} sequences x 16 decode steps through {len(layers)} Engram modules: |h| = {h.float().norm():.3f}")
    print(f"engram: {rt.stats()['cache_hits']} HBM cache hits, path {rt.stats()['path']}")
    rt.close()
    store.close()


if __name__ == "__main__":
    main(sys.argv[1])
