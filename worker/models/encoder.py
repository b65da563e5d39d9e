"""A sentence-transformers model behind the narrow interface the batcher needs: token ids in, vectors out.

Texts are tokenized once, when a job arrives (while the model is busy with the previous batch); a batch is then
just padded token ids, whether the client sent texts or token ids. The vectors are the model's own output up to a
trailing ``Normalize`` module, which is left to the service (``normalizes`` says whether the model has one), so a
request may ask for raw or unit vectors from any model and ``dimensions`` cuts before normalizing.

``encode`` is two halves the batcher may call apart, so the host prepares batch N+1 while the GPU runs batch N:
``collate`` (padding, and on a GPU the pinned, ``non_blocking`` copy to the device: ``worker.models.transfers``) and
``run`` (the forward pass and the copy back). On the CPU they are the same code as one ``encode``.

**Images.** A model whose first module takes images as well as text (a CLIP-style ``Transformer`` whose
``modality_config`` has ``"image"``: text and images in one vector space) says so in ``modalities``. An image is made
model input when its request arrives, by the model's own ``preprocess`` (what ``SentenceTransformer.encode`` does
for an image: the processor's resize, crop and normalization), one processor call for a request's images, each
image's arrays kept apart on the host
(``ImageInput``); a batch of images is the group ``IMAGE_GROUP``, whose ``collate`` stacks their pixel values and
whose ``run`` runs the same modules with ``modality: "image"``, so the ``Transformer`` calls the vision path
(``get_image_features`` for CLIP). An image's cost in the batch's token budget (its ``len``) is the vision tower's
sequence length, read from the model's config: ``(image_size // patch_size) ** 2 + 1`` (the patches and the class
token of a CLIP / ViT tower; a SigLIP tower, without a class token, is counted one token high). A config that names
no patch size makes an image cost as much as the longest text (``max_seq_length``). The image path is probed at load
on two images of different sizes: a processor whose output is not one fixed-shape array per image (variable
resolutions, image grids) leaves ``"image"`` out of ``modalities``, with a warning, and the model is served for text.
Images run on torch only: an exported graph (``worker.models.runtimes``) computes the text path.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Transformer

from shared.errors import ErrorKind, ServiceError
from worker.models.precision import TORCH_DTYPES, Precision
from worker.models.runtimes import Forward
from worker.models.transfers import copies_for

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

_PROBE_TEXT = "probe"
#: the batch group of images; text groups are prompt lengths (0 and up)
IMAGE_GROUP = -1
#: modalities beyond text that a model may list (alone or in a tuple such as ``("image", "text")``); any of them keeps
#: it off the export path, whose graph computes text
MEDIA_MODALITIES = frozenset({"image", "audio", "video"})
#: the sizes of the two images the image path is probed with at load (different, so size-dependent output shows)
_PROBE_IMAGE_SIZES = ((64, 48), (20, 36))


class ImageInput:
    """One image as model input: its per-image features from the model's own ``preprocess`` (``pixel_values`` for
    CLIP), host arrays without the batch axis. Its length is its cost in a batch's token budget."""

    __slots__ = ("cost", "features")

    def __init__(self, features: dict[str, np.ndarray], cost: int) -> None:
        self.features = features
        self.cost = cost

    def __len__(self) -> int:
        return self.cost


class SentenceTransformerEncoder:
    """``forward``: the transformer's forward pass on another runtime (``worker.models.runtimes``), named by
    ``backend``; the modules after the transformer run in torch either way. ``precision``: what the model computes
    in; on CPU, torch runs a reduced precision under autocast (the weights stay float32), on a GPU the caller has
    cast the weights already."""

    kind: Literal["embedding"] = "embedding"

    def __init__(
        self,
        model: SentenceTransformer,
        forward: Forward | None = None,
        backend: str = "torch",
        *,
        precision: Precision = "float32",
    ) -> None:
        tokenizer, max_seq_length = tokenizer_of(model)
        self._model = model
        self._tokenizer = tokenizer
        #: the model's own tokenizer, public for ``worker.tokenizing`` (TEI's ``/tokenize`` and ``/decode``)
        self.tokenizer = tokenizer
        modules = list(model)
        self.normalizes = bool(modules) and isinstance(modules[-1], Normalize)
        #: what runs on a batch: every module but a trailing Normalize
        self._modules = modules[:-1] if self.normalizes else modules
        self._forward = forward
        self.backend = backend
        self.precision: Precision = precision
        self._autocast = forward is None and str(model.device) == "cpu" and precision != "float32"
        if forward is not None:
            if not isinstance(modules[0], Transformer):
                raise ValueError("only a model that starts with a Transformer module can run on another runtime")
            self._modules = self._modules[1:]
        #: False when a pooling module leaves the prompt's tokens out (``include_prompt=False``)
        self._pools_prompt = all(getattr(module, "include_prompt", True) for module in modules)
        self.device = str(model.device)
        self.max_seq_length = max_seq_length
        self.vocab_size: int = len(tokenizer)
        self.dimension: int = int(model.get_embedding_dimension() or 0)
        self.prompts: dict[str, str] = {name: prompt or "" for name, prompt in model.prompts.items()}
        self.default_prompt_name: str | None = model.default_prompt_name
        self._pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._prefix, self._suffix = _special_tokens(tokenizer)
        self.special_token_count = len(self._prefix) + len(self._suffix)
        self._copies = copies_for(model.device)
        listed = tuple(modality if isinstance(modality, str) else "+".join(modality) for modality in model.modalities)
        #: whether an exported graph (``worker.models.runtimes``: the transformer's last hidden state, from token ids)
        #: computes all the model does: a model that lists no modality but text (and "message", chat-formatted text)
        self.exportable = not any(set(modality.split("+")) & MEDIA_MODALITIES for modality in listed)
        #: what the model takes, as ``SentenceTransformer.modalities`` lists it (a tuple modality joined with "+"),
        #: less "image" when its images are not served (module docstring)
        self.modalities: tuple[str, ...] = listed
        #: a batch's cost of one image (``ImageInput``'s length); 0 for a model that takes no images
        self.image_tokens = 0
        self._image_shapes: dict[str, tuple[int, ...]] = {}
        if "image" in self.modalities:
            if forward is not None:
                raise ValueError("a model that takes images runs on torch only")
            self._image_shapes = self._probe_images()
            if self._image_shapes:
                self.image_tokens = self._vision_tokens()
            else:
                self.modalities = tuple(modality for modality in self.modalities if modality != "image")

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "modalities": list(self.modalities),
            "dimensions": self.dimension,
            "max_tokens": self.max_seq_length,
            "prompt_names": list(self.prompts),
            "default_prompt_name": self.default_prompt_name,
            "normalized": self.normalizes,
            "backend": self.backend,
            "dtype": self.precision,
            "attention": getattr(self, "attention", None),  # set by runtime_choice.place
        }

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens and without truncation."""
        ids: list[list[int]] = self._tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)[
            "input_ids"
        ]
        return ids

    def prompt_length(self, prompt: str) -> int:
        """How many leading tokens the pooling must leave out for ``prompt``: 0 when the pooling reads them.

        Measured as sentence-transformers does: the prompt tokenized with special tokens, less a trailing one.
        """
        if not prompt or self._pools_prompt:
            return 0
        ids: list[int] = self._tokenizer(prompt)["input_ids"]
        special = set(getattr(self._tokenizer, "all_special_ids", ()))
        return len(ids) - 1 if ids and ids[-1] in special else len(ids)

    def prepare(self, ids: list[int], *, truncate: bool, param: str) -> list[int]:
        """Model input for one sequence: special tokens added, cut to the model's maximum length."""
        room = self.max_seq_length - self.special_token_count
        if len(ids) > room:
            if not truncate:
                raise ServiceError(
                    ErrorKind.INPUT_TOO_LONG,
                    f"an input has {len(ids) + self.special_token_count} tokens; this model reads at "
                    f"most {self.max_seq_length} (send truncate=true to cut it)",
                    param,
                )
            ids = ids[:room]
        return self._prefix + ids + self._suffix

    def check_token_ids(self, sequences: Sequence[Sequence[int]]) -> None:
        for sequence in sequences:
            for token in sequence:
                if not 0 <= token < self.vocab_size:
                    raise ServiceError(
                        ErrorKind.INVALID_REQUEST,
                        f"token id {token} is outside this model's vocabulary (0..{self.vocab_size - 1})",
                        "input",
                    )

    def image_inputs(self, images: Sequence[Image.Image], *, model: str | None = None) -> list[ImageInput]:
        """Model input for each image, made by the model's own ``preprocess`` as ``encode`` makes it (one call for
        all of them, each image's arrays kept apart). ``model``: the model's name, for the message. A model that
        takes no images, or an image its processor cannot read (a truncated file, a mode it does not convert), is a
        ServiceError naming the input."""
        if "image" not in self.modalities:
            named = f"model {model!r}" if model else "this model"
            raise ServiceError(
                ErrorKind.INVALID_REQUEST, f"{named} takes text only; send texts or token ids, not images", "input"
            )
        if not images:
            return []
        try:  # one processor call for the request's images: its overhead per call is most of an image's cost
            batched = self._image_features(list(images))
        except (OSError, ValueError, TypeError):
            batched = None  # an image it cannot read: found by taking them one at a time
        if batched is not None:
            return [ImageInput(features, self.image_tokens) for features in batched]
        inputs = []
        for index, image in enumerate(images):
            try:
                (features,) = self._image_features([image])
            except (OSError, ValueError, TypeError) as exc:
                log.info("image %d could not be processed: %r", index, exc)
                raise ServiceError(
                    ErrorKind.INVALID_REQUEST, f"image {index} could not be read as this model's input", "input"
                ) from exc
            inputs.append(ImageInput(features, self.image_tokens))
        return inputs

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts cut to the model's length, encoded as one padded batch, raw (no prompt, no Normalize): what
        the runtime choice and the benchmarks time without the service around the encoder."""
        return self.encode([self.prepare(ids, truncate=True, param="input") for ids in self.tokenize(texts)])

    def encode(self, batch: Sequence[list[int]] | Sequence[ImageInput], prompt_length: int = 0) -> np.ndarray:
        """float32 vectors, one row per sequence of ``batch``, before any trailing Normalize. ``prompt_length``:
        leading tokens of every sequence that the pooling leaves out (see ``prompt_length``); ``IMAGE_GROUP``: the
        batch is images (``image_inputs``)."""
        return self.run(self.collate(batch, prompt_length))

    def collate(self, batch: Sequence[list[int]] | Sequence[ImageInput], prompt_length: int = 0) -> CollatedBatch:
        """``encode``'s first half, the host's part: the batch padded (texts) or stacked (images, ``IMAGE_GROUP``)
        and, on a GPU, on its way to the device."""
        if prompt_length == IMAGE_GROUP:
            return self._collate_images(cast("Sequence[ImageInput]", batch))
        batch = cast("Sequence[list[int]]", batch)
        width = max(len(ids) for ids in batch)
        input_ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        arrays = {"input_ids": input_ids, "attention_mask": attention_mask}
        tensors, ready = self._copies.to_device(arrays)
        return CollatedBatch(arrays, tensors, ready, prompt_length)

    def _collate_images(self, batch: Sequence[ImageInput]) -> CollatedBatch:
        arrays = {key: np.stack([image.features[key] for image in batch]) for key in self._image_shapes}
        tensors, ready = self._copies.to_device(arrays)
        return CollatedBatch(arrays, tensors, ready, modality="image")

    def run(self, collated: CollatedBatch) -> np.ndarray:
        """``encode``'s second half: the forward pass of a collated batch, and its vectors back on the host."""
        self._copies.wait(collated.tensors, collated.ready)
        features: dict[str, Any] = dict(collated.tensors)
        if collated.modality != "text":
            dtype = self._model.dtype  # a GPU's reduced precision: pixels in the weights' dtype
            for key, tensor in collated.tensors.items():
                if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                    features[key] = tensor.to(dtype)
            features["modality"] = collated.modality
        elif self._forward is not None:
            ids, mask = collated.arrays["input_ids"], collated.arrays["attention_mask"]
            features["token_embeddings"] = torch.from_numpy(self._forward(ids, mask))
        if collated.prompt_length:
            features["prompt_length"] = collated.prompt_length
        try:
            with (
                torch.inference_mode(),
                torch.autocast("cpu", dtype=TORCH_DTYPES[self.precision], enabled=self._autocast),
            ):
                for module in self._modules:
                    features = module(features)
                embeddings = features["sentence_embedding"].float()
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # so the smaller retries the batcher makes can fit
            raise
        return self._copies.to_host(embeddings)

    def _image_features(self, images: list[Image.Image]) -> list[dict[str, np.ndarray]]:
        """Images through the model's ``preprocess``: each one's arrays, without the batch axis. ValueError for output
        that is not one array per image of the probed shapes (``_probe_images``)."""
        features: dict[str, Any] = self._model.preprocess(images)
        arrays: dict[str, np.ndarray] = {}
        for key, value in features.items():
            if key == "modality":
                if value != "image":
                    raise ValueError(f"the image was preprocessed as {value!r}")
            elif isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == len(images):
                arrays[key] = value.numpy()
            else:
                raise ValueError(f"the preprocessed image has a feature {key!r} that is not one array per image")
        shapes = {key: array.shape[1:] for key, array in arrays.items()}
        if self._image_shapes and shapes != self._image_shapes:
            raise ValueError(f"the preprocessed image has features {list(arrays)} of other shapes than expected")
        return [{key: array[row] for key, array in arrays.items()} for row in range(len(images))]

    def _probe_images(self) -> dict[str, tuple[int, ...]]:
        """The per-image feature shapes of the model's image input, the same for two images of different sizes;
        empty (with a warning) when they are not."""
        from PIL import Image

        try:
            probes = [self._image_features([Image.new("RGB", size, (120, 60, 30))])[0] for size in _PROBE_IMAGE_SIZES]
        except Exception as exc:
            log.warning("this model's image input is not supported (%r); it is served for text only", exc)
            return {}
        shapes = [{key: array.shape for key, array in probe.items()} for probe in probes]
        if not shapes[0] or shapes[0] != shapes[1]:
            log.warning("this model's image input has no fixed shape (%s); it is served for text only", shapes)
            return {}
        return shapes[0]

    def _vision_tokens(self) -> int:
        """An image's cost in the token budget: the vision tower's sequence length, ``(image_size // patch_size) **
        2 + 1``, from the model's config (the probed pixels' height and width where the config has no image size);
        the longest text's when the config has no patch size."""
        config = getattr(getattr(self._model[0], "auto_model", None), "config", None)
        vision = getattr(config, "vision_config", None) or config
        patch = _pair(getattr(vision, "patch_size", None))
        size = _pair(getattr(vision, "image_size", None))
        pixels = self._image_shapes.get("pixel_values", ())
        if size is None and len(pixels) >= 2:
            size = (pixels[-2], pixels[-1])
        if patch is None or size is None or min(patch) < 1:
            log.info("no patch size in this model's config: an image costs %d tokens", self.max_seq_length)
            return self.max_seq_length
        return (size[0] // patch[0]) * (size[1] // patch[1]) + 1


@dataclasses.dataclass(frozen=True, slots=True)
class CollatedBatch:
    """A batch ready for ``run``: padded arrays (or stacked images), their tensors on the model's device, what the
    copy's end is known by (``transfers.Copies.wait``), the prompt length its pooling leaves out, and the modality
    of its inputs."""

    arrays: dict[str, np.ndarray]
    tensors: dict[str, torch.Tensor]
    ready: Any
    prompt_length: int = 0
    modality: str = "text"


def _pair(value: object) -> tuple[int, int] | None:
    """A config's size (an int, or a height and a width) as a pair."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(side, int) for side in value):
        return int(value[0]), int(value[1])
    return None


def tokenizer_of(model: SentenceTransformer | CrossEncoder) -> tuple[Any, int]:
    """The model's tokenizer and maximum length; a ServiceError for a model without them."""
    if model.tokenizer is None or model.max_seq_length is None:
        raise ServiceError(ErrorKind.MODEL_NOT_FOUND, "this model has no tokenizer; only transformer models are served")
    return model.tokenizer, model.max_seq_length


def _special_tokens(tokenizer: object) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single sequence ([CLS] ... [SEP], <s> ... </s>, ...)."""
    bare: list[int] = tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    full: list[int] = tokenizer(_PROBE_TEXT)["input_ids"]  # type: ignore[operator]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    raise ServiceError(ErrorKind.MODEL_NOT_FOUND, "this model's tokenizer is not supported")


def pick_device(preference: str) -> str:
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference
