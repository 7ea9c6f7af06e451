"""BLIP-2 captioner (Blip2ForConditionalGeneration + Blip2Processor) for the caption stage, per profile.

- `tiny`: a 69k-parameter BLIP-2 with a flan-t5-style (T5) text model over `tiny_vocab.NOUNS`,
  seeded so every build holds the same weights. Its generation config is shaped so that random weights
  still caption: see `_shape_tiny_generation`.
- `paper`: `Salesforce/blip2-flan-t5-xl` (or `models.blip2`, a hub id or local directory).
- `paper-shapes`: the same architecture at full size with random weights, for throughput and memory.
  3.94e9 parameters (ViT-g 0.99e9, Q-Former 0.11e9, flan-t5-xl 2.85e9): ≈ 7.9 GB in bfloat16, ≈ 16 GB in
  float32, plus activations. Builds in ≈ 40 s on two CPU cores, mostly filling the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from huggingface_hub.errors import HFValidationError
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessor,
    PreTrainedTokenizerFast,
    T5Config,
)
from transformers.initialization import no_init_weights

from lambda_eclipse.config import ModelsSection
from lambda_eclipse.errors import ModelNotFoundError
from lambda_eclipse.models import seeded  # imported before transformers' models: makes torchvision importable
from lambda_eclipse.models.tiny_vocab import NOUNS
from lambda_eclipse.profile import Profile, pick

# T5's layout (pad 0, eos 1, unk 2) plus a BOS that the tokenizer prepends and the image placeholder
# that the processor repeats once per query token.
PAD, EOS, UNK, BOS, IMAGE = "<pad>", "</s>", "<unk>", "<s>", "<image>"
SPECIAL_TOKENS = (PAD, EOS, UNK, BOS, IMAGE)
PAPER_VOCAB_SIZE = 32128  # flan-t5's embedding rows
PAPER_IMAGE_SIZE = 224  # ViT-g/14's input side
TINY_IMAGE_SIZE = 32
TINY_QUERY_TOKENS = 4


@dataclass
class Blip2Bundle:
    model: Blip2ForConditionalGeneration
    processor: Blip2Processor
    model_id: str


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A whitespace WordLevel tokenizer over SPECIAL_TOKENS + words (ids in that order), prepending BOS."""
    vocab = {word: i for i, word in enumerate((*SPECIAL_TOKENS, *words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, bos_token=BOS)


def _blip2_config(vision: dict, qformer: dict, text: dict, num_query_tokens: int) -> Blip2Config:
    ids = {t: SPECIAL_TOKENS.index(t) for t in SPECIAL_TOKENS}
    # bos/decoder_start_token_id go to PreTrainedConfig through T5Config's **kwargs, which its typed
    # (@strict dataclass) signature leaves out.
    text_config = T5Config(
        pad_token_id=ids[PAD], eos_token_id=ids[EOS], bos_token_id=ids[BOS], decoder_start_token_id=ids[PAD], **text  # pyright: ignore[reportCallIssue]
    )
    return Blip2Config(
        vision_config=Blip2VisionConfig(**vision),
        qformer_config=Blip2QFormerConfig(**qformer),
        text_config=text_config,
        num_query_tokens=num_query_tokens,
        image_token_index=ids[IMAGE],
    )


def _processor(tokenizer: PreTrainedTokenizerFast, image_size: int, num_query_tokens: int) -> Blip2Processor:
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=num_query_tokens)


def _shape_tiny_generation(model: Blip2ForConditionalGeneration) -> None:
    """Make random weights give short captions of distinct nouns instead of an instant EOS or a repeated word.

    Special tokens other than EOS are never generated, at least 3 tokens come before EOS, no word repeats,
    and from the 2nd token on EOS's score grows ×2 per step, so greedy captions end after 3-6 nouns, like a
    real caption's (30 nouns would swamp the box filters). The words still come from the image: captions
    differ between images.
    """
    gen = model.language_model.generation_config  # Blip2's generate delegates to the language model's
    gen.suppress_tokens = [i for i, t in enumerate(SPECIAL_TOKENS) if t != EOS]
    gen.min_new_tokens = 3
    gen.no_repeat_ngram_size = 1
    gen.exponential_decay_length_penalty = (2, 2.0)


def build_tiny() -> tuple[Blip2ForConditionalGeneration, Blip2Processor]:
    """Tiny random BLIP-2 (docs/pitfalls.md, "Tiny random models"), identical weights on every build."""
    config = _blip2_config(
        vision={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "image_size": TINY_IMAGE_SIZE, "patch_size": 8},
        qformer={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "encoder_hidden_size": 32},
        text={"vocab_size": len(SPECIAL_TOKENS) + len(NOUNS), "d_model": 32, "d_ff": 64, "d_kv": 8,
              "num_layers": 1, "num_heads": 4},
        num_query_tokens=TINY_QUERY_TOKENS,
    )
    with seeded():
        model = Blip2ForConditionalGeneration(config)
    _shape_tiny_generation(model)
    return model, _processor(word_tokenizer(list(NOUNS)), TINY_IMAGE_SIZE, TINY_QUERY_TOKENS)


def paper_shapes_config() -> Blip2Config:
    """BLIP-2 ViT-g/14 + Q-Former + flan-t5-xl, as in Salesforce/blip2-flan-t5-xl's config."""
    return _blip2_config(
        vision={"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39, "num_attention_heads": 16,
                "image_size": PAPER_IMAGE_SIZE, "patch_size": 14},
        qformer={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "cross_attention_frequency": 2, "encoder_hidden_size": 1408},
        text={"vocab_size": PAPER_VOCAB_SIZE, "d_model": 2048, "d_ff": 5120, "d_kv": 64, "num_layers": 24,
              "num_decoder_layers": 24, "num_heads": 32, "feed_forward_proj": "gated-gelu",
              "tie_word_embeddings": False},
        num_query_tokens=32,
    )


def build_random(config: Blip2Config, device: torch.device, dtype: torch.dtype) -> Blip2ForConditionalGeneration:
    """A BLIP-2 of any size with N(0, 0.02) weights, allocated once on `device` in `dtype`.

    transformers' default init (and torch's per-layer init) takes minutes at 4B parameters on CPU: skip it,
    then fill every parameter in one fast pass (norm weights 1 and biases 0, so activations stay in range).
    """
    with no_init_weights(), torch.device(device):
        model = Blip2ForConditionalGeneration._from_config(config, dtype=dtype)
    model.tie_weights()  # normally done by the skipped init; T5 shares its token embeddings
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim > 1:
                param.normal_(0.0, 0.02)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
    return model


def build_paper_shapes(
    device: torch.device, dtype: torch.dtype
) -> tuple[Blip2ForConditionalGeneration, Blip2Processor]:
    config = paper_shapes_config()
    model = build_random(config, device, dtype)
    # T5Config always asks to tie lm_head to the token embeddings, but flan-t5-xl's checkpoint has its own
    # lm_head, which from_pretrained keeps separate: give paper-shapes one too, so its memory matches.
    lm = model.language_model
    lm.lm_head.weight = torch.nn.Parameter(torch.empty_like(lm.shared.weight).normal_(0.0, 0.02))
    for tied in (model.all_tied_weights_keys, lm.all_tied_weights_keys):
        tied.pop(next(k for k in tied if k.endswith("lm_head.weight")))
    # As from_pretrained does with the checkpoint (Blip2's _keep_in_fp32_modules): Q-Former in float32.
    model.qformer.float()
    model.query_tokens.data = model.query_tokens.data.float()
    # Random weights would stop at an arbitrary step: never stop early, so every caption costs
    # caption.max_new_tokens decoding steps (the design's ~30-token estimate, an upper bound for timing).
    model.language_model.generation_config.suppress_tokens = list(range(len(SPECIAL_TOKENS)))
    filler = [f"w{i}" for i in range(PAPER_VOCAB_SIZE - len(SPECIAL_TOKENS) - len(NOUNS))]
    tokenizer = word_tokenizer([*NOUNS, *filler])
    return model, _processor(tokenizer, PAPER_IMAGE_SIZE, config.num_query_tokens)


def load_paper(source: str, dtype: torch.dtype) -> tuple[Blip2ForConditionalGeneration, Blip2Processor]:
    try:
        processor = Blip2Processor.from_pretrained(source)
        model = Blip2ForConditionalGeneration.from_pretrained(source, dtype=dtype)
    except (OSError, HFValidationError) as exc:  # not cached / no such directory / not a valid repo id
        raise ModelNotFoundError(
            "BLIP-2",
            source,
            "download Salesforce/blip2-flan-t5-xl on a machine with hub access "
            "(huggingface-cli download Salesforce/blip2-flan-t5-xl) and copy its Hugging Face cache "
            "(HF_HOME) here, or save it to a directory and set models.blip2=/path/to/that/dir",
        ) from exc
    return model, processor


def _load_tiny(models: ModelsSection, device: torch.device, dtype: torch.dtype) -> Blip2Bundle:
    model, processor = build_tiny()
    # (transformers' @wraps(Module.to) hides `self` from type checkers)
    return Blip2Bundle(model.to(device=device, dtype=dtype), processor, "tiny-blip2")  # pyright: ignore[reportCallIssue]


def _load_paper(models: ModelsSection, device: torch.device, dtype: torch.dtype) -> Blip2Bundle:
    model, processor = load_paper(models.blip2, dtype)
    # Device only: from_pretrained already chose dtypes, keeping the Q-Former in float32 on purpose.
    return Blip2Bundle(model.to(device), processor, models.blip2)  # pyright: ignore[reportArgumentType]  (@wraps, as above)


def _load_paper_shapes(models: ModelsSection, device: torch.device, dtype: torch.dtype) -> Blip2Bundle:
    model, processor = build_paper_shapes(device, dtype)
    return Blip2Bundle(model, processor, "paper-shapes-blip2-flan-t5-xl")


# The captioner of each profile (every loader takes the `models` section; only `paper` reads it).
LOADERS: dict[Profile, Callable[[ModelsSection, torch.device, torch.dtype], Blip2Bundle]] = {
    Profile.TINY: _load_tiny,
    Profile.PAPER: _load_paper,
    Profile.PAPER_SHAPES: _load_paper_shapes,
}


def load_blip2(profile: str, models: ModelsSection, device: torch.device, dtype: torch.dtype) -> Blip2Bundle:
    bundle = pick(LOADERS, profile, "BLIP-2")(models, device, dtype)
    bundle.model.eval()
    return bundle
