#!/usr/bin/env python3
"""Load a mamlc checkpoint into the seed's PyTorch Classifier with load_state_dict.

    python3 examples/load_checkpoint.py runs/omniglot_seed/checkpoint.safetensors
    python3 examples/load_checkpoint.py CKPT --n-way 20            # graphs/omniglot_20w1s-style head
    python3 examples/load_checkpoint.py CKPT --export model.safetensors   # and back again
    python3 examples/load_checkpoint.py CKPT --list                # no PyTorch needed

mamlc stores the parameters under PyTorch's module names and in PyTorch's layouts (conv weight
[out, in, kh, kw], linear [out, in]), so `load_state_dict(..., strict=True)` takes them as they
are once the optimizer state (adam/m/NAME, adam/v/NAME) is left out. The seed's batch norm always
normalises with the batch's statistics (training mode, no running averages), hence
`track_running_stats=False` below: its state_dict then holds exactly the learnable tensors.

The file is read with the `safetensors` package when it is installed, else with the small
reader below (8-byte little-endian header length, JSON header, raw little-endian data), which
needs nothing but the standard library and, for tensors, PyTorch (any version >= 1.12; Debian's
`apt-get install python3-torch` will do). tests/test_train.c runs this script when it finds one.
"""
import argparse
import json
import struct
import sys

DTYPES = {"F32": ("f", 4), "F64": ("d", 8), "I32": ("i", 4), "I64": ("q", 8)}


def read_header(path):
    """Returns (tensors: name -> {dtype, shape, data_offsets}, metadata dict, data offset)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    return header, meta, 8 + n


def read_tensors(path):
    """Returns ({name: torch.Tensor}, metadata)."""
    import torch

    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except ImportError:
        pass
    header, meta, start = read_header(path)
    torch_dtypes = {"F32": torch.float32, "F64": torch.float64, "I32": torch.int32,
                    "I64": torch.int64}
    with open(path, "rb") as f:
        blob = f.read()[start:]
    out = {}
    for name, info in header.items():
        lo, hi = info["data_offsets"]
        raw = bytearray(blob[lo:hi])  # a writable copy, so the tensor owns its memory
        t = torch.frombuffer(raw, dtype=torch_dtypes[info["dtype"]]) if raw else \
            torch.empty(0, dtype=torch_dtypes[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()  # safetensors data is little-endian
    return out, meta


def build_classifier(n_way, channels=64):
    """The seed's Classifier: 4 x [conv3x3 pad 1 -> batch norm -> ReLU -> max-pool 2] -> linear."""
    import torch.nn as nn
    import torch.nn.functional as F

    class ConvBlock(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv2d = nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, bias=True)
            self.bn = nn.BatchNorm2d(cout, eps=1e-5, affine=True, track_running_stats=False)

        def forward(self, x):
            return F.max_pool2d(F.relu(self.bn(self.conv2d(x))), 2)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = ConvBlock(1, channels)
            self.conv2 = ConvBlock(channels, channels)
            self.conv3 = ConvBlock(channels, channels)
            self.conv4 = ConvBlock(channels, channels)
            self.logits = nn.Linear(channels, n_way)

        def forward(self, x):  # x: [N, 1, 28, 28], background 1.0 and ink 0.0 as the seed loads it
            x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
            return self.logits(x.flatten(1))

    return Classifier()


def list_checkpoint(path):
    header, meta, _ = read_header(path)
    for key in sorted(meta):
        print(f"__metadata__ {key} = {meta[key]}")
    for name, info in header.items():
        print(f"{name:32s} {info['dtype']} {info['shape']}")


def export(model, path):
    """Writes model.state_dict() as safetensors, which `mamlc eval --checkpoint` reads."""
    state = {k: v.detach().contiguous().float() for k, v in model.state_dict().items()}
    try:
        from safetensors.torch import save_file

        save_file(state, path)
        return
    except ImportError:
        pass
    header, chunks, offset = {}, [], 0
    for name, t in state.items():
        data = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--n-way", type=int, default=None,
                    help="classes of the head (default: from logits.bias in the checkpoint)")
    ap.add_argument("--export", metavar="OUT.safetensors",
                    help="write the loaded model's state_dict back out for mamlc")
    ap.add_argument("--list", action="store_true", help="list tensors and metadata only")
    args = ap.parse_args()
    if args.list:
        list_checkpoint(args.checkpoint)
        return 0

    import torch

    tensors, meta = read_tensors(args.checkpoint)
    params = {k: v for k, v in tensors.items() if not k.startswith("adam/")}
    n_way = args.n_way or int(params["logits.bias"].shape[0])
    model = build_classifier(n_way)
    model.load_state_dict(params, strict=True)  # raises on any missing, extra or mis-shaped tensor
    print(f"loaded {len(params)} tensors ({sum(p.numel() for p in model.parameters()):,} "
          f"parameters) from {args.checkpoint}: step {meta.get('step', '?')}, "
          f"seed {meta.get('seed', '?')}")
    with torch.no_grad():
        logits = model(torch.ones(n_way, 1, 28, 28))
    print(f"forward pass on {n_way} blank images -> logits {tuple(logits.shape)}")
    if args.export:
        export(model, args.export)
        print(f"wrote {args.export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
