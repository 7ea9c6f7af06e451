"""Grounding DINO Swin-T OGC through transformers' `GroundingDinoForObjectDetection` (it batches images and
loads the official weights converted; groundingdino-py does neither with transformers 5, docs/pitfalls.md).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    SwinConfig,
)

from lambda_eclipse.config import ModelsSection
from lambda_eclipse.errors import ModelNotFoundError
from lambda_eclipse.models import seeded
from lambda_eclipse.models.tiny_vocab import NOUNS
from lambda_eclipse.profile import Profile, pick

PAPER_ID = "IDEA-Research/grounding-dino-tiny"
BERT_BASE_VOCAB_SIZE = 30522
# BERT's special tokens first ([PAD] = 0 is the text config's pad id), then "." which separates the prompt's
# phrases ("dog . car ."), then the words the tiny captioner emits.
BASE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *NOUNS]
# Shaping of the tiny model's random weights, so that ordinary photos yield boxes that pass the real
# thresholds (measured on synthetic photos: ~6 boxes an image, ~97 % pass the per-box filters):
# - at most 6 boxes, inside the box filters' image-level limits (1–8 boxes, ≤ 6 of one noun);
TINY_NUM_QUERIES = 6
# - added to the box head's width/height outputs (logit space) at each of the 2 decoder layers: boxes of
#   ~15–45 % of the image area instead of the proposals' 5–40 % of its side;
TINY_BOX_SIZE_BIAS = 1.5
# - weight of the decoder's output LayerNorm, which feeds the class head (a dot product with the text
#   features): at 1 the 32-d dot products saturate the sigmoid (scores ≈ 1); at 0.2 scores spread over
#   ~0.4–0.9, as a trained model's do, so the box, text and logit thresholds have something to cut.
TINY_LOGIT_SCALE = 0.2


@dataclass
class DetectorBundle:
    model: GroundingDinoForObjectDetection
    processor: GroundingDinoProcessor
    model_id: str


def _tokenizer(words: list[str]) -> BertTokenizer:
    # BertTokenizer takes its vocabulary as a file path (BertTokenizerFast(vocab_file=…) ignores it in
    # transformers 5); the vocabulary is read in the constructor, so the file can go right after.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("\n".join(words) + "\n")
        return BertTokenizer(str(path))


def swin_t_ogc_config() -> GroundingDinoConfig:
    """The paper's Swin-T OGC model; the same values as transformers' conversion script for grounding-dino-tiny
    (and GroundingDinoConfig's defaults: d_model 256, 6 + 6 layers, 900 queries, 4 levels, BERT-base text)."""
    # out_features (and GroundingDinoConfig's backbone keywords below) reach the configs' __post_init__ through
    # **kwargs, which their typed (@strict dataclass) signatures leave out.
    swin_t = SwinConfig(
        embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, image_size=224,
        out_features=["stage2", "stage3", "stage4"],  # pyright: ignore[reportCallIssue]
    )
    return GroundingDinoConfig(backbone_config=swin_t, text_config=BertConfig(vocab_size=BERT_BASE_VOCAB_SIZE))


def _tiny(models: ModelsSection) -> DetectorBundle:
    tokenizer = _tokenizer(BASE_VOCAB)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=7,
            out_features=["stage2", "stage3", "stage4"],  # pyright: ignore[reportCallIssue]  (as in swin_t_ogc_config)
        ),
        text_config=BertConfig(
            vocab_size=len(BASE_VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, pad_token_id=0,
        ),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_feature_levels=4,
        num_queries=TINY_NUM_QUERIES,
        use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,  # pyright: ignore[reportCallIssue]
    )
    with seeded():
        model = GroundingDinoForObjectDetection(config)
        # DINO zero-initialises the box head's last layer, so random weights would return the two-stage
        # proposals unchanged: squares of 5–40 % of the image side, mostly below the area filter (> 8 % of the
        # image). PyTorch's default init gives each query a box of its own shape, the bias object size. The
        # head is tied across the decoder layers, so one in-place change shapes them all.
        # (torch types a ModuleList's items and a module's submodules as Tensor | Module: hence the ignores)
        head = model.bbox_embed[0]
        with torch.no_grad():
            for layer in head.layers:  # pyright: ignore[reportGeneralTypeIssues]
                layer.reset_parameters()
            head.layers[-1].bias[2:] += TINY_BOX_SIZE_BIAS  # pyright: ignore[reportIndexIssue, reportAttributeAccessIssue]
            model.model.decoder.layer_norm.weight.fill_(TINY_LOGIT_SCALE)
    # Small inputs keep the tiny model fast. Not smaller: at ≤ 64 px a lone image's coarsest feature level
    # is 1 × 1, which its GroupNorm rejects. Boxes come back relative to each image, whatever its size.
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 96, "longest_edge": 160})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return DetectorBundle(model, processor, "tiny-random-grounding-dino")


def _paper(models: ModelsSection) -> DetectorBundle:
    name = models.grounding_dino
    # HF_HUB_OFFLINE=1 (set by the CLI and the tests) keeps this to the local cache or a local directory.
    try:
        model = GroundingDinoForObjectDetection.from_pretrained(name)
        processor = GroundingDinoProcessor.from_pretrained(name)
    except OSError:
        raise ModelNotFoundError(
            f"Grounding DINO {name!r}",
            "not in the Hugging Face cache and not a local model directory",
            f"on a machine with hub access run `hf download {PAPER_ID}` and copy its Hugging Face "
            f"cache (~/.cache/huggingface/hub) here, or save the model and processor to a directory and set "
            f"models.grounding_dino=/local/dir",
        ) from None
    return DetectorBundle(model, processor, name)


def _paper_shapes(models: ModelsSection) -> DetectorBundle:
    # Filler entries give the tokenizer BERT-base's vocabulary size; throughput does not depend on the words.
    fillers = [f"[unused{i}]" for i in range(BERT_BASE_VOCAB_SIZE - len(BASE_VOCAB))]
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(),  # 800 px shortest / 1333 px longest edge, as the paper's
        tokenizer=_tokenizer(BASE_VOCAB + fillers),
    )
    with seeded():
        model = GroundingDinoForObjectDetection(swin_t_ogc_config())
    return DetectorBundle(model, processor, f"{PAPER_ID} (architecture, random weights)")


# The detector of each profile (every loader takes the `models` section; only `paper` reads it).
LOADERS: dict[Profile, Callable[[ModelsSection], DetectorBundle]] = {
    Profile.TINY: _tiny,
    Profile.PAPER: _paper,
    Profile.PAPER_SHAPES: _paper_shapes,
}


def load_grounding_dino(profile: str, models: ModelsSection, device: torch.device,
                        dtype: torch.dtype) -> DetectorBundle:
    bundle = pick(LOADERS, profile, "Grounding DINO")(models)
    bundle.model.to(device=device, dtype=dtype).eval()  # pyright: ignore[reportCallIssue]  (transformers' @wraps(Module.to) hides self)
    return bundle
