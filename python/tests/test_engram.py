"""The Python package over libengram.so, on a real store made by the engram CLI (synthetic V4.1
checkpoint, real RocksDB, real io_uring). CPU backend everywhere; with PyTorch and a GPU, the GPU backend's
tensors must equal the CPU backend's.

    ENGRAM_LIBRARY=build/capi/libengram.so.0 ENGRAM_CLI=build/tools/engram PYTHONPATH=python \
        python3 -m unittest discover -s python/tests -v
"""

import os
import subprocess
import tempfile
import unittest

import engram

CLI = os.environ.get("ENGRAM_CLI", "engram")


def make_store(tmp):
    ck, st = os.path.join(tmp, "ck"), os.path.join(tmp, "store")
    subprocess.run([CLI, "synth", "--layout", "deepseek-v4.1-flash", "--scale", "0.0001", "--out", ck, "--quiet"],
                   check=True, capture_output=True)
    subprocess.run([CLI, "ingest", "--layout", os.path.join(ck, "layout.json"), "--checkpoint", ck, "--store", st,
                    "--quiet"], check=True, capture_output=True)
    return st


def tokens(n, start=11):
    return [(i * 7919 + start) % 99000 for i in range(n)]


def as_bytes(view):
    try:
        return view.cpu().numpy().tobytes() if hasattr(view, "cpu") else view.tobytes()
    except (RuntimeError, TypeError):  # bfloat16 has no numpy form: compare its 16-bit patterns
        import torch
        return view.cpu().view(torch.int16).numpy().tobytes()


class EngramCpu(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.store = engram.Store(make_store(cls.tmp.name))

    @classmethod
    def tearDownClass(cls):
        cls.store.close()
        cls.tmp.cleanup()

    def test_info_describes_the_layout(self):
        info = self.store.info
        self.assertEqual(info["num_layers"], 2)
        self.assertEqual(info["columns"], 24)
        self.assertEqual(info["row_bytes"], 264)
        self.assertEqual(self.store.layer_id(0), 1)
        with self.assertRaises(engram.EngramError) as e:
            self.store.layer_id(5)
        self.assertEqual(e.exception.name, "out_of_range")
        self.assertIn("layer index 5", str(e.exception))

    def test_the_same_tokens_give_the_same_rows_and_dead_positions_are_zero(self):
        with engram.Runtime(self.store, backend="cpu") as rt:
            self.assertEqual(rt.backend, "cpu")
            a, b = rt.sequence(), rt.sequence()
            ids = tokens(12)
            dead = [0] * 12
            dead[5] = 1
            step = rt.submit([(a, ids), (b, ids, dead)])
            for layer in range(2):
                rt.wait(step, layer)
                out = rt.output(step, layer)
                self.assertFalse(out.device)
                self.assertEqual(out.tokens, 24)
                rows = as_bytes(out.rows)
                per_seq = 12 * 24 * 264
                per_tok = 24 * 264
                self.assertEqual(len(rows), 2 * per_seq)
                # Tokens before the DEAD one are the same in both; the DEAD one is zero in b only.
                self.assertEqual(rows[:5 * per_tok], rows[per_seq:per_seq + 5 * per_tok])
                self.assertEqual(rows[per_seq + 5 * per_tok:per_seq + 6 * per_tok], bytes(per_tok))
                self.assertNotEqual(rows[5 * per_tok:6 * per_tok], bytes(per_tok))
                self.assertEqual(len(as_bytes(out.bf16)), 2 * 12 * 24 * 256 * 2)
            rt.finish(step)

    def test_a_bad_batch_raises_naming_the_sequence(self):
        with engram.Runtime(self.store, backend="cpu") as rt:
            a = rt.sequence()
            with self.assertRaises(engram.EngramError) as e:
                rt.submit([(a, tokens(3)), (a + 99, tokens(3))])
            self.assertEqual(e.exception.name, "not_found")
            self.assertIn(str(a + 99), str(e.exception))
            with self.assertRaises(engram.EngramError) as e:  # nothing was appended to a
                rt.rollback(a, 1)
            self.assertEqual(e.exception.name, "out_of_range")

    def test_rollback_and_fork_serve_the_retained_history(self):
        with engram.Runtime(self.store, backend="cpu") as rt:
            a = rt.sequence()
            ids = tokens(10, start=3)
            rt.finish(rt.submit([(a, ids)]))
            rt.rollback(a, 4)
            b = rt.fork(a)
            fresh = rt.sequence()
            step = rt.submit([(b, [ids[6]]), (fresh, ids[:7])])
            rt.wait(step, 1)
            rows = as_bytes(rt.output(step, 1).rows)
            per_tok = 24 * 264
            # b's one token (history ids[:6]) reads what the fresh sequence's 7th token reads.
            self.assertEqual(rows[:per_tok], rows[7 * per_tok:8 * per_tok])
            rt.finish(step)

    def test_stats_as_json_and_prometheus(self):
        with engram.Runtime(self.store, backend="cpu") as rt:
            a = rt.sequence()
            rt.finish(rt.submit([(a, tokens(16))]))
            s = rt.stats()
            self.assertEqual(s["steps"], 1)
            self.assertEqual(s["layers"][0]["lookups"], 16 * 24)
            text = rt.stats("prometheus")
            self.assertIn("engram_steps 1\n", text)
            self.assertIn('engram_layers_lookups{layer="14"} 384\n', text)


def gpu_available():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


@unittest.skipUnless(gpu_available(), "skipped: needs PyTorch with a usable GPU")
class EngramGpu(unittest.TestCase):
    def test_gpu_tensors_equal_the_cpu_backend_and_feed_a_forward_pass(self):
        import torch
        with tempfile.TemporaryDirectory() as tmp:
            store = engram.Store(make_store(tmp))
            cpu = engram.Runtime(store, backend="cpu")
            gpu = engram.Runtime(store, backend="gpu", resident=True, hbm_cache_bytes=4 << 20, max_tokens=256)
            self.assertEqual(gpu.backend, "gpu")
            sc = [cpu.sequence() for _ in range(3)]
            sg = [gpu.sequence() for _ in range(3)]
            proj = torch.randn(24 * 256, 64, device="cuda", dtype=torch.bfloat16)
            for k in range(12):
                n = 20 if k == 0 else 1
                batch = [tokens(n, start=100 * q + k) for q in range(3)]
                stc = cpu.submit(list(zip(sc, batch)))
                stg = gpu.submit(list(zip(sg, batch)))
                for layer in range(2):
                    cpu.wait(stc, layer)
                    want = cpu.output(stc, layer)
                    gpu.wait_stream(stg, layer)
                    got = gpu.output(stg, layer)
                    self.assertTrue(got.device)
                    self.assertEqual(got.bf16.dtype, torch.bfloat16)
                    self.assertTrue(torch.equal(got.rows.cpu(), want.rows))
                    self.assertTrue(torch.equal(got.bf16.cpu().view(torch.int16), want.bf16.view(torch.int16)))
                    y = got.bf16 @ proj  # a layer's key projection of the Engram rows, on the current stream
                    gpu.done_stream(stg, layer)
                    self.assertEqual(tuple(y.shape), (3 * n, 64))
                    self.assertTrue(torch.isfinite(y.float()).all().item())
                cpu.finish(stc)
                gpu.finish(stg)
            torch.cuda.synchronize()
            self.assertGreater(gpu.stats()["cache_hits"], 0)
            gpu.close()
            cpu.close()
            store.close()


if __name__ == "__main__":
    unittest.main()
