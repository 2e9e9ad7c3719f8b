"""pix2pix-zero edit directions: sentence banks -> mean CLIP text embeddings -> per-token difference.

The direction of an edit src -> tgt is mean(E(bank_tgt)) - mean(E(bank_src)), where E is the diffusion model's own
text encoder's last hidden state for a sentence padded to 77 tokens ([1, 77, D]); it is added to all 77 token
slots of the caption embedding (authors' `src/make_edit_direction.py`, `src/utils/edit_directions.py`,
`gradio_utils.load_sentence_embeddings`). Banks come from:
- "templates": a built-in, offline template generator with the authors' construction (`gradio_utils.py`
  `generate_image_prompts_with_templates`: 20 adjectives x 10 verbs x 10 backgrounds = 2000 sentences, one random
  sentence structure and adverb each) but our own word lists, and a per-concept seeded choice instead of the
  unseeded `random`. The README notes such template directions are "often entangled"; the paper used GPT-3 banks.
- a folder: `<concept>.txt` (one sentence per line), or a precomputed embedding `<concept>.pt` /
  `<concept>.safetensors` ([1, 77, D] or [N, 77, D]), e.g. the official `assets/embeddings_sd_1.4/{cat,dog,horse,
  zebra}.pt` (cat/dog fp32, horse/zebra fp16, saved on cuda:0: loaded with weights_only=True on the CPU);
- "lm:<hub id>": sentences sampled from a language model (the authors' flan-t5-xl / bloomz prompt and sampling).
Bank embeddings (and LM banks) are cached on disk, keyed by the weights and the exact sentences.
"""

from __future__ import annotations

import difflib
import hashlib
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.store import atomic_path, atomic_write_text, cache_dir, hash_obj

from ..base import InputError, WeightsNotFoundError

CACHE_VERSION = 1
EMBED_BATCH = 64  # sentences per text-encoder call (gradio_utils embeds one at a time; the mean is the same)

# Our word lists for the template generator (same construction as the authors', not their words).
ADJECTIVES = (
    "small", "large", "happy", "sleepy", "curious", "beautiful", "old", "young", "playful", "calm",
    "fluffy", "shiny", "wild", "friendly", "lonely", "proud", "muddy", "graceful", "tiny", "huge",
)
VERBS = ("sitting", "running", "resting", "walking", "looking around", "standing", "lying down", "waiting",
         "posing", "exploring")
BACKGROUNDS = ("in a park", "on a beach", "in a living room", "in a forest", "on a city street", "in a garden",
               "on a mountain trail", "in a snowy field", "near a river", "in a photo studio")
ADVERBS = ("quietly", "happily", "lazily", "slowly", "proudly", "calmly", "patiently", "cheerfully", "carefully",
           "peacefully")
STRUCTURES = (
    "a photo of {a_adj} {adj} {w} {verb} {bg}.",
    "{a_w} {w} {verb} {bg}.",
    "{bg}, {a_w} {w} is {verb}.",
    "{a_adj} {adj} {w} is {verb} {adv} {bg}.",
    "{adv}, {a_w} {w} is {verb} {bg}.",
    "a picture of {a_w} {w} {bg}, {verb}.",
    "{a_w} {w} that is {adj}, {verb} {bg}.",
    "a close-up photo of {a_adj} {adj} {w} {verb}.",
)
_ARTICLES = {"a", "an", "the"}

# Language-model banks: the authors' flan-t5-xl / bloomz prompt and sampling (gradio_utils.py).
LM_PROMPT = ("Provide a caption for images containing a {word}. The captions should be in English and should be "
             "no longer than 150 characters. The caption must contain the word {word}. Caption:")
LM_SAMPLING = dict(do_sample=True, temperature=0.95, num_return_sequences=16, max_length=128, min_length=15,
                   eta_cutoff=1e-5)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


#: Sentences of the full template bank (20 adjectives x 10 verbs x 10 backgrounds).
TEMPLATE_BANK_SIZE = len(ADJECTIVES) * len(VERBS) * len(BACKGROUNDS)


def template_sentences(concept: str, num: int = TEMPLATE_BANK_SIZE) -> list[str]:
    """`num` (default all 2000) template sentences about `concept`; deterministic: the choices, and the subset
    when `num` is smaller, are seeded by the concept, so a small bank is the same on every machine."""
    if not 1 <= num <= TEMPLATE_BANK_SIZE:
        raise InputError(f"a template bank holds 1 to {TEMPLATE_BANK_SIZE} sentences, got {num}")
    concept = concept.strip()
    if not concept:
        raise InputError("an edit concept must be a non-empty word or phrase")
    rng = random.Random(int(hashlib.sha256(concept.encode()).hexdigest()[:16], 16))
    out = []
    for bg in BACKGROUNDS:
        for verb in VERBS:
            for adj in ADJECTIVES:
                s = rng.choice(STRUCTURES).format(a_adj=_article(adj), adj=adj, a_w=_article(concept), w=concept,
                                                  verb=verb, bg=bg, adv=rng.choice(ADVERBS))
                out.append(s[0].upper() + s[1:])
    if num < len(out):
        keep = sorted(random.Random(f"bank:{concept}").sample(range(len(out)), num))
        out = [out[i] for i in keep]
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'-]+", text.lower())


def _strip_articles(words: list[str]) -> list[str]:
    while words and words[0] in _ARTICLES:
        words = words[1:]
    return words


def concepts_from_prompts(src: str, tgt: str) -> tuple[str, str]:
    """The source and target concepts of an edit: the words where the two prompts differ.

    "a photo of a cat" -> "a photo of a dog" gives ("cat", "dog"). When one side adds words without replacing any
    ("a cat" -> "a cat wearing glasses"), both sides take the neighbouring shared word ("cat", "cat wearing
    glasses"). Leading articles are dropped (the templates add their own). Equal prompts are an error.
    """
    a, b = _words(src), _words(tgt)
    ops = [op for op in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes() if op[0] != "equal"]
    if not ops:
        raise InputError(f"source and target prompts do not differ ({src!r}); give different prompts or set "
                         "source_concept / target_concept")
    sw: list[str] = []
    tw: list[str] = []
    for _, i1, i2, j1, j2 in ops:
        if i1 == i2 or j1 == j2:  # pure insertion or deletion: take one shared neighbour word on both sides
            if i1 > 0 and j1 > 0:
                i1, j1 = i1 - 1, j1 - 1
            elif i2 < len(a) and j2 < len(b):
                i2, j2 = i2 + 1, j2 + 1
        sw += a[i1:i2]
        tw += b[j1:j2]
    s, t = " ".join(_strip_articles(sw)), " ".join(_strip_articles(tw))
    if not s or not t:
        raise InputError(f"cannot tell the edited concept from {src!r} -> {tgt!r}; set source_concept and "
                         "target_concept")
    return s, t


def read_sentences(path: str | Path) -> list[str]:
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    out = [ln for ln in lines if ln]
    if not out:
        raise InputError(f"sentence bank {path} is empty")
    return out


def load_embedding_file(path: str | Path) -> Any:
    """A precomputed concept embedding file (.pt tensor, weights_only; or .safetensors) as float32 [1, 77, D]."""
    import torch

    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(p))
        if len(tensors) != 1:
            raise InputError(f"{p} holds {len(tensors)} tensors; expected one [1, 77, D] embedding")
        t = next(iter(tensors.values()))
    else:
        t = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(t, torch.Tensor) or t.ndim not in (2, 3):
        raise InputError(f"{p} does not hold a [N, 77, D] embedding tensor")
    t = t.float()
    if t.ndim == 2:
        t = t[None]
    return t.mean(0, keepdim=True)


def clean_lm_lines(lines: Sequence[str], word: str, *, suffix: bool = True) -> list[str]:
    """The authors' post-processing of LM samples (gradio_utils.py): with `suffix` (bloomz_compute_sentences; the
    flan-t5 branch has no such rule) a stripped line that misses a word of the concept gets ', {word}' appended;
    then clean_l_sentences drops digits, '.', '-', ')' and strips. Lines left empty are dropped (upstream keeps them
    and averages the embedding of an empty prompt into the bank; with the suffix rule no line is empty)."""
    out = []
    for line in lines:
        s = line.strip()
        if suffix and any(sub not in s for sub in word.split(" ")):
            s = f"{s}, {word}"
        s = re.sub(r"\d", "", s).replace(".", "").replace("-", "").replace(")", "").strip()
        if s:
            out.append(s)
    return out


def lm_sentences(model_id: str, concept: str, num: int, *, device: Any = "cpu", seed: int = 0,
                 max_calls: int = 1000) -> list[str]:
    """`num` sentences about `concept` sampled from a hub language model (seq2seq or causal), cached on disk."""
    # "authors-2": eta_cutoff, the bloomz-only suffix rule and the uncut last call (banks made before differ)
    key = hash_obj("p2pz-lm-bank", CACHE_VERSION, "authors-2", model_id, concept, num, seed)
    path = cache_dir() / "pix2pix-zero" / "banks" / f"{key}.txt"
    if path.is_file():
        return read_sentences(path)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from ..common.loading import resolve

    local = resolve(model_id, allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors"])
    if not any(local.glob("*.safetensors")):
        raise WeightsNotFoundError(f"{model_id}: no .safetensors weights in {local} (pickled .bin files are not "
                                   "loaded)")
    cfg = AutoConfig.from_pretrained(local)
    cls = AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else AutoModelForCausalLM
    tok = AutoTokenizer.from_pretrained(local)
    model = cls.from_pretrained(local).to(device).eval()
    ids = tok(LM_PROMPT.format(word=concept), return_tensors="pt").input_ids.to(device)
    sentences: list[str] = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for _ in range(max_calls):
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            out = model.generate(ids, **LM_SAMPLING, pad_token_id=pad)
            if not cfg.is_encoder_decoder:
                out = out[:, ids.shape[1]:]
            sentences += clean_lm_lines(tok.batch_decode(out, skip_special_tokens=True), concept,
                                        suffix=not cfg.is_encoder_decoder)
            if len(sentences) >= num:
                break
    if not sentences:
        raise InputError(f"{model_id} produced no usable sentences for {concept!r}")
    # upstream keeps every sentence of the last call (num rounded up to a multiple of 16)
    atomic_write_text(path, "\n".join(sentences) + "\n")
    return sentences


class DirectionBuilder:
    """Concept embeddings and edit directions for one text encoder (weights_id keys the disk cache)."""

    def __init__(self, tokenizer: Any, text_encoder: Any, weights_id: str) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.weights_id = weights_id
        self._memo: dict[str, Any] = {}

    # -- embeddings ---------------------------------------------------------------------------------
    def embed_sentences(self, sentences: Sequence[str]) -> Any:
        """Mean last-hidden-state embedding [1, 77, D] (float32) of the sentences, cached on disk."""
        import torch
        from safetensors.torch import load_file, save_file

        digest = hashlib.sha256("\n".join(sentences).encode()).hexdigest()
        key = hash_obj("p2pz-bank-embedding", CACHE_VERSION, self.weights_id, digest)
        if key in self._memo:
            return self._memo[key]
        path = cache_dir() / "pix2pix-zero" / "embeddings" / key[:2] / f"{key}.safetensors"
        if path.is_file():
            emb = load_file(str(path))["embedding"]
        else:
            tok, enc = self.tokenizer, self.text_encoder
            total = None
            with torch.inference_mode():
                for i in range(0, len(sentences), EMBED_BATCH):
                    ids = tok(list(sentences[i:i + EMBED_BATCH]), padding="max_length",
                              max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
                    h = enc(ids.to(enc.device), attention_mask=None)[0].float().sum(0, keepdim=True)
                    total = h if total is None else total + h
            emb = (total / len(sentences)).cpu().contiguous()
            with atomic_path(path) as tmp:
                save_file({"embedding": emb}, str(tmp), metadata={"sentences": str(len(sentences)),
                                                                  "weights": self.weights_id})
        self._memo[key] = emb
        return emb

    def concept_embedding(self, concept: str, source: str, *, lm_bank_size: int = 1000,
                          template_bank_size: int = TEMPLATE_BANK_SIZE, device: Any = "cpu") -> Any:
        """The mean embedding [1, 77, D] of `concept`'s bank from `source` ("templates", a folder, "lm:<id>")."""
        memo_key = f"{source}\0{concept}\0{lm_bank_size}\0{template_bank_size}"
        if memo_key in self._memo:
            return self._memo[memo_key]
        if source == "templates":
            emb = self.embed_sentences(template_sentences(concept, template_bank_size))
        elif source.startswith("lm:"):
            emb = self.embed_sentences(lm_sentences(source[3:], concept, lm_bank_size, device=device))
        else:
            emb = self._from_folder(Path(source).expanduser(), concept)
        width = self.text_encoder.config.hidden_size
        if emb.shape[-1] != width or emb.shape[-2] != self.tokenizer.model_max_length:
            raise InputError(f"the embedding of {concept!r} from {source} has shape {tuple(emb.shape)}, but this "
                             f"model's text encoder gives [1, {self.tokenizer.model_max_length}, {width}] (directions "
                             "made for another model, e.g. SD 1.x = 768 vs SD 2.x = 1024, do not transfer)")
        if not source.startswith(("templates", "lm:")):  # files may change between calls: only memoize generated banks
            return emb
        self._memo[memo_key] = emb
        return emb

    def _from_folder(self, folder: Path, concept: str) -> Any:
        if not folder.is_dir():
            raise InputError(f"directions={str(folder)!r} is neither 'templates', 'prompts', 'lm:<hub id>' nor a "
                             "folder of sentence banks / embeddings")
        for stem in dict.fromkeys((concept, concept.replace(" ", "_"), concept.replace(" ", "-"))):
            for ext in (".safetensors", ".pt"):
                if (folder / f"{stem}{ext}").is_file():
                    return load_embedding_file(folder / f"{stem}{ext}")
            if (folder / f"{stem}.txt").is_file():
                return self.embed_sentences(read_sentences(folder / f"{stem}.txt"))
        raise InputError(f"no bank for concept {concept!r} in {folder} (expected {concept}.txt, .pt or .safetensors)")

    def direction(self, src_concept: str, tgt_concept: str, source: str, **kw: Any) -> Any:
        """mean(E(bank_tgt)) - mean(E(bank_src)): [1, 77, D] float32 (src/utils/edit_directions.py)."""
        return self.concept_embedding(tgt_concept, source, **kw) - self.concept_embedding(src_concept, source, **kw)

    def prompt_direction(self, src_prompt: str, tgt_prompt: str) -> Any:
        """E(tgt_prompt) - E(src_prompt): the one-sentence-bank direction (an ablation; no sentence averaging)."""
        return self.embed_sentences([tgt_prompt]) - self.embed_sentences([src_prompt])
