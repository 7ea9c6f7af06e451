"""OpenCLIP image and text encoders for the features stage and the generate flow.

Kandinsky 2.2 and the λ-ECLIPSE prior were trained on OpenCLIP ViT-bigG-14: unnormalized image embeddings,
text hidden states after `ln_final` (what HF's CLIPTextModelWithProjection calls last_hidden_state) and the
projected EOT embedding. `token_positions` locates a caption word in the 77-token sequence, where the prior
swaps the text hidden states for the subject's image embedding, so it must be exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transform import PreprocessCfg
from open_clip.transformer import VisionTransformer

from lambda_eclipse.config import ModelsSection
from lambda_eclipse.errors import ModelNotFoundError, UserError
from lambda_eclipse.models import seeded  # imported before this module: makes torchvision importable on CPU torch
from lambda_eclipse.models.pixels import resized_pixels
from lambda_eclipse.profile import Profile, pick

CONTEXT_LENGTH = 77
# All of open_clip's CLIP models, bigG included, share the CLIP BPE tokenizer; its vocabulary ships with
# the package, so it loads offline.
TOKENIZER = "ViT-bigG-14"
PAPER_SHAPES_MODEL = "ViT-bigG-14"
# tiny: text width == embed dim, so that the text states have the shape the prior expects (d == w, as in bigG).
TINY_EMBED_DIM = 32
TINY_VISION: dict[str, Any] = {"image_size": 56, "layers": 2, "width": 64, "head_width": 16, "patch_size": 14}
TINY_TEXT: dict[str, Any] = {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": TINY_EMBED_DIM, "heads": 2,
                             "layers": 2}


class ClipBundle:
    """An OpenCLIP model on its device with its tokenizer and eval preprocessing."""

    def __init__(self, model: open_clip.CLIP, model_id: str, device: torch.device, dtype: torch.dtype):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.tokenizer = clip_tokenizer()
        visual = model.visual
        if not isinstance(visual, VisionTransformer):
            raise UserError(f"{model_id}: a {type(visual).__name__} image tower is not supported; use an OpenCLIP ViT "
                            "model (ViT-bigG-14 is one)")
        self.embed_dim = int(visual.output_dim)
        self.text_width = int(model.transformer.width)
        pre = getattr(visual, "preprocess_cfg", None) or asdict(PreprocessCfg())
        if pre["resize_mode"] != "shortest" or pre["interpolation"] != "bicubic":
            raise UserError(
                f"{model_id}: preprocessing {pre['resize_mode']}/{pre['interpolation']} is not supported; "
                "use an OpenCLIP model with shortest-side bicubic resizing (ViT-bigG-14 has it)"
            )
        # (open_clip's untyped to_2tuple leaves image_size's type open: it is (height, width))
        self.image_size = int(visual.image_size[0])  # pyright: ignore[reportIndexIssue]
        self._mean = torch.tensor(pre["mean"], device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(pre["std"], device=device).view(1, 3, 1, 1)

    @contextlib.contextmanager
    def _inference(self):
        # fp16/bf16 weights with autocast keep layer norms and softmax in float32 on the GPU.
        autocast = self.device.type == "cuda" and self.dtype != torch.float32
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
            yield

    def _preprocess(self, image: np.ndarray) -> torch.Tensor:
        """open_clip's eval transform, on the model's device: shortest side to image_size, center crop, normalize.

        Sizes and crop offsets follow torchvision's Resize(int)/CenterCrop. Antialiased bicubic is PIL's filter;
        run on the GPU in one pass it differs from PIL's by a few 8-bit levels at most (PIL rounds to uint8
        between its horizontal and vertical passes), and it spares the actor's CPU a PIL resize per image; on a CPU
        device it runs on the uint8 pixels (lambda_eclipse.models.pixels).
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
        size = self.image_size
        h, w = image.shape[:2]
        if min(h, w) != size:
            h, w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        x = resized_pixels(image, self.device, h, w, mode="bicubic")
        top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
        x = x[..., top : top + size, left : left + size]
        return (x / 255 - self._mean) / self._std

    def _image_tower(self, pixels: torch.Tensor) -> np.ndarray:
        with self._inference():
            return self.model.encode_image(pixels.to(self.dtype)).float().cpu().numpy()

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, embed_dim) float32 unnormalized image embeddings (Kandinsky 2.2 uses raw image_embeds), one forward."""
        return self._image_tower(torch.cat([self._preprocess(image) for image in images]))

    def zero_image_embedding(self) -> np.ndarray:
        """The image tower on an all-zero preprocessed tensor: the "no control" input, as diffusers'
        Kandinsky prior `get_zero_embed` and the released λ-ECLIPSE code compute it."""
        return self._image_tower(torch.zeros(1, 3, self.image_size, self.image_size, device=self.device))[0]

    def encode_text(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """hidden (N, 77, text_width) float32 after ln_final, pooled (N, embed_dim) float32 projected EOT
        embedding (unnormalized), token ids (N, 77) int64, attention mask (N, 77) int64 (1 up to and including EOT)."""
        ids = self.tokenizer(texts)
        with self._inference():
            # One pass for both outputs: the last block's output through ln_final, and the pooled projection.
            out = self.model.forward_intermediates(
                text=ids.to(self.device), text_indices=1, normalize=False, normalize_intermediates=True
            )
        features = out["text_features"]  # (typed as a tensor or a list of them: the pooled tensor here)
        assert isinstance(features, torch.Tensor)
        hidden = out["text_intermediates"][-1].float().cpu().numpy()
        pooled = features.float().cpu().numpy()
        eot = (ids == self.tokenizer.eot_token_id).int().argmax(dim=1, keepdim=True)
        mask = (torch.arange(CONTEXT_LENGTH)[None] <= eot).long()
        return hidden, pooled, ids.numpy(), mask.numpy()

    def token_positions(self, text: str, start: int, end: int) -> list[int]:
        """`token_positions` with this model's tokenizer."""
        return token_positions(self.tokenizer, text, start, end)


def clip_tokenizer() -> SimpleTokenizer:
    """open_clip's CLIP BPE tokenizer (TOKENIZER's), which every CLIP model here uses."""
    tokenizer = open_clip.get_tokenizer(TOKENIZER)
    assert isinstance(tokenizer, SimpleTokenizer)  # get_tokenizer also builds HF and SigLIP tokenizers, for others
    return tokenizer


def token_positions(tokenizer, text: str, start: int, end: int) -> list[int]:
    """Indices in the token sequence of the word at characters [start, end) of `text`, for open_clip's tokenizer.

    A function of the tokenizer alone, so that prompts are checked before any model is loaded (generate).

    Position = start-of-text token + the tokens of the text before the word; the tokenizer splits text
    into pieces at letter/non-letter boundaries before BPE, so a prefix that ends at a word boundary
    tokenizes as in the full text. The ids there are checked against the word's own: a span inside a
    larger word ("dog" in "hotdog") raises ValueError. Positions at or beyond 76 (truncated: the last
    slot holds EOT) are returned as they are; the caller decides.
    """
    if not 0 <= start < end <= len(text):
        raise ValueError(f"span [{start}, {end}) is not inside a text of {len(text)} characters")
    word = tokenizer.encode(text[start:end])
    if not word:
        raise ValueError(f"{text[start:end]!r} at [{start}, {end}) has no tokens")
    first = 1 + len(tokenizer.encode(text[:start]))
    # Untruncated, so that positions past the context are verified too.
    full = [tokenizer.sot_token_id, *tokenizer.encode(text)]
    if full[first : first + len(word)] != word:
        raise ValueError(
            f"{text[start:end]!r} at [{start}, {end}) of {text!r} is not a whole-token sequence "
            "of the CLIP tokenization"
        )
    return list(range(first, first + len(word)))


def hub_repo(name: str, pretrained: str) -> str:
    """The Hugging Face repo that holds OpenCLIP `name`'s `pretrained` weights ("" when they are not on the hub)."""
    return open_clip.get_pretrained_cfg(name, pretrained).get("hf_hub", "").strip("/")


def _as_clip(model: torch.nn.Module, name: str) -> open_clip.CLIP:
    """`create_model`'s result as the CLIP it is for the models here (text tower and all: not a CustomTextCLIP)."""
    if not isinstance(model, open_clip.CLIP):
        raise UserError(f"OpenCLIP {name} is a {type(model).__name__}, not a CLIP with its own text transformer; "
                        "use ViT-bigG-14 (models.clip_model)")
    return model


def _paper_model(models: ModelsSection) -> open_clip.CLIP:
    name, pretrained = models.clip_model, models.clip_pretrained
    try:
        # open_clip resolves the checkpoint (HF cache or file) before building the model, so this fails fast.
        return _as_clip(open_clip.create_model(name, pretrained=pretrained, require_pretrained=True), name)
    except (RuntimeError, OSError) as exc:
        raise ModelNotFoundError(
            f"OpenCLIP {name} ({pretrained})",
            str(exc),
            f"download it into the Hugging Face cache on a machine with hub access (open_clip.create_model("
            f"'{name}', pretrained='{pretrained}')) and copy the cache here, or set models.clip_pretrained to a "
            "local checkpoint file (open_clip_pytorch_model.bin or .safetensors); models.clip_model must be one of "
            "open_clip.list_models()",
        ) from exc


def _tiny(models: ModelsSection) -> tuple[open_clip.CLIP, str]:
    with seeded():
        model = open_clip.CLIP(embed_dim=TINY_EMBED_DIM, vision_cfg=CLIPVisionCfg(**TINY_VISION),
                               text_cfg=CLIPTextCfg(**TINY_TEXT))
    return model, "open_clip tiny (random weights)"


def _paper_shapes(models: ModelsSection) -> tuple[open_clip.CLIP, str]:
    # Seeded: every actor of a run must hold the same random weights.
    with seeded():
        model = _as_clip(open_clip.create_model(PAPER_SHAPES_MODEL, pretrained=None), PAPER_SHAPES_MODEL)
    return model, f"{PAPER_SHAPES_MODEL} (random weights)"


def _paper(models: ModelsSection) -> tuple[open_clip.CLIP, str]:
    return _paper_model(models), f"{models.clip_model}:{models.clip_pretrained}"


# The CLIP of each profile and its model id (every loader takes the `models` section; only `paper` reads it).
LOADERS: dict[Profile, Callable[[ModelsSection], tuple[open_clip.CLIP, str]]] = {
    Profile.TINY: _tiny,
    Profile.PAPER: _paper,
    Profile.PAPER_SHAPES: _paper_shapes,
}


def load_clip(profile: str, models: ModelsSection, device: torch.device, dtype: torch.dtype) -> ClipBundle:
    model, model_id = pick(LOADERS, profile, "the CLIP model")(models)
    return ClipBundle(model, model_id, device, dtype)
