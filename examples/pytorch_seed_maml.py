#!/usr/bin/env python3
"""The PyTorch side of mamlc's benchmark: the seed's MAML training step as PyTorch users write it.

    python3 examples/pytorch_seed_maml.py                          # 5-way 1-shot, q 1, T 32, CPU
    python3 examples/pytorch_seed_maml.py --q-query 15 --json      # one JSON object
    python3 examples/pytorch_seed_maml.py --device cuda --steps 50 # the same on a GPU
    python3 examples/pytorch_seed_maml.py --first-order
    python3 examples/pytorch_seed_maml.py --batch B.safetensors --params P.safetensors
    python3 examples/pytorch_seed_maml.py --mamlc-json bench.json  # ratio against `mamlc bench --json`
    python3 examples/pytorch_seed_maml.py --check-fixture all      # float64 check against the fixtures

Use the system interpreter with Debian's PyTorch (`apt-get install python3-torch`, PyTorch 1.13),
or any PyTorch >= 1.12.

The model is the seed's Classifier: four blocks of [conv3x3 pad 1, 64 channels -> BatchNorm2d
(training-mode batch statistics, no running averages) -> ReLU -> MaxPool2d(2)], 28x28 -> 14 -> 7 -> 3
-> 1, then Linear(64, n_way). Its parameters carry the names mamlc uses (conv1.conv2d.weight,
conv1.conv2d.bias, conv1.bn.weight, conv1.bn.bias, ..., logits.weight, logits.bias).

One training step is the seed's per-task loop: for each of the meta-batch's tasks, `inner_steps`
SGD steps on the support set's mean cross-entropy, each with
`torch.autograd.grad(loss, fast_weights, create_graph=not first_order)` (every parameter adapts);
the query set's mean cross-entropy at the adapted weights; meta-loss = mean over tasks;
`meta_loss.backward()`; one Adam step (lr 0.001). The forward pass with explicit weights goes
through `functional_call` (torch.func in PyTorch >= 2.0, torch.nn.utils.stateless in 1.12/1.13);
`--forward functional` uses a hand-written functional forward (F.conv2d, F.batch_norm, ...) instead.

Inputs are synthetic unless --batch is given: per task, n_way random "characters" (a few random-walk
strokes of 0.0 on a 1.0 background, Omniglot's PNG polarity), each sample a copy shifted by up to one
pixel with 1% of its pixels flipped; fixed seed. The same batch is used for every timed step, so the
timings hold no data loading.

Work count (GFLOP/s)
  One forward pass of the network costs F = sum over the four convolutions of 2*C_in*C_out*9*H*W
  FLOP per 28x28 image (H, W the conv's output size: 28, 14, 7, 3), = 19,630,080 FLOP = 19.6 MFLOP.
  The linear layer (2*64*n_way), batch norm, ReLU and pooling are left out (< 0.05%).
  A step then counts, in forward-equivalents F per image:
    support image, second order: 9 per inner step -- forward 1, backward with create_graph 2
        (input- and weight-gradient convolutions), and in the outer backward 6: each of the two
        backward convolutions is bilinear and needs two convolutions for its own gradient (4), plus
        the backward through the inner forward pass (2);
    support image, first order:  3 per inner step -- forward 1, backward 2 (the outer backward does
        not go back through the support set: the inner gradients are constants);
    query image: 3 -- forward 1, backward 2.
  5-way 1-shot, meta-batch 32, 1 inner step, second order: 32*(9*5 + 3*5)*F = 37.7 GFLOP with 1
  query per class, 32*(9*5 + 3*75)*F = 169.6 GFLOP with 15.
  images/s = (S + Q) * T / step time.
"""
import argparse
import json
import math
import os
import statistics
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BN_EPS = 1e-5
CHANNELS = 64
IMAGE = 28
N_BLOCKS = 4

# forward-equivalents per image (see the module docstring)
FWD_EQ_SUPPORT_SO = 9  # per inner step, second order
FWD_EQ_SUPPORT_FO = 3  # per inner step, first order
FWD_EQ_QUERY = 3

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_FIXTURES = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "fixtures",
                                                 "pytorch_maml"))

# ----------------------------------------------------------------------------------------------
# safetensors: the `safetensors` package when installed, else a small numpy reader/writer
# (8-byte little-endian header length, JSON header, raw little-endian data)

ST_NUMPY = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "U8": "u1", "I16": "<i2",
            "I32": "<i4", "I64": "<i8", "BOOL": "?"}
ST_NAMES = {np.dtype("<f2"): "F16", np.dtype("<f4"): "F32", np.dtype("<f8"): "F64",
            np.dtype("i1"): "I8", np.dtype("u1"): "U8", np.dtype("<i2"): "I16",
            np.dtype("<i4"): "I32", np.dtype("<i8"): "I64", np.dtype("?"): "BOOL"}


def read_safetensors(path):
    """Returns ({name: torch.Tensor (CPU)}, metadata dict)."""
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except ImportError:
        pass
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    blob = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        if info["dtype"] not in ST_NUMPY:
            raise ValueError(f"{path}: {name}: dtype {info['dtype']} not supported")
        lo, hi = info["data_offsets"]
        dt = np.dtype(ST_NUMPY[info["dtype"]])
        shape = [int(s) for s in info["shape"]]
        if hi > len(blob) or hi - lo != dt.itemsize * math.prod(shape):
            raise ValueError(f"{path}: {name}: data offsets {lo}..{hi} do not fit shape {shape}")
        arr = np.frombuffer(blob[lo:hi], dtype=dt).reshape(shape)
        out[name] = torch.from_numpy(arr.astype(dt.newbyteorder("="), copy=True))
    return out, {str(k): str(v) for k, v in meta.items()}


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: torch.Tensor} (F32/F64/I32/I64...) in the safetensors format."""
    header, chunks, off = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, t in tensors.items():
        arr = t.detach().cpu().contiguous().numpy()
        dt = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
        data = arr.astype(dt, copy=False).tobytes()
        header[name] = {"dtype": ST_NAMES[np.dtype(dt)], "shape": list(arr.shape),
                        "data_offsets": [off, off + len(data)]}
        chunks.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)  # pad so the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)


# ----------------------------------------------------------------------------------------------
# the seed's model


class ConvBlock(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv2d = nn.Conv2d(c_in, c_out, 3, padding=1)
        # training-mode batch statistics always; no running averages (so state_dict = parameters)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, track_running_stats=False)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.bn(self.conv2d(x))), 2)


class Classifier(nn.Module):
    def __init__(self, n_way, in_channels=1, hidden=CHANNELS):
        super().__init__()
        self.conv1 = ConvBlock(in_channels, hidden)
        self.conv2 = ConvBlock(hidden, hidden)
        self.conv3 = ConvBlock(hidden, hidden)
        self.conv4 = ConvBlock(hidden, hidden)
        self.logits = nn.Linear(hidden, n_way)

    def forward(self, x):
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return self.logits(x.flatten(1))


def functional_forward(params, x):
    """The same network with explicit weights, written with torch.nn.functional."""
    for i in range(1, N_BLOCKS + 1):
        p = f"conv{i}."
        x = F.conv2d(x, params[p + "conv2d.weight"], params[p + "conv2d.bias"], padding=1)
        x = F.batch_norm(x, None, None, params[p + "bn.weight"], params[p + "bn.bias"],
                         training=True, eps=BN_EPS)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), params["logits.weight"], params["logits.bias"])


def find_functional_call():
    try:
        from torch.func import functional_call  # PyTorch >= 2.0
        return functional_call, "torch.func.functional_call"
    except ImportError:
        pass
    try:
        from torch.nn.utils.stateless import functional_call  # PyTorch 1.12, 1.13
        return functional_call, "torch.nn.utils.stateless.functional_call"
    except ImportError:
        return None, None


def make_forward(model, kind):
    """Returns (forward(params_dict, x) -> logits, description)."""
    if kind == "module":
        fc, name = find_functional_call()
        if fc is not None:
            return (lambda params, x: fc(model, params, (x,))), name
        print("note: no functional_call in this PyTorch; using the functional forward",
              file=sys.stderr)
    return functional_forward, "functional forward (F.conv2d, F.batch_norm, ...)"


def conv_flops_per_image(in_channels=1, hidden=CHANNELS, size=IMAGE):
    """FLOP of one forward pass's convolutions for one image: 2*C_in*C_out*9*H*W per conv."""
    total, c_in, h = 0, in_channels, size
    for _ in range(N_BLOCKS):
        total += 2 * c_in * hidden * 9 * h * h  # 3x3, pad 1: output H x W = input H x W
        c_in, h = hidden, h // 2  # max-pool 2 (floor)
    return total


def step_flops(T, S, Q, inner_steps, first_order, in_channels=1):
    per_support = (FWD_EQ_SUPPORT_FO if first_order else FWD_EQ_SUPPORT_SO) * inner_steps
    return conv_flops_per_image(in_channels) * T * (per_support * S + FWD_EQ_QUERY * Q)


# ----------------------------------------------------------------------------------------------
# the seed's MAML step


def maml_meta_loss(forward, params, batch, inner_steps, inner_lr, first_order):
    """Per-task loop. params: {name: tensor requiring grad}. Returns (meta_loss, meta_acc)."""
    sx, sy, qx, qy = batch["support_x"], batch["support_y"], batch["query_x"], batch["query_y"]
    losses, accs = [], []
    for t in range(sx.shape[0]):
        fast = dict(params)
        for _ in range(inner_steps):
            loss = F.cross_entropy(forward(fast, sx[t]), sy[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {n: w - inner_lr * g for (n, w), g in zip(fast.items(), grads)}
        logits = forward(fast, qx[t])
        losses.append(F.cross_entropy(logits, qy[t]))
        accs.append((logits.argmax(1) == qy[t]).to(logits.dtype).mean())
    return torch.stack(losses).mean(), torch.stack(accs).mean().detach()


def train_step(forward, model, opt, batch, args):
    opt.zero_grad(set_to_none=True)
    params = dict(model.named_parameters())
    meta_loss, meta_acc = maml_meta_loss(forward, params, batch, args.inner_steps,
                                         args.inner_lr, args.first_order)
    meta_loss.backward()
    opt.step()
    return meta_loss.detach(), meta_acc


# ----------------------------------------------------------------------------------------------
# inputs


def synthetic_batch(T, n_way, k_shot, q_query, seed, size=IMAGE, strokes=3, stroke_len=12):
    """Omniglot-like tasks: 0.0 strokes on 1.0; labels 0..n_way-1 (class-major order)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.ones(T * n_way, size * size)
    n = T * n_way * strokes
    start = torch.randint(4, size - 4, (n, 1, 2), generator=g)
    walk = torch.randint(-1, 2, (n, stroke_len, 2), generator=g)
    pts = (start + walk.cumsum(1)).clamp(1, size - 2)  # [n, len, 2]
    for dy, dx in ((0, 0), (0, 1), (1, 0)):  # strokes two pixels wide
        idx = (pts[..., 0] + dy) * size + pts[..., 1] + dx  # [n, len]
        idx = idx.reshape(T * n_way, strokes * stroke_len)
        protos.scatter_(1, idx, 0.0)
    protos = protos.reshape(T, n_way, 1, 1, size, size)

    def samples(m):
        x = protos.expand(T, n_way, m, 1, size, size).reshape(T * n_way * m, 1, size, size)
        shifts = torch.randint(-1, 2, (x.shape[0], 2), generator=g)
        x = torch.stack([torch.roll(xi, (int(s[0]), int(s[1])), (1, 2))
                         for xi, s in zip(x, shifts)])
        flip = torch.rand(x.shape, generator=g) < 0.01
        x = torch.where(flip, 1.0 - x, x)
        y = torch.arange(n_way).repeat_interleave(m).repeat(T)
        return x.reshape(T, n_way * m, 1, size, size), y.reshape(T, n_way * m)

    sx, sy = samples(k_shot)
    qx, qy = samples(q_query)
    return {"support_x": sx.contiguous(), "support_y": sy, "query_x": qx.contiguous(),
            "query_y": qy}


def load_batch(path):
    tensors, meta = read_safetensors(path)
    missing = [k for k in ("support_x", "support_y", "query_x", "query_y") if k not in tensors]
    if missing:
        raise SystemExit(f"{path}: missing {', '.join(missing)}")
    for k in ("support_x", "query_x"):
        if tensors[k].dim() != 5:
            raise SystemExit(f"{path}: {k} has shape {list(tensors[k].shape)}, want [T,N,C,H,W]")
    return {k: tensors[k] for k in ("support_x", "support_y", "query_x", "query_y")}, meta


def load_params(model, path):
    tensors, _ = read_safetensors(path)
    state = {k: v for k, v in tensors.items() if not k.startswith("adam/")}
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)


def batch_to(batch, device, dtype):
    return {"support_x": batch["support_x"].to(device, dtype),
            "support_y": batch["support_y"].to(device, torch.long),
            "query_x": batch["query_x"].to(device, dtype),
            "query_y": batch["query_y"].to(device, torch.long)}


# ----------------------------------------------------------------------------------------------
# the fixture check


def load_manifest(fixtures):
    with open(os.path.join(fixtures, "manifest.json")) as f:
        return json.load(f)


def check_fixture(case, fixtures, forward_kind, dtype):
    manifest = load_manifest(fixtures)
    cases = {c["name"]: c for c in manifest["cases"]}
    if case not in cases:
        raise SystemExit(f"unknown case {case!r}; cases: {', '.join(cases)}")
    c = cases[case]
    model = Classifier(c["n_way"])
    load_params(model, os.path.join(fixtures, c["params_file"]))
    model = model.to(dtype)
    forward, _ = make_forward(model, forward_kind)
    batch, _ = load_batch(os.path.join(fixtures, c["batch_file"]))
    batch = batch_to(batch, "cpu", dtype)
    params = dict(model.named_parameters())
    meta_loss, meta_acc = maml_meta_loss(forward, params, batch, c["inner_steps"],
                                         c["inner_lr"], c["first_order"])
    names = list(params)
    grads = torch.autograd.grad(meta_loss, [params[n] for n in names])
    expected, _ = read_safetensors(os.path.join(fixtures, c["expected64_file"]))
    gmax = max(expected["grad/" + n].abs().max().item() for n in names)
    per = {n: ((g.double() - expected["grad/" + n]).abs().max().item() / gmax)
           for n, g in zip(names, grads)}
    e_loss = expected["meta_loss"].item()
    return {"case": case, "dtype": str(dtype).replace("torch.", ""),
            "inner_steps": c["inner_steps"], "q_query": c["q_query"],
            "first_order": c["first_order"], "T": c["T"], "n_way": c["n_way"],
            "meta_loss": meta_loss.item(), "meta_loss_expected": e_loss,
            "meta_loss_rel_err": abs(meta_loss.item() - e_loss) / abs(e_loss),
            "meta_acc": meta_acc.item(), "meta_acc_expected": expected["meta_acc"].item(),
            "grad_max_rel_err": max(per.values()),
            "grad_worst_tensor": max(per, key=per.get),
            "torch_f32_rel_err": c.get("torch_f32_rel_err")}


# ----------------------------------------------------------------------------------------------
# the benchmark


def default_threads():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def flop_per_cycle(flags):
    """FP32 FLOP/cycle/core by ISA, as mamlc bench assumes (runtime/bench.h): avx512f 64 (two
    AVX-512 FMA units), avx2 + fma 32 (two AVX2 FMA units), avx 16, else 8."""
    if "avx512f" in flags:
        return 64
    if "avx2" in flags and "fma" in flags:
        return 32
    return 16 if "avx" in flags else 8


def cpu_peak_estimate(threads):
    """cores x FLOP/cycle (flop_per_cycle) x clock; None if unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    mhz = [float(l.split(":")[1]) for l in text.splitlines() if l.startswith("cpu MHz")]
    flags = next((l for l in text.splitlines() if l.startswith("flags")), "")
    if not mhz:
        return None
    return threads * flop_per_cycle(flags.split()) * max(mhz) / 1e3  # GFLOP/s


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(args):
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this PyTorch sees no CUDA device "
                         f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    if args.batch:
        batch, _ = load_batch(args.batch)
    else:
        batch = synthetic_batch(args.meta_batch, args.n_way, args.k_shot, args.q_query, args.seed)
    T, S = batch["support_x"].shape[:2]
    Q = batch["query_x"].shape[1]
    in_ch, size = batch["support_x"].shape[2], batch["support_x"].shape[3]
    if args.batch:  # the file decides the shapes; n_way from the labels unless given
        n_way = args.n_way if args.n_way_given else int(batch["support_y"].max()) + 1
    else:
        n_way = args.n_way
    if args.save_batch:
        write_safetensors(args.save_batch, batch,
                          {"kind": "synthetic-omniglot", "seed": args.seed, "n_way": n_way,
                           "k_shot": args.k_shot, "q_query": args.q_query})

    model = Classifier(n_way, in_channels=in_ch)
    if args.params:
        load_params(model, args.params)
    if args.save_params:
        write_safetensors(args.save_params, model.state_dict(),
                          {"n_way": n_way, "seed": args.seed, "init": "pytorch-default"})
    model = model.to(device)
    forward, forward_desc = make_forward(model, args.forward)
    opt = torch.optim.Adam(model.parameters(), lr=args.outer_lr)
    dbatch = batch_to(batch, device, torch.float32)

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    times, loss = [], None
    for i in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        loss, acc = train_step(forward, model, opt, dbatch, args)
        sync(device)
        t1 = time.perf_counter()
        if i >= args.warmup:
            times.append((t1 - t0) * 1e3)
        if args.verbose:
            print(f"step {i}: {(t1 - t0) * 1e3:.1f} ms  meta_loss {loss.item():.4f}",
                  file=sys.stderr)
    med = statistics.median(times)
    flops = step_flops(T, S, Q, args.inner_steps, args.first_order, in_ch)
    if size != IMAGE:
        flops = flops * (size * size) / (IMAGE * IMAGE)  # approximate for other image sizes
    gflops = flops / (med * 1e-3) / 1e9
    images = (S + Q) * T
    peak = args.peak_gflops
    if peak is None and device.type == "cpu":
        peak = cpu_peak_estimate(args.threads)
    result = {
        "step_ms_median": med,
        "step_ms_min": min(times),
        "step_ms_max": max(times),
        "images_per_s": images / (med * 1e-3),
        "gflops": gflops,
        "gflop_per_step": flops / 1e9,
        "mflop_forward_per_image": conv_flops_per_image(in_ch) / 1e6,
        "peak_gflops": peak,
        "peak_fraction": (gflops / peak) if peak else None,
        "final_meta_loss": loss.item(),
        "settings": {
            "n_way": n_way, "k_shot": S // n_way if n_way else None,
            "q_query": Q // n_way if n_way else None, "meta_batch": T,
            "support_per_task": S, "query_per_task": Q,
            "inner_steps": args.inner_steps, "inner_lr": args.inner_lr,
            "first_order": args.first_order, "outer": {"optimizer": "adam", "lr": args.outer_lr},
            "steps": args.steps, "warmup": args.warmup,
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "forward": forward_desc, "batch": args.batch or f"synthetic(seed={args.seed})",
            "params": args.params or f"pytorch-default-init(seed={args.seed})",
            "work_model": {"support_fwd_equiv_per_inner_step":
                           FWD_EQ_SUPPORT_FO if args.first_order else FWD_EQ_SUPPORT_SO,
                           "query_fwd_equiv": FWD_EQ_QUERY},
        },
        "torch": torch.__version__,
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({args.threads} threads)"),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "load_avg_1min_before": load_before,
    }
    if device.type == "cuda":
        result["cudnn"] = torch.backends.cudnn.version()
        result["tf32_conv"] = torch.backends.cudnn.allow_tf32
        result["max_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    if args.mamlc_json:
        with open(args.mamlc_json) as f:
            m = json.load(f)
        result["mamlc_step_ms_median"] = m["step_ms_median"]
        result["speedup_mamlc_over_torch"] = med / m["step_ms_median"]
    return result


def print_text(r):
    s = r["settings"]
    print(f"PyTorch {r['torch']} on {r['device']}: {s['n_way']}-way {s['k_shot']}-shot, "
          f"{s['q_query']} queries/class, meta-batch {s['meta_batch']}, "
          f"{s['inner_steps']} inner step(s), "
          f"{'first' if s['first_order'] else 'second'} order; forward: {s['forward']}")
    print(f"step time   median {r['step_ms_median']:.1f} ms  (min {r['step_ms_min']:.1f}, "
          f"max {r['step_ms_max']:.1f}) over {s['steps']} steps after {s['warmup']} warm-up")
    print(f"images/s    {r['images_per_s']:.0f}")
    line = (f"work        {r['gflop_per_step']:.1f} GFLOP/step "
            f"({r['mflop_forward_per_image']:.2f} MFLOP/image forward) -> "
            f"{r['gflops']:.1f} GFLOP/s")
    if r["peak_gflops"]:
        line += f" = {100 * r['peak_fraction']:.0f}% of {r['peak_gflops']:.0f} GFLOP/s peak"
    print(line)
    load = r.get("load_avg_1min_before")
    if load is not None and s["threads"] and load > 0.5:
        print(f"note: load average {load:.1f} before the run: other processes share the cores, "
              f"so these times are not an idle machine's (with more busy threads than cores "
              f"OpenMP's spinning slows PyTorch a lot; try OMP_WAIT_POLICY=PASSIVE)")
    if "speedup_mamlc_over_torch" in r:
        print(f"mamlc       {r['mamlc_step_ms_median']:.1f} ms/step -> "
              f"{r['speedup_mamlc_over_torch']:.2f}x faster than PyTorch")


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="PyTorch reference for mamlc's benchmark: the seed's MAML step "
                    "(per-task loop, second order unless --first-order, Adam)")
    ap.add_argument("--n-way", type=int, default=None, help="classes per task (default 5)")
    ap.add_argument("--k-shot", type=int, default=1)
    ap.add_argument("--q-query", type=int, default=1, help="queries per class (seed: 1)")
    ap.add_argument("--meta-batch", type=int, default=32, help="tasks per step")
    ap.add_argument("--inner-steps", type=int, default=1)
    ap.add_argument("--inner-lr", type=float, default=0.04)
    ap.add_argument("--outer-lr", type=float, default=0.001, help="Adam's learning rate")
    ap.add_argument("--first-order", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=default_threads(),
                    help="torch.set_num_threads on the CPU (default: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--forward", choices=("module", "functional"), default="module",
                    help="module: functional_call on the nn.Module (default); "
                         "functional: hand-written functional forward")
    ap.add_argument("--batch", help="task batch .safetensors (support_x [T,S,C,H,W], ...)")
    ap.add_argument("--params", help="parameters .safetensors under PyTorch's names")
    ap.add_argument("--save-batch", help="write the batch used to this .safetensors file")
    ap.add_argument("--save-params", help="write the initial parameters to this file")
    ap.add_argument("--peak-gflops", type=float, default=None,
                    help="the device's peak, for the percentage (CPU default: an estimate, "
                         "threads x FLOP/cycle by ISA x clock)")
    ap.add_argument("--mamlc-json", help="`mamlc bench --json` output: print the speed ratio")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--verbose", "-v", action="store_true", help="print every step's time")
    ap.add_argument("--check-fixture", metavar="CASE",
                    help="float64 meta-loss and meta-gradient on a fixture case (or 'all') "
                         "against its expected64 file, then exit")
    ap.add_argument("--fixtures", default=DEFAULT_FIXTURES,
                    help=f"fixture folder (default {DEFAULT_FIXTURES})")
    ap.add_argument("--check-dtype", choices=("float64", "float32"), default="float64")
    args = ap.parse_args(argv)
    args.n_way_given = args.n_way is not None
    if args.n_way is None:
        args.n_way = 5
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--steps >= 1, --warmup >= 0, --threads >= 1")

    if args.check_fixture:
        torch.set_num_threads(args.threads)
        dtype = torch.float64 if args.check_dtype == "float64" else torch.float32
        names = ([c["name"] for c in load_manifest(args.fixtures)["cases"]]
                 if args.check_fixture == "all" else [args.check_fixture])
        results = [check_fixture(n, args.fixtures, args.forward, dtype) for n in names]
        if args.json:
            print(json.dumps(results if len(results) > 1 else results[0], indent=1))
        else:
            for r in results:
                print(f"{r['case']:22s} {r['dtype']}  T={r['T']} inner_steps={r['inner_steps']} "
                      f"q={r['q_query']} {'FO' if r['first_order'] else 'SO'}  "
                      f"meta_loss rel err {r['meta_loss_rel_err']:.2e}  "
                      f"grad max rel err {r['grad_max_rel_err']:.2e} ({r['grad_worst_tensor']})"
                      f"  acc {r['meta_acc']:.4f}/{r['meta_acc_expected']:.4f}")
        tol = 1e-9 if dtype == torch.float64 else None
        if tol is not None and any(r["grad_max_rel_err"] > tol or r["meta_loss_rel_err"] > tol
                                   for r in results):
            print(f"FAIL: error above {tol:g}", file=sys.stderr)
            return 1
        return 0

    r = bench(args)
    if args.json:
        print(json.dumps(r))
    else:
        print_text(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
