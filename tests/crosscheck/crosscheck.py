"""Cross-check transferlab's architectures against the reference implementations.

For each architecture: build the reference model (timm / transformers, CPU torch), fill it
with deterministic pseudo-random weights from a formula both sides implement (so no weight
file needs to be committed), save them in the hub's format (model.safetensors), run fixed
inputs through it and write the outputs as a small fixture under tests/fixtures/crosscheck/.
`cargo test --test suite hub_crosscheck::` rebuilds the same weights in Rust, loads them through the
hub name mapping and compares (1e-4 relative), without PyTorch.

Also checks cache interoperability with Python's huggingface_hub against the loopback hub
(`tlab serve-hub`): a file Python downloads is found by `tlab` offline, and the reverse.

Usage: python tests/crosscheck/crosscheck.py [--tlab PATH] [--only NAME]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

from formula import uniform  # the deterministic values both sides compute

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "crosscheck")


def value_rule(name: str, shape) -> tuple:
    """(centre, scale) of a tensor's values, by its name and shape (the Rust test mirrors this)."""
    if name.endswith("running_var"):
        return 1.0, 0.5
    if name.endswith("running_mean"):
        return 0.0, 0.2
    if name.endswith("logit_scale"):
        return math.log(100.0), 0.0
    if len(shape) <= 1:
        return (1.0, 0.2) if name.endswith("weight") else (0.0, 0.2)
    fan_in = int(np.prod(shape[1:]))
    if len(shape) == 3 and shape[0] == 1:  # ViT position embeddings / cls token (1, n, d)
        return 0.0, 0.2
    return 0.0, math.sqrt(12.0 / fan_in)


def tensor_for(name: str, shape) -> np.ndarray:
    n = int(np.prod(shape)) if len(shape) else 1
    c, s = value_rule(name, list(shape))
    return (c + s * uniform(name, n)).astype(np.float32).reshape(shape)


def fill(model) -> dict:
    sd = model.state_dict()
    out = {}
    for k, v in sd.items():
        if v.dtype in (torch.int64, torch.long) or k.endswith("num_batches_tracked"):
            out[k] = v
            continue
        out[k] = torch.from_numpy(tensor_for(k, tuple(v.shape)))
    model.load_state_dict(out, strict=True)
    return out


def image_input(shape) -> torch.Tensor:
    return torch.from_numpy((2.0 * uniform("input", int(np.prod(shape)))).astype(np.float32).reshape(shape))


def save_fixture(name, arch, tensors, inputs, outputs, extra=None):
    os.makedirs(FIXTURES, exist_ok=True)
    fx = {
        "model": name,
        "arch": arch,
        "tensors": [[k, list(v.shape)] for k, v in tensors.items() if not k.endswith("num_batches_tracked")],
        "inputs": {k: list(v.shape) for k, v in inputs.items()},
        "outputs": {k: {"shape": list(v.shape), "values": [float(x) for x in v.detach().reshape(-1).tolist()]} for k, v in outputs.items()},
    }
    if extra:
        fx.update(extra)
    path = os.path.join(FIXTURES, f"{arch}.json")
    with open(path, "w") as f:
        json.dump(fx, f)
    print(f"{arch}: wrote {path} ({os.path.getsize(path)} bytes)")


def save_hub_format(tensors, path):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in tensors.items() if not k.endswith("num_batches_tracked")}, path)


def check_timm(arch, timm_name, input_shape, num_classes):
    import timm
    model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes).eval()
    t = fill(model)
    with tempfile.TemporaryDirectory() as d:
        save_hub_format(t, os.path.join(d, "model.safetensors"))
    x = image_input(input_shape)
    with torch.no_grad():
        y = model(x)
    save_fixture(timm_name, arch, t, {"pixel_values": x}, {"logits": y}, {"num_classes": num_classes, "input_shape": list(input_shape)})


def clip_config_tiny():
    from transformers import CLIPConfig
    return CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=16, projection_dim=16, hidden_act="quick_gelu", eos_token_id=98),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=16, hidden_act="quick_gelu"),
        projection_dim=16,
    )


def check_clip(arch, cfg, seq):
    from transformers import CLIPModel
    model = CLIPModel(cfg).eval()
    t = fill(model)
    vc, tc = cfg.vision_config, cfg.text_config
    x = image_input((2, 3, vc.image_size, vc.image_size))
    # Token ids: start, a few tokens, end (the largest id), padded with 0 (pooling reads the end token).
    eot = tc.vocab_size - 1
    ids = torch.zeros((2, seq), dtype=torch.int64)
    for b, n in enumerate([5, 9]):
        ids[b, 0] = eot - 1
        for j in range(1, n):
            ids[b, j] = (7 * j + 3 * b) % (eot - 2) + 1
        ids[b, n] = eot
    with torch.no_grad():
        img = model.get_image_features(pixel_values=x)
        txt = model.get_text_features(input_ids=ids)
        if not torch.is_tensor(img):
            img, txt = img.pooler_output, txt.pooler_output
    save_fixture(arch, arch, t, {"pixel_values": x}, {"image_embeds": img, "text_embeds": txt},
                 {"input_ids": ids.tolist(), "config": cfg.to_dict()})


def check_vit(arch):
    from transformers import ViTConfig, ViTForImageClassification
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8,
                    num_labels=5, layer_norm_eps=1e-12)
    model = ViTForImageClassification(cfg).eval()
    t = fill(model)
    x = image_input((2, 3, 32, 32))
    with torch.no_grad():
        y = model(pixel_values=x).logits
    save_fixture(arch, arch, t, {"pixel_values": x}, {"logits": y}, {"config": cfg.to_dict()})


TOKENIZER_CORPUS = [
    "a photo of a red circle.", "a photo of a blue square.", "a bad photo of the green triangle!",
    "itap of a small dog", "a close-up photo of a cat's face", "there's 12 cats and 3 dogs",
    "the photo isn't great, but we'll see", "CLIP's BPE: byte-level merges", "naïve café résumé",
    "a photo of the big yellow truck", "a blurry photo of an airplane", "a sculpture of a horse",
]

TOKENIZER_CASES = [
    "a photo of a cat.", "A  Photo\tOF   a\nCAT", "  leading and trailing spaces  ", "It's a dog's life; they're here, we've won, I'm in, you'll see, he'd go",
    "numbers 12345 and 3.14", "emoji 🙂 and ünïcödé café", "punctuation!!! ... ?? (brackets) [x] {y}", "<|startoftext|>already framed<|endoftext|>",
    "a" * 3, "supercalifragilisticexpialidocious", "", "   ", "hyphen-ated under_scored slash/ed", "tabs\tand\r\nnewlines",
    "word " * 100,
]


def bytes_to_unicode():
    """GPT-2's byte -> printable character map (as OpenAI's simple_tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def bpe_train(corpus, n_merges):
    """The same greedy byte-level BPE as ClipTokenizer::train (most frequent pair, ties: smallest)."""
    import regex as re
    pat = re.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
    enc = bytes_to_unicode()
    words = {}
    for line in corpus:
        text = " ".join(line.split()).lower()
        for m in pat.findall(text):
            w = [enc[b] for b in m.encode("utf-8")]
            w[-1] += "</w>"
            words[tuple(w)] = words.get(tuple(w), 0) + 1
    merges = []
    for _ in range(n_merges):
        counts = {}
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + n
        if not counts:
            break
        best = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        nxt = {}
        for w, n in words.items():
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == best[0] and w[j + 1] == best[1]:
                    out.append(best[0] + best[1]); j += 2
                else:
                    out.append(w[j]); j += 1
            nxt[tuple(out)] = nxt.get(tuple(out), 0) + n
        words = nxt
        merges.append(best)
    vocab = list(enc.values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def check_tokenizer(arch):
    """transformers' CLIPTokenizer on tricky strings with a small BPE learnt from a corpus."""
    from transformers import CLIPTokenizer
    vocab, merges = bpe_train(TOKENIZER_CORPUS, 120)
    d = os.path.join(FIXTURES, arch)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"), model_max_length=16)
    cases = []
    for s in TOKENIZER_CASES:
        ids = tok(s, truncation=True, max_length=16, padding="max_length")["input_ids"]
        cases.append({"text": s, "ids": ids})
    with open(os.path.join(d, "cases.json"), "w") as f:
        json.dump({"tokenizer": type(tok).__name__, "context": 16, "merges": [list(m) for m in merges], "cases": cases}, f, ensure_ascii=False, indent=0)
    print(f"{arch}: {len(cases)} cases, {len(vocab)} tokens, {type(tok).__name__}")


def cache_interop(tlab):
    """Python's huggingface_hub and tlab share one cache through the loopback hub."""
    from huggingface_hub import hf_hub_download
    with tempfile.TemporaryDirectory() as d:
        a, b = os.path.join(d, "a"), os.path.join(d, "b")
        for repo, size in ((a, 5000), (b, 3000)):
            os.makedirs(repo)
            with open(os.path.join(repo, "model.safetensors"), "wb") as f:
                f.write(bytes((i * 31 + size) % 256 for i in range(size)))
            with open(os.path.join(repo, "config.json"), "w") as f:
                f.write('{"x": 1}')
        server = subprocess.Popen([tlab, "serve-hub", "--model", f"org/py={a}", "--model", f"org/rs={b}"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            endpoint = server.stdout.readline().strip()
            env = dict(os.environ, HF_HOME=os.path.join(d, "home"), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_PROGRESS_BARS="1")
            env.pop("HF_HUB_OFFLINE", None)
            env.pop("HF_HUB_CACHE", None)
            py = subprocess.run([sys.executable, "-c",
                                 "from huggingface_hub import hf_hub_download as d; import sys; "
                                 "print(d('org/py', 'model.safetensors')); print(d('org/py', 'config.json'))"],
                                env=env, capture_output=True, text=True)
            assert py.returncode == 0, py.stderr
            off = dict(env, HF_HUB_OFFLINE="1")
            r = subprocess.run([tlab, "fetch", "org/py"], env=off, capture_output=True, text=True)
            assert r.returncode == 0, f"tlab did not find Python's download offline: {r.stderr}"
            print("interop: huggingface_hub -> tlab (offline): ok")
            r = subprocess.run([tlab, "fetch", "org/rs"], env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            py = subprocess.run([sys.executable, "-c",
                                 "from huggingface_hub import hf_hub_download as d; "
                                 "p = d('org/rs', 'model.safetensors'); print(p, len(open(p, 'rb').read()))"],
                                env=off, capture_output=True, text=True)
            assert py.returncode == 0 and py.stdout.strip().endswith(" 3000"), py.stderr
            print("interop: tlab -> huggingface_hub (HF_HUB_OFFLINE=1): ok")
        finally:
            server.terminate()
            server.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tlab", default=os.path.join(ROOT, "target", "debug", "tlab"))
    ap.add_argument("--only", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    jobs = {
        "resnet18": lambda: check_timm("resnet18", "resnet18.a1_in1k", (2, 3, 64, 64), 1000),
        "resnet50": lambda: check_timm("resnet50", "resnet50.a1_in1k", (1, 3, 64, 64), 1000),
        "resnetv2_50x1_bit": lambda: check_timm("resnetv2_50x1_bit", "resnetv2_50x1_bit.goog_in21k", (1, 3, 64, 64), 1000),
        "clip_tiny": lambda: check_clip("clip_tiny", clip_config_tiny(), 16),
        "vit_tiny": lambda: check_vit("vit_tiny"),
        "clip_tokenizer": lambda: check_tokenizer("clip_tokenizer"),
        "interop": lambda: cache_interop(args.tlab),
    }
    for name, job in jobs.items():
        if args.only and name != args.only:
            continue
        job()


if __name__ == "__main__":
    main()
