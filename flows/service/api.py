"""OpenAI-compatible image routes: generations, variations, edits, models, image files."""

from __future__ import annotations

import base64
import time
import unicodedata
from typing import Any, Literal

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from flows.service import images as imgs
from flows.service.auth import require_key
from flows.service.engine import SampleResult, SampleWork, variation_keep_masks
from flows.service.errors import APIError
from flows.service.limits import BodyTooLarge
from flows.service.state import ServiceState

router = APIRouter()
authed = [Depends(require_key)]

Size = Literal["256x256", "512x512", "1024x1024"]
ResponseFormat = Literal["url", "b64_json"]
# DALL·E 3's own styles: accepted so existing clients work, with no effect here.
OPENAI_STYLES = {"vivid", "natural"}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Sampling(_Request):
    """Sampling controls shared by every image endpoint (all optional; defaults from the settings)."""

    seed: int | None = Field(None, ge=0, lt=2**31, description="Same seed and parameters → same images.")
    condition_scale: float | None = Field(None, ge=0.0, le=100.0)
    top_k: int | None = Field(None, ge=0, le=1_000_000, description="0 = no limit.")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    temperature: float | None = Field(None, gt=0.0, le=10.0)


class SamplingExtras(_Sampling):
    """Covercraft's additions to OpenAI's schema for prompted endpoints."""

    negative_prompt: str | None = Field(None, max_length=1000, description="Steer away from this (the unconditional branch of super conditioning).")
    style: str | None = Field(None, max_length=64, description="A Covercraft style preset (see `covercraft styles`); 'vivid'/'natural' are accepted and ignored.")


class _ImageOutput(_Request):
    """OpenAI's fields that say how many images come back and in what form."""

    model: str | None = None
    n: int = Field(1, ge=1, le=10)
    size: Size = "1024x1024"
    response_format: ResponseFormat = "url"
    user: str | None = Field(None, max_length=256)


class GenerationRequest(SamplingExtras, _ImageOutput):
    # A JSON body: numbers must be numbers ("n": true or "n": "3" is refused, as OpenAI does).
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(..., min_length=1, max_length=1000)
    # Accepted for compatibility with clients that always send them; only PNG is produced.
    quality: str | None = None
    output_format: Literal["png"] | None = None


class VariationForm(_Sampling, _ImageOutput):
    keep: float | None = Field(None, ge=0.0, le=1.0, description="Share of the image's tokens kept (default service.variation_keep).")


class EditForm(GenerationRequest):
    """Multipart fields of /v1/images/edits besides the image and the mask: a generation's fields.

    Form fields arrive as text, so "3" is read as the number 3 here."""

    model_config = ConfigDict(extra="forbid", strict=False)


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


def state_of(request: Request) -> ServiceState:
    return request.app.state.covercraft


# -- prompts and sampling settings ---------------------------------------------------------------
def visible_text(text: str) -> str:
    """``text`` without control and format characters (NUL, escape codes, zero-width marks) and
    with whitespace runs collapsed: what a prompt says to a reader."""
    kept = "".join(" " if c.isspace() else c for c in text
                   if c.isspace() or unicodedata.category(c)[0] != "C")
    return " ".join(kept.split())


def prepare_prompt(state: ServiceState, prompt: str, style: str | None, negative: str | None) -> tuple[str, str | None]:
    """(prompt for the model with the style's words, negative prompt); moderation applied."""
    from nlp.errors import ModerationError
    from nlp.prompt import STYLE_PRESETS, moderate, normalise_style

    prompt = visible_text(prompt)
    if not prompt:
        raise APIError(400, "'prompt' has no visible text; describe the image you want.", param="prompt",
                       code="invalid_value")
    negative = visible_text(negative or "")
    negatives = [negative] if negative else []
    if style and style.lower() not in OPENAI_STYLES:
        try:
            preset = STYLE_PRESETS[normalise_style(style)]
        except ValueError as err:
            raise APIError(400, f"Invalid value for 'style': {err}.", param="style", code="invalid_value") from None
        prompt = f"{prompt}, {preset.suffix}" if preset.suffix else prompt
        negatives.extend(preset.negative)
    try:
        moderate(prompt, list(state.settings.prompt.blocklist))
    except ModerationError as err:
        raise APIError(400, str(err), param="prompt", code="content_policy_violation") from None
    return prompt, (", ".join(negatives) or None)


def sampling_for(state: ServiceState, body: BaseModel | None = None):
    """The request's sampling settings: its extras over the configured defaults (``body=None``:
    the defaults alone, what a request without extras gets)."""
    from dalle_core.types import SamplingSettings

    cfg = state.settings.sampling

    def pick(name: str):
        value = getattr(body, name, None)
        return value if value is not None else getattr(cfg, name)

    top_k, top_p = pick("top_k"), pick("top_p")
    return SamplingSettings(
        condition_scale=pick("condition_scale"),
        top_k=top_k or None,
        top_p=None if top_p is None or top_p >= 1.0 else top_p,
        temperature=pick("temperature"),
    )


# -- results --------------------------------------------------------------------------------------
def render(
    state: ServiceState,
    base_url: str,
    result: SampleResult,
    size: int,
    response_format: str,
    revised_prompt: str | None,
    original: np.ndarray | None = None,
    cells: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Resize, encode and store (url) or inline (b64_json) each image. Runs off the event loop."""
    out = []
    for image in result.images:
        img = imgs.resize(image, size)
        if original is not None and cells is not None:
            img = imgs.composite_edit(img, original, cells)
        png = imgs.png_bytes(img)
        item: dict[str, Any] = {"revised_prompt": revised_prompt}
        if response_format == "b64_json":
            item["b64_json"] = base64.b64encode(png).decode("ascii")
        else:
            image_id, _ = state.store.put(png)
            item["url"] = f"{base_url}/v1/images/files/{image_id}.png"
        out.append(item)
    return out


def _size(size: str) -> int:
    return imgs.SIZES[size]


# -- routes ---------------------------------------------------------------------------------------
@router.post("/v1/images/generations", dependencies=authed, response_model=ImagesResponse,
             response_model_exclude_none=True, tags=["images"])
async def create_image(body: GenerationRequest, request: Request) -> dict:
    """OpenAI's ``images.generate``: n images for a prompt."""
    state = state_of(request)
    state.check_model(body.model)
    prompt, negative = prepare_prompt(state, body.prompt, body.style, body.negative_prompt)
    work = SampleWork(prompts=(prompt,) * body.n, seed=body.seed, settings=sampling_for(state, body),
                      negative_prompt=negative)
    result = await state.run(work, rows=work.rows)
    data = await anyio.to_thread.run_sync(
        render, state, state.base_url(request), result, _size(body.size), body.response_format, prompt
    )
    return {"created": int(time.time()), "data": data}


_UPLOAD_FIELDS = {"image", "image[]", "mask"}


async def _read_form(request: Request, model: type[_Request]) -> tuple[_Request, dict[str, bytes]]:
    """Parse a multipart body: (validated fields, raw uploaded files by field name)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise APIError(415, f"Send this request as multipart/form-data (got {ctype or 'no content type'!r}).",
                       code="unsupported_media_type")
    state = state_of(request)
    limit = state.service.uploads.max_bytes
    try:
        form = await request.form(max_files=4, max_fields=64, max_part_size=64 * 1024)
    except BodyTooLarge:
        raise
    except Exception as err:  # malformed multipart bodies and Starlette's own limits
        raise APIError(400, f"Could not read the multipart body: {err}.", code="invalid_multipart") from None
    fields: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in _UPLOAD_FIELDS:
                    raise APIError(400, f"Unexpected file field '{name}'.", param=name, code="invalid_value")
                if name in files or (name.startswith("image") and "image" in files):
                    raise APIError(400, "Send exactly one image.", param="image", code="invalid_value")
                data = await value.read(limit + 1)
                files["image" if name.startswith("image") else name] = data
            else:
                fields[name] = value
    finally:
        await form.close()
    try:
        parsed = model.model_validate(fields)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            raise APIError(400, f"Unrecognized request argument supplied: {param}", param=param,
                           code="unknown_parameter") from None
        if first["type"] == "missing":
            raise APIError(400, f"Missing required parameter: '{param}'.", param=param,
                           code="missing_required_parameter") from None
        raise APIError(400, f"Invalid value for '{param}': {first['input']!r} — {first['msg']}.", param=param,
                       code="invalid_value") from None
    if "image" not in files:
        raise APIError(400, "Missing required parameter: 'image' (a PNG or JPEG file).", param="image",
                       code="missing_required_parameter")
    return parsed, files


def _multipart_doc(fields: dict[str, Any], required: list[str]) -> dict:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": required, "properties": fields}}}}}


_BIN = {"type": "string", "format": "binary"}
_VARIATION_DOC = _multipart_doc(
    {"image": _BIN, **VariationForm.model_json_schema()["properties"]}, ["image"])
_EDIT_DOC = _multipart_doc(
    {"image": _BIN, "mask": _BIN, **EditForm.model_json_schema()["properties"]}, ["image", "prompt"])


@router.post("/v1/images/variations", dependencies=authed, response_model=ImagesResponse,
             response_model_exclude_none=True, tags=["images"], openapi_extra=_VARIATION_DOC)
async def create_variation(request: Request) -> dict:
    """OpenAI's ``images.create_variation``: keep a random share of the image's tokens, sample the rest."""
    state = state_of(request)
    body, files = await _read_form(request, VariationForm)
    state.check_model(body.model)
    engine = state.engine
    limits = state.service.uploads
    img = imgs.read_image(files["image"], param="image", max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
    source = imgs.to_rgb_square(img, engine.resolution)
    keep_share = body.keep if body.keep is not None else state.service.variation_keep
    keep = variation_keep_masks(body.n, engine.grid, keep_share, body.seed)
    work = SampleWork(prompts=("",) * body.n, seed=body.seed, settings=sampling_for(state, body),
                      source=source, keep=keep)
    result = await state.run(work, rows=work.rows)
    data = await anyio.to_thread.run_sync(
        render, state, state.base_url(request), result, _size(body.size), body.response_format, None
    )
    return {"created": int(time.time()), "data": data}


@router.post("/v1/images/edits", dependencies=authed, response_model=ImagesResponse,
             response_model_exclude_none=True, tags=["images"], openapi_extra=_EDIT_DOC)
async def create_edit(request: Request) -> dict:
    """OpenAI's ``images.edit``: resample the tokens under the mask's transparent pixels."""
    state = state_of(request)
    body, files = await _read_form(request, EditForm)
    state.check_model(body.model)
    engine = state.engine
    limits = state.service.uploads
    img = imgs.read_image(files["image"], param="image", max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
    if "mask" in files:
        mask = imgs.read_image(files["mask"], param="mask", max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
        if mask.size != img.size:
            raise APIError(
                400,
                f"The mask is {mask.size[0]}x{mask.size[1]} but the image is {img.size[0]}x{img.size[1]}; "
                "they must be the same size.",
                param="mask",
                code="invalid_mask_size",
            )
        if not imgs.has_alpha(mask):
            raise APIError(400, "The mask has no alpha channel; send a PNG whose transparent pixels mark "
                           "the area to edit.", param="mask", code="invalid_mask")
        where, holder = imgs.transparent_pixels(mask), "mask"
    elif imgs.has_alpha(img):
        where, holder = imgs.transparent_pixels(img), "image"
    else:
        raise APIError(400, "No mask was given and the image has no transparency: send 'mask', a PNG "
                       "whose transparent pixels mark the area to edit.", param="mask",
                       code="missing_required_parameter")
    cells = imgs.edit_cells(where, engine.grid)
    if not cells.any():
        raise APIError(400, f"The {holder} has no fully transparent pixels, so there is nothing to edit.",
                       param=holder, code="invalid_mask")
    prompt, negative = prepare_prompt(state, body.prompt, body.style, body.negative_prompt)
    source = imgs.to_rgb_square(img, engine.resolution)
    keep = np.repeat(~cells[None], body.n, axis=0)
    work = SampleWork(prompts=(prompt,) * body.n, seed=body.seed, settings=sampling_for(state, body),
                      negative_prompt=negative, source=source, keep=keep)
    result = await state.run(work, rows=work.rows)
    original = imgs.to_rgb_square(img, _size(body.size))
    data = await anyio.to_thread.run_sync(
        render, state, state.base_url(request), result, _size(body.size), body.response_format, prompt,
        original, cells,
    )
    return {"created": int(time.time()), "data": data}


@router.get("/v1/images/files/{image_id}.png", tags=["images"], response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def image_file(image_id: str, request: Request) -> Response:
    """An image from a ``url`` answer; no key needed (the id is the secret), gone after the TTL."""
    item = state_of(request).store.get(image_id)
    if item is None:
        raise APIError(404, "This image URL is unknown or has expired; generate the image again.",
                       code="image_expired")
    max_age = max(0, int(item.expires_at - time.time()))
    return Response(item.data, media_type=item.media_type, headers={"Cache-Control": f"private, max-age={max_age}"})


def _model_card(state: ServiceState, model_id: str) -> dict:
    info = state.engine.generator.info.to_dict() if state.engine else None
    return {"id": model_id, "object": "model", "created": int(state.started), "owned_by": "covercraft",
            "covercraft": info}


@router.get("/v1/models", dependencies=authed, tags=["models"])
async def list_models(request: Request) -> dict:
    state = state_of(request)
    return {"object": "list", "data": [_model_card(state, state.service.model_id)]}


@router.get("/v1/models/{model_id}", dependencies=authed, tags=["models"])
async def get_model(model_id: str, request: Request) -> dict:
    state = state_of(request)
    if model_id not in state.model_ids():
        raise APIError(404, f"The model {model_id!r} does not exist; see GET /v1/models.", param="model",
                       code="model_not_found")
    return _model_card(state, model_id)

