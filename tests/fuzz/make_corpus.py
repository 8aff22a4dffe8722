#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora into tests/fuzz/corpus/<target>/ (standard library only).

The generated files are committed; rerun this after changing it:  python3 tests/fuzz/make_corpus.py
Seeds are small on purpose (each corpus well under 200 KB): libFuzzer grows its own working copy
under build-fuzz/. Everything is deterministic (fixed zip timestamps, no randomness).
"""
import json
import os
import shutil
import struct
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")


def out(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


# ------------------------------------------------------------------ YAML graphs --------------

SETTINGS_OMNI = """maml:
  n_way: 5
  k_shot: 1
  q_query: 1
  meta_batch: 4
  inner: {steps: 1, lr: 0.4}
  outer: {optimizer: adam, lr: 0.001}
  eval: {inner_steps: 3, tasks: 10}
data: {dataset: omniglot, split: background_evaluation, seed: 1}
"""

SETTINGS_SIN = """maml: {n_way: 1, k_shot: 1, q_query: 1, meta_batch: 1, inner: {steps: 1, lr: 0.1},
       outer: {optimizer: sgd, lr: 0.1}, eval: {inner_steps: 1, tasks: 1}}
data: {dataset: sinusoid, seed: 1}
"""

YAML_SEEDS = {
    # nested blocks with arguments passed through references
    "nested_blocks.yaml": """model:
  input: [1, 28, 28]
  loss: cross_entropy
  blocks:
    conv: {args: {ch: ~}, layers: [{conv2d: {name: c, out_channels: $ch, kernel: 3, padding: 1}}, relu]}
    stage:
      args: {width: 8}
      layers:
        - {block: conv, name: a, args: {ch: $width}}
        - {block: conv, name: b, args: {ch: $width}}
        - {max_pool2d: {kernel: 2, stride: 2}}
  layers:
    - {block: stage, name: s1}
    - {block: stage, name: s2, args: {width: 16}}
    - global_avg_pool
    - {linear: {name: logits, out_features: $maml.n_way, in_features: 16, bias: false}}
""" + SETTINGS_OMNI,
    "cyclic_blocks.yaml": """model:
  input: [1, 28, 28]
  loss: cross_entropy
  blocks:
    a: {layers: [{block: b}]}
    b: {layers: [{block: a}]}
  layers: [{block: a}, flatten, {linear: {name: l, out_features: 5}}]
""" + SETTINGS_OMNI,
    "anchors_and_tags.yaml": """model:
  input: &in [1, 28, 28]
  loss: !!str cross_entropy
  layers: [flatten, {linear: {name: l, out_features: *in}}]
""" + SETTINGS_OMNI,
    "sinusoid_learnable.yaml": """model:
  input: [1]
  loss: mse
  layers:
    - {linear: {name: h, out_features: 0x28}}
    - relu
    - {batch_norm: {name: bn, scale: false, eps: 1e-3}}
    - {linear: {name: out, out_features: 1}}
maml: {n_way: 1, k_shot: 5, q_query: 0o12, meta_batch: 2,
       inner: {steps: 2, lr: learnable, lr_init: 0.01, first_order: true, adapt: ["h.*", "out.weight"],
               reduction: sum},
       outer: {optimizer: adam, lr: 1.0e-3, beta1: 0.5, beta2: 0.99, eps: 1e-6},
       eval: {inner_steps: 5, lr: 0.02, tasks: 100}}
data: {dataset: sinusoid, seed: 7, amplitude: [0.5, 1.5], phase: [0, 1], x_range: [-2, 2.5]}
""",
    "shuffled_rotations.yaml": """model:
  input: [1, 20, 20]
  loss: cross_entropy
  layers: [{conv2d: {name: c, out_channels: 4, kernel: 5, stride: 3}}, flatten,
           {linear: {name: l, out_features: $maml.n_way}}]
maml: {n_way: 20, k_shot: 5, q_query: 15, meta_batch: 16, inner: {steps: 5, lr: 0.1},
       outer: {optimizer: sgd, lr: 0.5}, eval: {inner_steps: 1, tasks: 1}}
data: {dataset: omniglot, split: shuffled_characters, train_characters: 1200,
       rotations: [0, 90, 180, 270], image_size: 20, resize: lanczos, invert: true, seed: 0}
""",
    "bad_values.yaml": """model:
  input: [1, 28, 28]
  loss: cross_entropy
  layers: [{conv2d: {name: 1bad, out_channels: -3, kernel: .inf}}, {linear: {name: l, out_features: $nope}}]
maml: {n_way: yes, k_shot: 99999999999999999999, q_query: "1", meta_batch: [1],
       inner: {steps: 1, lr: .nan}, outer: {optimizer: rmsprop, lr: 0}, eval: {}}
data: {dataset: omniglot, split: background_evaluation, seed: -1, extra: 1}
""",
    "deep.yaml": "model: " + "[" * 40 + "]" * 40 + "\n" + SETTINGS_SIN,
    "syntax_error.yaml": "model:\n  input: [1, 28\n  loss: mse\n\t- tab\n",
    "two_docs.yaml": "model: {}\n---\nmaml: {}\n",
}


def yaml_corpus():
    for name in sorted(os.listdir(os.path.join(ROOT, "graphs"))):
        if name.endswith(".yaml"):
            shutil.copy(os.path.join(ROOT, "graphs", name), os.path.join(CORPUS, "yaml", name))
    for name, text in YAML_SEEDS.items():
        out("yaml", name, text)


# ------------------------------------------------------------------ --set overrides ----------

OVERRIDE_SEEDS = {
    "lr.txt": "maml.inner.lr=0.4",
    "several.txt": "maml.inner.lr=0.4\nmaml.q_query=15\nmaml.k_shot=5\nmaml.meta_batch=2",
    "flow_values.txt": "maml.inner={steps: 2, lr: learnable, lr_init: 0.1}\ndata.rotations=[0, 90]",
    "new_keys.txt": "model.blocks.conv_block.args.channels=8\nmaml.outer.optimizer=sgd\nmaml.outer.beta1=0.5",
    "layers.txt": "model.layers=[flatten, {linear: {name: logits, out_features: $maml.n_way}}]",
    "bad.txt": "maml..lr=1\n=3\nnokey\nmaml.n_way.x=1\ndata=\nmaml.inner.lr=[1, &a 2, *a]",
    "split.txt": "data.split=shuffled_characters\ndata.train_characters=1200\ndata.resize=lanczos",
    "adapt.txt": 'maml.inner.adapt=["conv1.*", "logits.*"]\nmaml.inner.first_order=true',
}


def overrides_corpus():
    for name, text in OVERRIDE_SEEDS.items():
        out("overrides", name, text)


# ------------------------------------------------------------------ safetensors --------------

def safetensors(header, data=b"", pad=True, length=None):
    h = json.dumps(header, separators=(",", ":")).encode() if not isinstance(header, bytes) else header
    if pad:
        h += b" " * (-len(h) % 8)
    n = len(h) if length is None else length
    return struct.pack("<Q", n) + h + data


def tensors(*items, meta=None):
    """items: (name, dtype, shape, bytes); returns a packed file with offsets filled in."""
    header, data = {}, b""
    if meta is not None:
        header["__metadata__"] = meta
    for name, dtype, shape, raw in items:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return safetensors(header, data)


def safetensors_corpus():
    f32 = lambda *v: struct.pack("<%df" % len(v), *v)
    out("safetensors", "scalar_f32", tensors(("meta_loss", "F32", [], f32(1.5))))
    out("safetensors", "mixed_meta", tensors(
        ("w", "F64", [2, 3], struct.pack("<6d", 1, 2, 3, 4, 5, 6)),
        ("support_y", "I32", [4], struct.pack("<4i", 0, 1, 2, 3)),
        ("step", "I64", [1], struct.pack("<q", 42)),
        meta={"step": "3", "seed": "1206"}))
    out("safetensors", "empty_header", safetensors({}))
    out("safetensors", "zero_sized", tensors(("z", "F32", [0, 5], b""), ("r8", "F32", [1] * 8, f32(2))))
    out("safetensors", "unicode_names", tensors(("\u00e9t\u00e9/\U0001F600", "F32", [1], f32(0)),
                                                meta={"k\\\"": "v\n"}))
    out("safetensors", "bad_length", safetensors({"a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}},
                                                 f32(1), length=1 << 40))
    out("safetensors", "bad_json", safetensors(b'{"a": {"dtype": "F32", "shape": [1,], "data_offsets": [0, 4]}'))
    out("safetensors", "overlap", safetensors({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, f32(1, 2)))
    out("safetensors", "escapes", safetensors(
        b'{"\\ud83d\\ude00\\u00e9\\/\\t":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}', struct.pack("<q", -1)))


# ------------------------------------------------------------------ PNG and zip --------------

def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width, height, depth, color, raw_rows, extra=b"", interlace=0):
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra +
            png_chunk(b"IDAT", zlib.compress(raw_rows, 9)) + png_chunk(b"IEND", b""))


def ink(x, y):
    """A drawing: a ring and a diagonal stroke on white, like an Omniglot character."""
    r2 = (x - 52) ** 2 + (y - 52) ** 2
    return 900 <= r2 <= 1300 or abs(x - y) <= 2 and 20 <= x <= 85


def pack_bits(bits):
    row = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            row[i // 8] |= 0x80 >> (i % 8)
    return bytes(row)


def gray1(size=105):
    rows = b"".join(b"\0" + pack_bits([not ink(x, y) for x in range(size)]) for y in range(size))
    return png(size, size, 1, 0, rows)


def gray8_pixels(size=105):
    return [[0 if ink(x, y) else 255 for x in range(size)] for y in range(size)]


def gray8(size=105):
    px = gray8_pixels(size)
    return png(size, size, 8, 0, b"".join(b"\0" + bytes(r) for r in px))


def gray16():
    px = gray8_pixels()
    return png(105, 105, 16, 0, b"".join(b"\0" + b"".join(struct.pack(">H", v * 257) for v in r) for r in px))


def rgb8():
    px = gray8_pixels()
    return png(105, 105, 8, 2, b"".join(b"\x01" + bytes(c for v in r for c in (v, v // 2, v)) for r in px))


def gray_alpha():
    px = gray8_pixels()
    return png(105, 105, 8, 4, b"".join(b"\x02" + bytes(c for v in r for c in (v, 255 - v // 3)) for r in px))


def palette1():
    rows = b"".join(b"\0" + pack_bits([ink(x, y) for x in range(105)]) for y in range(105))
    extra = png_chunk(b"PLTE", bytes([255, 255, 255, 0, 0, 0])) + png_chunk(b"tRNS", b"\xff\x80")
    return png(105, 105, 1, 3, rows, extra)


def interlaced8():
    """Adam7: seven passes, each a small image of its own with its own filter bytes."""
    px = gray8_pixels()
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        for y in range(y0, 105, dy):
            cols = range(x0, 105, dx)
            if len(cols):
                raw += b"\0" + bytes(px[y][x] for x in cols)
    return png(105, 105, 8, 0, raw, interlace=1)


def zip_bytes(entries, compression=zipfile.ZIP_STORED, force_zip64=False):
    import io
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compression if not name.endswith("/") else zipfile.ZIP_STORED
            with z.open(info, "w", force_zip64=force_zip64) as f:
                f.write(data)
    return buf.getvalue()


def character(root, alphabet, char, data, first=1):
    return [("%s/%s/character%02d/%04d_%02d.png" % (root, alphabet, char, first, d), data) for d in range(1, 21)]


def png_zip_corpus():
    g1 = gray1()
    for name, data in [("gray1.png", g1), ("gray8.png", gray8()), ("gray16.png", gray16()),
                       ("rgb8.png", rgb8()), ("gray_alpha.png", gray_alpha()), ("palette1.png", palette1()),
                       ("interlaced8.png", interlaced8()), ("wrong_size.png", gray8(size=28))]:
        out("png_zip", name, data)
    out("png_zip", "one_character_stored.zip", zip_bytes(character("images_background", "Latin", 1, g1)))
    out("png_zip", "one_character_deflated.zip",
        zip_bytes(character("images_background", "Latin", 1, g1), zipfile.ZIP_DEFLATED))
    two = character("images_evaluation", "Greek", 2, g1, 201) + character("images_evaluation", "Angelic", 1, g1, 101)
    junk = [("images_evaluation/", b""), ("__MACOSX/images_evaluation/._x", b"x"),
            ("images_evaluation/Greek/.DS_Store", b"\0\0\0\1Bud1")]
    out("png_zip", "two_alphabets_with_junk.zip", zip_bytes(junk + two, zipfile.ZIP_DEFLATED))
    out("png_zip", "zip64.zip", zip_bytes(character("r", "A", 1, g1), zipfile.ZIP_DEFLATED, force_zip64=True))
    out("png_zip", "single_png.zip", zip_bytes([("root/Alpha/character01/0001_01.png", g1)]))


def main():
    shutil.rmtree(CORPUS, ignore_errors=True)
    for t in ("yaml", "overrides", "safetensors", "png_zip"):
        os.makedirs(os.path.join(CORPUS, t))
    yaml_corpus()
    overrides_corpus()
    safetensors_corpus()
    png_zip_corpus()
    for t in sorted(os.listdir(CORPUS)):
        d = os.path.join(CORPUS, t)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print("%-12s %3d files %7d bytes" % (t, len(os.listdir(d)), size))


if __name__ == "__main__":
    main()
