"""engram from Python: the C API (include/engram/engram.h) through ctypes, outputs as PyTorch tensors.

    import engram, torch
    store = engram.Store("/nvme/v41")
    rt = engram.Runtime(store, resident=True, hbm_cache_bytes=8 << 30)
    seq = rt.sequence()
    step = rt.submit([(seq, ids)])                 # compressed ids (store.compress(tokenizer_ids))
    for layer in range(store.info["num_layers"]):
        rt.wait_stream(step, layer)                # the current CUDA stream waits; the host does not
        out = rt.output(step, layer)               # out.bf16: torch.bfloat16 [T, columns * dim] on the GPU
        ... use out.bf16 on the current stream ...
        rt.done_stream(step, layer)
    rt.finish(step)

The library is found from $ENGRAM_LIBRARY, else as libengram.so.0 on the loader's path. Tensors are views of
engram's buffers (no copy): valid until finish(step) (GPU: until the slot is reused, two steps later by
default); clone them to keep them. Without PyTorch, output() gives memoryviews.
"""

import ctypes
import json
import os

__all__ = ["EngramError", "Store", "Runtime", "LayerOutput", "library"]

_STATUS = ["ok", "invalid_argument", "not_found", "out_of_range", "corruption", "io_error",
           "resource_exhausted", "failed_precondition", "unavailable", "internal", "deadline_exceeded"]


class EngramError(Exception):
    """A failed engram call: .code (int), .name ("not_found") and the message naming what was at fault."""

    def __init__(self, code, message):
        self.code = code
        self.name = _STATUS[code] if 0 <= code < len(_STATUS) else "unknown"
        super().__init__(f"{self.name}: {message}")


class _StoreInfo(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("num_layers", ctypes.c_int32), ("columns", ctypes.c_int32),
                ("max_ngram", ctypes.c_int32), ("row_bytes", ctypes.c_uint32), ("dim", ctypes.c_uint32),
                ("row_format", ctypes.c_int), ("compressed_vocab_size", ctypes.c_int64),
                ("tokenizer_vocab_size", ctypes.c_int64), ("latest_version", ctypes.c_uint64)]


class _StoreOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("io", ctypes.c_int), ("read_path", ctypes.c_int),
                ("read_threads", ctypes.c_uint32), ("block_cache_bytes", ctypes.c_uint64)]


class _RuntimeOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("backend", ctypes.c_int), ("version", ctypes.c_uint64),
                ("resident", ctypes.c_int), ("host_cache_bytes", ctypes.c_uint64),
                ("host_budget_bytes", ctypes.c_uint64), ("gather_threads", ctypes.c_uint32),
                ("staging_bytes", ctypes.c_uint64), ("bf16_output", ctypes.c_int32),
                ("hbm_cache_bytes", ctypes.c_uint64), ("device_budget_bytes", ctypes.c_uint64),
                ("max_tokens", ctypes.c_int64), ("steps_in_flight", ctypes.c_uint32), ("miss_path", ctypes.c_int)]


class _SequenceInput(ctypes.Structure):
    _fields_ = [("sequence", ctypes.c_uint64), ("tokens", ctypes.POINTER(ctypes.c_int32)),
                ("num_tokens", ctypes.c_size_t), ("dead", ctypes.POINTER(ctypes.c_uint8))]


class _LayerOutput(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("memory", ctypes.c_int), ("tokens", ctypes.c_int64),
                ("columns", ctypes.c_int32), ("row_bytes", ctypes.c_uint32), ("dim", ctypes.c_uint32),
                ("rows", ctypes.c_void_p), ("bf16", ctypes.c_void_p)]


_lib = None


def library():
    """The loaded libengram (ctypes.CDLL), loaded on first use."""
    global _lib
    if _lib is not None:
        return _lib
    lib = ctypes.CDLL(os.environ.get("ENGRAM_LIBRARY", "libengram.so.0"))
    P, u64, i32, sz = ctypes.POINTER, ctypes.c_uint64, ctypes.c_int32, ctypes.c_size_t
    vp = ctypes.c_void_p
    sig = {
        "engram_api_version": (ctypes.c_uint32, []),
        "engram_version_string": (ctypes.c_char_p, []),
        "engram_last_error": (ctypes.c_char_p, []),
        "engram_store_options_init": (None, [P(_StoreOptions)]),
        "engram_store_open": (ctypes.c_int, [ctypes.c_char_p, P(_StoreOptions), P(vp)]),
        "engram_store_close": (None, [vp]),
        "engram_store_get_info": (ctypes.c_int, [vp, P(_StoreInfo)]),
        "engram_store_layer_id": (ctypes.c_int, [vp, i32, P(i32)]),
        "engram_store_compress_tokens": (ctypes.c_int, [vp, P(i32), sz, P(i32)]),
        "engram_runtime_options_init": (None, [P(_RuntimeOptions)]),
        "engram_runtime_create": (ctypes.c_int, [vp, P(_RuntimeOptions), P(vp)]),
        "engram_runtime_destroy": (None, [vp]),
        "engram_runtime_backend": (ctypes.c_int, [vp]),
        "engram_sequence_create": (ctypes.c_int, [vp, P(u64)]),
        "engram_sequence_fork": (ctypes.c_int, [vp, u64, P(u64)]),
        "engram_sequence_rollback": (ctypes.c_int, [vp, u64, ctypes.c_int64]),
        "engram_sequence_release": (ctypes.c_int, [vp, u64]),
        "engram_step_submit": (ctypes.c_int, [vp, P(_SequenceInput), sz, P(u64)]),
        "engram_step_wait": (ctypes.c_int, [vp, u64, i32]),
        "engram_step_wait_stream": (ctypes.c_int, [vp, u64, i32, vp]),
        "engram_step_done_stream": (ctypes.c_int, [vp, u64, i32, vp]),
        "engram_step_output": (ctypes.c_int, [vp, u64, i32, P(_LayerOutput)]),
        "engram_step_finish": (ctypes.c_int, [vp, u64]),
        "engram_runtime_stats": (ctypes.c_int, [vp, ctypes.c_int, ctypes.c_char_p, sz, P(sz)]),
    }
    for name, (res, args) in sig.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    _lib = lib
    return lib


def _check(code):
    if code != 0:
        raise EngramError(code, library().engram_last_error().decode("utf-8", "replace"))


def _int32_array(values):
    values = list(values) if not hasattr(values, "tolist") else values.tolist()
    return (ctypes.c_int32 * len(values))(*values), len(values)


class _Handle:
    """An engram object owned through its C handle (self._h), freed by the C function named _FREE."""

    _FREE = ""

    def close(self):
        if getattr(self, "_h", None):
            getattr(library(), self._FREE)(self._h)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


class Store(_Handle):
    """The table of record (engram_store_open). read_path: "multiget" or "direct"; io: "uring" or "posix"."""

    _FREE = "engram_store_close"

    def __init__(self, path, io="uring", read_path="multiget", read_threads=None):
        lib = library()
        o = _StoreOptions()
        lib.engram_store_options_init(ctypes.byref(o))
        o.io = {"uring": 0, "posix": 1}[io]
        o.read_path = {"multiget": 0, "direct": 1}[read_path]
        if read_threads is not None:
            o.read_threads = read_threads
        h = ctypes.c_void_p()
        _check(lib.engram_store_open(os.fsencode(path), ctypes.byref(o), ctypes.byref(h)))
        self._h = h
        info = _StoreInfo(struct_size=ctypes.sizeof(_StoreInfo))
        _check(lib.engram_store_get_info(self._h, ctypes.byref(info)))
        self.info = {name: getattr(info, name) for name, _ in _StoreInfo._fields_ if name != "struct_size"}

    def layer_id(self, layer_index):
        out = ctypes.c_int32()
        _check(library().engram_store_layer_id(self._h, layer_index, ctypes.byref(out)))
        return out.value

    def compress(self, tokenizer_ids):
        """Tokenizer ids -> compressed ids (a list) with the store's token map."""
        arr, n = _int32_array(tokenizer_ids)
        out = (ctypes.c_int32 * n)()
        _check(library().engram_store_compress_tokens(self._h, arr, n, out))
        return list(out)



class LayerOutput:
    """A layer's output: .rows uint8 [T, columns, row_bytes], .bf16 bfloat16 [T, columns * dim] (or None),
    .device True when they are GPU memory. Tensors (PyTorch) or, without PyTorch, memoryviews."""

    def __init__(self, raw, keep):
        self.tokens, self.columns, self.row_bytes, self.dim = raw.tokens, raw.columns, raw.row_bytes, raw.dim
        self.device = raw.memory == 1
        self._keep = keep  # the runtime: the buffers belong to it
        t, c = raw.tokens, raw.columns
        self.rows = _view(raw.rows, (t, c, raw.row_bytes), "u1", self.device) if raw.rows else None
        self.bf16 = _view(raw.bf16, (t, c * raw.dim), "bf16", self.device) if raw.bf16 else None


def _view(ptr, shape, kind, device):
    count = 1
    for s in shape:
        count *= s
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None:
        if device:
            raise EngramError(8, "device outputs need PyTorch (or read the raw pointers via the C API)")
        itemsize = 1 if kind == "u1" else 2
        buf = (ctypes.c_uint8 * (count * itemsize)).from_address(ptr)
        return memoryview(buf).cast("B").cast("B" if kind == "u1" else "H", shape)
    if device:
        class _Cai:
            __cuda_array_interface__ = {"shape": shape, "typestr": "|u1" if kind == "u1" else "<i2",
                                        "data": (ptr, False), "version": 3, "strides": None, "stream": None}
        t = torch.as_tensor(_Cai(), device="cuda")
    else:
        itemsize = 1 if kind == "u1" else 2
        buf = (ctypes.c_uint8 * (count * itemsize)).from_address(ptr)
        t = torch.frombuffer(buf, dtype=torch.uint8 if kind == "u1" else torch.int16, count=count).reshape(shape)
    return t if kind == "u1" else t.view(torch.bfloat16)


class Runtime(_Handle):
    """A serving runtime (engram_runtime_create): backend "auto", "cpu" or "gpu"; miss_path "auto", "staged",
    "zero_copy" or "device". Other options as engram_runtime_options (docs/c-api.md); None keeps the default."""

    _FREE = "engram_runtime_destroy"

    def __init__(self, store, backend="auto", resident=False, version=0, host_cache_bytes=None,
                 host_budget_bytes=None, gather_threads=None, staging_bytes=None, bf16=True, hbm_cache_bytes=None,
                 device_budget_bytes=None, max_tokens=None, steps_in_flight=None, miss_path="auto"):
        lib = library()
        o = _RuntimeOptions()
        lib.engram_runtime_options_init(ctypes.byref(o))
        o.backend = {"auto": 0, "cpu": 1, "gpu": 2}[backend]
        o.version = version
        o.resident = 1 if resident else 0
        o.bf16_output = 1 if bf16 else 0
        o.miss_path = {"auto": 0, "staged": 1, "zero_copy": 2, "device": 3}[miss_path]
        for name, v in [("host_cache_bytes", host_cache_bytes), ("host_budget_bytes", host_budget_bytes),
                        ("gather_threads", gather_threads), ("staging_bytes", staging_bytes),
                        ("hbm_cache_bytes", hbm_cache_bytes), ("device_budget_bytes", device_budget_bytes),
                        ("max_tokens", max_tokens), ("steps_in_flight", steps_in_flight)]:
            if v is not None:
                setattr(o, name, v)
        h = ctypes.c_void_p()
        _check(lib.engram_runtime_create(store._h, ctypes.byref(o), ctypes.byref(h)))
        self._h = h
        self._store = store  # the store must outlive the runtime
        self.backend = {1: "cpu", 2: "gpu"}[lib.engram_runtime_backend(self._h)]

    def sequence(self):
        out = ctypes.c_uint64()
        _check(library().engram_sequence_create(self._h, ctypes.byref(out)))
        return out.value

    def fork(self, parent):
        out = ctypes.c_uint64()
        _check(library().engram_sequence_fork(self._h, parent, ctypes.byref(out)))
        return out.value

    def rollback(self, sequence, tokens):
        _check(library().engram_sequence_rollback(self._h, sequence, tokens))

    def release(self, sequence):
        _check(library().engram_sequence_release(self._h, sequence))

    def submit(self, batch):
        """batch: [(sequence, compressed ids), ...] or [(sequence, ids, dead flags), ...]. Returns the step."""
        ins = (_SequenceInput * len(batch))()
        keep = []
        for i, item in enumerate(batch):
            seq, ids = item[0], item[1]
            dead = item[2] if len(item) > 2 else None
            arr, n = _int32_array(ids)
            keep.append(arr)
            ins[i].sequence, ins[i].tokens, ins[i].num_tokens = seq, arr, n
            if dead is not None:
                d = (ctypes.c_uint8 * n)(*[1 if x else 0 for x in dead])
                keep.append(d)
                ins[i].dead = d
        step = ctypes.c_uint64()
        _check(library().engram_step_submit(self._h, ins, len(batch), ctypes.byref(step)))
        return step.value

    def wait(self, step, layer):
        """Blocks until the layer is done; raises its error if it failed."""
        _check(library().engram_step_wait(self._h, step, layer))

    @staticmethod
    def _stream(stream):
        if stream is None:
            import torch
            stream = torch.cuda.current_stream()
        return ctypes.c_void_p(getattr(stream, "cuda_stream", stream))

    def wait_stream(self, step, layer, stream=None):
        """GPU: `stream` (a torch.cuda.Stream or a raw cudaStream_t; default the current one) waits for the layer."""
        _check(library().engram_step_wait_stream(self._h, step, layer, self._stream(stream)))

    def done_stream(self, step, layer, stream=None):
        """GPU: after the work on `stream` that reads the layer's output, its slot may be reused."""
        _check(library().engram_step_done_stream(self._h, step, layer, self._stream(stream)))

    def output(self, step, layer):
        raw = _LayerOutput(struct_size=ctypes.sizeof(_LayerOutput))
        _check(library().engram_step_output(self._h, step, layer, ctypes.byref(raw)))
        return LayerOutput(raw, self)

    def finish(self, step):
        _check(library().engram_step_finish(self._h, step))

    def stats(self, format="json"):
        """A dict (format "json") or the Prometheus text (format "prometheus")."""
        f = {"json": 0, "prometheus": 1}[format]
        lib = library()
        needed = ctypes.c_size_t()
        code = lib.engram_runtime_stats(self._h, f, None, 0, ctypes.byref(needed))
        if code not in (0, 3):
            _check(code)
        while True:
            buf = ctypes.create_string_buffer(needed.value + 4096)
            code = lib.engram_runtime_stats(self._h, f, buf, len(buf), ctypes.byref(needed))
            if code != 3:
                break
        _check(code)
        text = buf.value.decode()
        return json.loads(text) if format == "json" else text
