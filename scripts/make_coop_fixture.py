"""Reference fixtures for CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models"):
prompt assembly, text encoding of prompt embeddings, logits, loss and d(loss)/d(ctx), computed by
PyTorch on the tiny transformers CLIP in fixtures/tiny-clip-hf/, plus Dassl's learning-rate schedule
and a torch.optim.SGD trace.

The semantics follow the official code (KaiyangZhou/CoOp, trainers/coop.py: PromptLearner,
TextEncoder, CustomCLIP, forward_backward), re-implemented here on top of transformers:

    class names        "_" -> " "; name_len = number of BPE tokens of the name alone
    prompt text        prompt_prefix + " " + name + "."   (prompt_prefix = "X X ... X" (M times),
                       or the init words); tokenized <|startoftext|> ... <|endoftext|>,
                       0-padded to 77
    embedding          token_embedding(token_ids) (K,77,d); prefix = [:, :1] (SOS),
                       suffix = [:, 1+M:] (class tokens, ".", EOT, padding)
    ctx                unified (M,d) expanded to (K,M,d), or class-specific (K,M,d)
    "end"              cat(prefix, ctx, suffix)
    "middle"           half = M // 2: cat(prefix_i, ctx_i[:half], suffix_i[:len_i], ctx_i[half:],
                       suffix_i[len_i:])
    "front"            cat(prefix_i, suffix_i[:len_i], ctx_i, suffix_i[len_i:])
    eot_index          argmax(token_ids) (position of 49407; the rearrangement does not move it)
    text encoder       x = prompts + position_embedding; causal pre-LN transformer; final LN;
                       x[eot_index] @ text_projection
    logits             exp(logit_scale) * normalize(image_features) @ normalize(text_features).T
    loss               cross_entropy(logits, labels), mean over the batch; gradient w.r.t. ctx only

transformers path for the text encoder (transformers 5; 4.x differs, see text_features()):
    h = model.text_model.embeddings(inputs_embeds=prompts)             # adds position embeddings
    h = model.text_model.encoder(inputs_embeds=h, attention_mask=M).last_hidden_state
        with M the additive causal mask (K,1,77,77): 0 on/below the diagonal, -inf above
        (as OpenAI CLIP's build_attention_mask), the model loaded with attn_implementation="eager"
    h = model.text_model.final_layer_norm(h)
    text_features = model.text_projection(h[arange(K), eot_index])

Cases, one file each, fixtures/coop/<case>.safetensors:
    unified_end        M=4, unified ctx, class token at the end, random init (std 0.02)
    csc_middle         M=5 (odd: half = 2), class-specific ctx, middle, random init
    unified_front      M=3, unified ctx, front, random init
    unified_end_words  ctx initialised from the words "a photo of a" (M=4 = its BPE token count =
                       its word count, which is what CoOp uses), unified, end; prompt text
                       "a photo of a <name>."; gradient at that init
Class names: ["dog", "paper_crane", "golden retriever", "x"]. Batch: 6 image features (dim 16,
torch.randn, seeded), labels [0,1,2,3,1,2].

Tensors per file (f32 unless noted):
    ctx (M,d) or (K,M,d) the initial context      image_features (6,16)   labels i64 (6,)
    prompts (K,77,d) assembled embeddings         eot_index i64 (K,)      token_ids i64 (K,77)
    name_lens i64 (K,)                            text_features (K,16) (projected, not normalised)
    logits (6,K)        loss ()                   grad_ctx (same shape as ctx)
Metadata (strings): position, n_ctx, csc ("true"/"false"), class_names (JSON list),
    init ("random" or the words), prompt_texts (JSON list), logit_scale_exp.

fixtures/coop/schedule.json  lr used in each epoch 0..9 by Dassl's build_lr_scheduler for CoOp's
    settings (SGD base lr 0.002, "cosine" = CosineAnnealingLR(T_max=max_epoch=10), WARMUP_EPOCH 1,
    WARMUP_TYPE "constant", WARMUP_CONS_LR 1e-5, WARMUP_RECOUNT True (Dassl's default)), with
    Dassl's _BaseWarmupScheduler / ConstantWarmupScheduler re-implemented below and
    scheduler.step() once after each epoch (CoOp calls update_lr() after the last batch).
fixtures/coop/sgd.json  torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=5e-4, dampening=0,
    nesterov=False) on a float32 3-vector for 3 steps with fixed gradients.

Checks: the encoder path reproduces model.get_text_features(token_ids) when the prompts are the
plain token embeddings (every case and position, ctx set to the embeddings of "X"/the init words,
compared with token_embedding of the equivalently re-ordered text); the float32 gradient agrees
with a float64 autograd gradient and the float64 gradient with central finite differences
(coordinates and a random direction); gradients are non-zero in every ctx row used.

Usage (from the repo root):  python3 scripts/make_coop_fixture.py
Needs: torch, transformers (5.x; 4.x should work), safetensors. CPU only, deterministic.
"""

import copy
import json
import math
import os

import torch
import torch.nn.functional as F

from fixture_files import canonical_header  # noqa: F401  (also used by the scripts that import this one)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HF_DIR = os.path.join(ROOT, "fixtures", "tiny-clip-hf")
OUT = os.path.join(ROOT, "fixtures", "coop")

SOT, EOT, CTX = 49406, 49407, 77
CLASS_NAMES = ["dog", "paper_crane", "golden retriever", "x"]
LABELS = [0, 1, 2, 3, 1, 2]
IMAGE_SEED = 1234

# name, n_ctx, csc, position, init ("random" or words), seed for the random ctx
CASES = [
    ("unified_end", 4, False, "end", "random", 11),
    ("csc_middle", 5, True, "middle", "random", 22),
    ("unified_front", 3, False, "front", "random", 33),
    ("unified_end_words", None, False, "end", "a photo of a", None),
]


def tf_major():
    import transformers

    return int(transformers.__version__.split(".")[0])


def dtype_kw(dtype):
    return {"dtype": dtype} if tf_major() >= 5 else {"torch_dtype": dtype}


def load():
    from transformers import CLIPModel, CLIPTokenizerFast

    tok = CLIPTokenizerFast.from_pretrained(HF_DIR)
    model = CLIPModel.from_pretrained(HF_DIR, attn_implementation="eager",
                                      **dtype_kw(torch.float32)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    assert model.text_model.config.hidden_size == 32 and model.text_projection.out_features == 16
    return tok, model


def tokenize(tok, text):
    """OpenAI clip.tokenize: SOS ... EOT, 0-padded to 77 (i64 (77,))."""
    ids = list(tok(text)["input_ids"])
    assert ids[0] == SOT and ids[-1] == EOT and len(ids) <= CTX, ids
    row = torch.zeros(CTX, dtype=torch.int64)
    row[: len(ids)] = torch.tensor(ids)
    return row


def bpe(tok, text):
    """BPE ids of text alone (no SOS/EOT), as OpenAI's _tokenizer.encode."""
    return list(tok(text, add_special_tokens=False)["input_ids"])


def causal_mask(k, n, dtype):
    m = torch.full((n, n), float("-inf"), dtype=dtype).triu(1)
    return m.expand(k, 1, n, n)


def text_features(model, prompts, eot_index):
    """CoOp's TextEncoder on prompt embeddings (K,77,d) -> (K,proj)."""
    tm = model.text_model
    h = tm.embeddings(inputs_embeds=prompts)
    mask = causal_mask(prompts.shape[0], prompts.shape[1], prompts.dtype)
    if tf_major() >= 5:
        h = tm.encoder(inputs_embeds=h, attention_mask=mask).last_hidden_state
    else:  # transformers 4: separate causal_attention_mask argument
        h = tm.encoder(inputs_embeds=h, causal_attention_mask=mask).last_hidden_state
    h = tm.final_layer_norm(h)
    pooled = h[torch.arange(h.shape[0]), eot_index]
    return model.text_projection(pooled)


def text_features_ref(model, token_ids):
    out = model.get_text_features(input_ids=token_ids)
    return out if torch.is_tensor(out) else out.pooler_output


class PromptSetup:
    """PromptLearner's fixed part: token ids, prefix/suffix buffers, name lengths."""

    def __init__(self, tok, model, n_ctx, init, class_names):
        names = [n.replace("_", " ") for n in class_names]
        self.name_lens = [len(bpe(tok, n)) for n in names]
        if init == "random":
            prefix_text = " ".join(["X"] * n_ctx)
        else:
            prefix_text = init.replace("_", " ")
        self.texts = [prefix_text + " " + n + "." for n in names]
        self.token_ids = torch.stack([tokenize(tok, t) for t in self.texts])
        emb = model.text_model.embeddings.token_embedding(self.token_ids).detach()
        self.embedding = emb
        self.prefix = emb[:, :1, :]
        self.suffix = emb[:, 1 + n_ctx:, :]
        self.eot_index = self.token_ids.argmax(dim=-1)
        assert torch.equal(self.eot_index, (self.token_ids == EOT).int().argmax(dim=-1))
        # the class tokens right after the context are exactly the name's own BPE tokens
        for i, n in enumerate(names):
            got = self.token_ids[i, 1 + n_ctx: 1 + n_ctx + self.name_lens[i]].tolist()
            assert got == bpe(tok, n), (n, got)
            assert self.token_ids[i, 1 + n_ctx + self.name_lens[i]].item() == bpe(tok, ".")[0]
        self.n_ctx, self.names = n_ctx, names

    def assemble(self, ctx, position):
        k = self.token_ids.shape[0]
        prefix, suffix = self.prefix.to(ctx.dtype), self.suffix.to(ctx.dtype)
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(k, -1, -1)
        if position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        rows = []
        for i in range(k):
            nl = self.name_lens[i]
            p, cls, rest = prefix[i:i + 1], suffix[i:i + 1, :nl], suffix[i:i + 1, nl:]
            c = ctx[i:i + 1]
            if position == "middle":
                half = self.n_ctx // 2
                rows.append(torch.cat([p, c[:, :half], cls, c[:, half:], rest], dim=1))
            elif position == "front":
                rows.append(torch.cat([p, cls, c, rest], dim=1))
            else:
                raise ValueError(position)
        return torch.cat(rows, dim=0)

    def reordered_texts(self, ctx_words, position):
        """The text whose plain tokenization equals the assembled prompt when ctx = ctx_words."""
        out = []
        for n in self.names:
            w = ctx_words
            if position == "end":
                out.append(" ".join(w + [n]) + ".")
            elif position == "middle":
                h = self.n_ctx // 2
                out.append(" ".join(w[:h] + [n] + w[h:]) + ".")
            else:
                out.append(" ".join([n] + w) + ".")
        return out


def forward(model, setup, ctx, position, image_features, labels):
    prompts = setup.assemble(ctx, position)
    tf = text_features(model, prompts, setup.eot_index)
    img_n = image_features / image_features.norm(dim=-1, keepdim=True)
    txt_n = tf / tf.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * img_n @ txt_n.t()
    loss = F.cross_entropy(logits, labels)
    return prompts, tf, logits, loss


def check_encoder_path(tok, model, setup, n_ctx, csc, position, init):
    """ctx = the embeddings of the words the prompt text had: the encoder must equal
    get_text_features on the (re-ordered) token ids."""
    k = setup.token_ids.shape[0]
    emb = setup.embedding[:, 1:1 + n_ctx, :]  # rows are identical across classes
    assert torch.equal(emb, emb[:1].expand_as(emb))
    ctx = emb.clone() if csc else emb[0].clone()
    prompts = setup.assemble(ctx, position)
    words = ["X"] * n_ctx if init == "random" else init.split(" ")
    ids = torch.stack([tokenize(tok, t) for t in setup.reordered_texts(words, position)])
    assert torch.equal(ids.argmax(-1), setup.eot_index), "rearrangement moved the EOT"
    want_prompts = model.text_model.embeddings.token_embedding(ids)
    assert torch.equal(prompts, want_prompts), "prompt assembly != embedding of re-ordered text"
    with torch.no_grad():
        got = text_features(model, prompts, setup.eot_index)
        want = text_features_ref(model, ids)
    err = (got - want).abs().max().item()
    assert err < 1e-6, f"encoder path differs from get_text_features by {err}"
    assert k == 4
    return err


def model_float64(model):
    """A float64 copy of the frozen model, for the gradient checks."""
    m64 = copy.deepcopy(model).double()
    # transformers' eager attention always takes the softmax in float32
    # (softmax(..., dtype=torch.float32).to(query.dtype)), which would leave float32 noise in a
    # float64 model and ruin finite differences: use SDPA (same explicit additive mask) here.
    if hasattr(m64, "set_attn_implementation"):
        m64.set_attn_implementation("sdpa")
    else:
        m64.config._attn_implementation = "sdpa"
        m64.text_model.config._attn_implementation = "sdpa"
    assert m64.text_model.config._attn_implementation == "sdpa"
    return m64


def fd_check(model, setup, ctx32, position, image_features, labels, grad32, seed):
    """float64 autograd vs central finite differences; float32 grad vs float64 grad."""
    m64 = model_float64(model)
    img64, lab = image_features.double(), labels

    def loss_of(c):
        return forward(m64, setup, c, position, img64, lab)[3]

    return check_gradient(loss_of, ctx32, grad32, seed)


def check_gradient(loss_of, ctx32, grad32, seed):
    """loss_of: float64 ctx -> float64 scalar loss. Its autograd gradient at ctx32 vs grad32
    (relative, < 1e-4) and vs central finite differences (three coordinates: the largest, a
    seeded random one, the last; and a seeded random direction)."""
    ctx64 = ctx32.detach().double().requires_grad_(True)
    loss = loss_of(ctx64)
    (g64,) = torch.autograd.grad(loss, ctx64)
    rel32 = ((grad32.double() - g64).norm() / g64.norm()).item()
    assert rel32 < 1e-4, f"float32 grad vs float64 grad rel err {rel32}"
    eps = 1e-6
    flat = g64.flatten()
    gen = torch.Generator().manual_seed(seed)
    coords = [int(flat.abs().argmax()), int(torch.randint(flat.numel(), (1,), generator=gen)),
              flat.numel() - 1]
    worst = 0.0
    with torch.no_grad():
        for idx in coords:
            e = torch.zeros_like(flat)
            e[idx] = eps
            e = e.view_as(ctx64)
            fd = (loss_of(ctx64 + e) - loss_of(ctx64 - e)).item() / (2 * eps)
            an = flat[idx].item()
            rel = abs(fd - an) / max(abs(an), 1e-12)
            worst = max(worst, rel if abs(an) > 1e-8 else abs(fd - an))
            assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)) + 1e-5 * abs(an), (idx, fd, an)
        d = torch.randn(ctx64.shape, generator=gen, dtype=torch.float64)
        fd = (loss_of(ctx64 + eps * d) - loss_of(ctx64 - eps * d)).item() / (2 * eps)
        an = (g64 * d).sum().item()
        rel_dir = abs(fd - an) / abs(an)
        assert rel_dir < 1e-5, (fd, an)
    return rel32, worst, rel_dir, coords


def word_init(tok, model, init):
    """CoOp's word initialisation: n_ctx = the number of words (which must equal their BPE
    token count), ctx = their token embeddings (M,d) (embedding of clip.tokenize(words) rows
    1..M)."""
    words = init.replace("_", " ")
    n_words = len(words.split(" "))  # CoOp: n_ctx = len(ctx_init.split(" "))
    n_bpe = len(bpe(tok, words))
    assert n_words == n_bpe, (n_words, n_bpe)
    init_ids = tokenize(tok, words)
    with torch.no_grad():
        emb = model.text_model.embeddings.token_embedding(init_ids[None])
    return n_bpe, emb[0, 1:1 + n_bpe, :].clone()


def case_metadata(model, setup, position, n_ctx, csc, init):
    return {
        "position": position,
        "n_ctx": str(n_ctx),
        "csc": "true" if csc else "false",
        "class_names": json.dumps(CLASS_NAMES),
        "init": init,
        "prompt_texts": json.dumps(setup.texts),
        "logit_scale_exp": repr(model.logit_scale.exp().item()),
    }


def save(tensors, meta, path):
    """save_file, then the canonical (sorted-metadata) header."""
    from safetensors.torch import save_file

    save_file(tensors, path, metadata=meta)
    canonical_header(path)
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")


def make_batch(model):
    """The 6 image features (randn, seeded, dim = projection) and their labels."""
    image_features = torch.randn(len(LABELS), model.text_projection.out_features,
                                 generator=torch.Generator().manual_seed(IMAGE_SEED))
    return image_features, torch.tensor(LABELS, dtype=torch.int64)


def make_case(tok, model, image_features, labels, name, n_ctx, csc, position, init, seed):
    if init != "random":
        n_ctx, ctx_words = word_init(tok, model, init)
    setup = PromptSetup(tok, model, n_ctx, init, CLASS_NAMES)
    k, d = setup.token_ids.shape[0], setup.embedding.shape[-1]
    enc_err = check_encoder_path(tok, model, setup, n_ctx, csc, position, init)

    if init == "random":
        shape = (k, n_ctx, d) if csc else (n_ctx, d)
        g = torch.Generator().manual_seed(seed)
        ctx0 = torch.randn(shape, generator=g, dtype=torch.float32) * 0.02
    else:
        ctx0 = ctx_words
        assert not csc

    ctx = ctx0.clone().requires_grad_(True)
    prompts, tf, logits, loss = forward(model, setup, ctx, position, image_features, labels)
    loss.backward()
    grad = ctx.grad.detach().clone()
    assert torch.isfinite(grad).all() and torch.isfinite(loss)
    assert grad.abs().amax(dim=-1).min() > 0, "a ctx row got a zero gradient"
    if init != "random":
        with torch.no_grad():
            want = text_features_ref(model, setup.token_ids)
        assert (tf - want).abs().max().item() < 1e-6, "word init: prompts != plain text"
    rel32, worst, rel_dir, coords = fd_check(model, setup, ctx0, position, image_features,
                                             labels, grad, seed or 7)

    tensors = {
        "ctx": ctx0.contiguous(),
        "image_features": image_features.contiguous(),
        "labels": labels.contiguous(),
        "prompts": prompts.detach().contiguous(),
        "eot_index": setup.eot_index.to(torch.int64).contiguous(),
        "token_ids": setup.token_ids.contiguous(),
        "name_lens": torch.tensor(setup.name_lens, dtype=torch.int64),
        "text_features": tf.detach().contiguous(),
        "logits": logits.detach().contiguous(),
        "loss": loss.detach().reshape(()).contiguous(),
        "grad_ctx": grad.contiguous(),
    }
    for key, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), key
    meta = case_metadata(model, setup, position, n_ctx, csc, init)
    path = os.path.join(OUT, f"{name}.safetensors")
    save(tensors, meta, path)
    print(f"    texts {setup.texts}, name_lens {setup.name_lens}, "
          f"eot_index {setup.eot_index.tolist()}")
    print(f"    loss {loss.item():.6f}, |grad_ctx| max {grad.abs().max().item():.3e}, "
          f"encoder path vs get_text_features {enc_err:.1e}, f32 vs f64 grad rel {rel32:.1e}, "
          f"finite differences: coords {coords} worst rel {worst:.1e}, direction rel {rel_dir:.1e}")
    for key, v in tensors.items():
        print(f"    {key}: {str(v.dtype).replace('torch.', '')} {tuple(v.shape)}")


# ---- Dassl's warmup wrappers (dassl/optim/lr_scheduler.py), re-implemented ---------------------
class _BaseWarmupScheduler(torch.optim.lr_scheduler._LRScheduler):
    def __init__(self, optimizer, successor, warmup_epoch, last_epoch=-1):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        raise NotImplementedError

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)


class ConstantWarmupScheduler(_BaseWarmupScheduler):
    def __init__(self, optimizer, successor, warmup_epoch, cons_lr, last_epoch=-1):
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


def make_schedule():
    max_epoch, base_lr, warmup_epoch, cons_lr = 10, 0.002, 1, 1e-5
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr, momentum=0.9, weight_decay=5e-4)
    # Dassl build_lr_scheduler: cosine, then (WARMUP_RECOUNT True: successor.last_epoch untouched)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(max_epoch))
    sched = ConstantWarmupScheduler(opt, sched, warmup_epoch, cons_lr)
    lrs = []
    for _ in range(max_epoch):
        lrs.append(opt.param_groups[0]["lr"])  # the lr every batch of this epoch uses
        p.grad = torch.zeros_like(p)
        opt.step()
        sched.step()  # CoOp: update_lr() after the last batch of the epoch
    closed = [cons_lr] + [base_lr * (1 + math.cos(math.pi * t / max_epoch)) / 2
                          for t in range(max_epoch - warmup_epoch)]
    for a, b in zip(lrs, closed):
        assert abs(a - b) <= 1e-12 * b, (lrs, closed)
    data = {
        "description": "lr used during each epoch 0..max_epoch-1 (Dassl ConstantWarmupScheduler "
                       "around CosineAnnealingLR(T_max=max_epoch), scheduler.step() once after "
                       "each epoch, WARMUP_RECOUNT=True): epoch 0 = warmup_cons_lr, epoch e>=1 = "
                       "0.5*base_lr*(1+cos(pi*(e-1)/max_epoch))",
        "max_epoch": max_epoch, "base_lr": base_lr, "lr_scheduler": "cosine",
        "warmup_epoch": warmup_epoch, "warmup_type": "constant", "warmup_cons_lr": cons_lr,
        "warmup_recount": True, "lrs": lrs,
    }
    path = os.path.join(OUT, "schedule.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.relpath(path, ROOT)}: lrs {lrs}")


def make_sgd():
    lr, momentum, wd = 0.1, 0.9, 5e-4
    p0 = [1.0, -2.0, 0.5]
    grads = [[0.3, -0.1, 0.25], [-0.2, 0.05, 0.4], [0.1, 0.6, -0.35]]
    p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float32))
    opt = torch.optim.SGD([p], lr=lr, momentum=momentum, weight_decay=wd, dampening=0,
                          nesterov=False)
    params, bufs = [], []
    mp, mbuf = torch.tensor(p0, dtype=torch.float64), None  # independent float64 recurrence
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
        params.append(p.detach().tolist())
        bufs.append(opt.state[p]["momentum_buffer"].tolist())
        dp = torch.tensor(g, dtype=torch.float64) + wd * mp
        mbuf = dp.clone() if mbuf is None else momentum * mbuf + dp
        mp = mp - lr * mbuf
        assert torch.allclose(torch.tensor(params[-1], dtype=torch.float64), mp, rtol=1e-6,
                              atol=1e-7)
    data = {
        "description": "torch.optim.SGD on a float32 3-vector: d = grad + weight_decay*param; "
                       "buf = d (first step) else momentum*buf + (1-dampening)*d; "
                       "param -= lr*buf. params[i]/momentum_buffers[i] are after step i+1.",
        "lr": lr, "momentum": momentum, "weight_decay": wd, "dampening": 0.0,
        "nesterov": False, "dtype": "float32", "initial_param": p0, "grads": grads,
        "params": params, "momentum_buffers": bufs,
    }
    path = os.path.join(OUT, "sgd.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.relpath(path, ROOT)}: params {params}")


def main():
    import transformers

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    os.makedirs(OUT, exist_ok=True)
    tok, model = load()
    image_features, labels = make_batch(model)
    for case in CASES:
        make_case(tok, model, image_features, labels, *case)
    make_schedule()
    make_sgd()


if __name__ == "__main__":
    main()
