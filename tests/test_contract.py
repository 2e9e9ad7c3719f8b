"""The contract every registered method keeps, on its tiny preset (diffusers' tester-mixin idea, timm's
parametrisation over the registry): shapes, range, determinism under a fixed generator, batch independence."""

from __future__ import annotations

import pytest
import torch

import methods
from methods import TranslationInput

SIZE = 64


def _batch(card, n: int) -> TranslationInput:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, SIZE, SIZE, generator=g)
    return TranslationInput(
        images=x, condition=(x > 0.5).float(), reference=torch.rand(x.shape, generator=g),
        src_prompts=["a photo of a cat"] * n, tgt_prompts=["a photo of a dog"] * n, ids=[f"s{i}" for i in range(n)],
    )


def _gens(n: int, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(100 + offset + i) for i in range(n)]


@pytest.fixture(scope="module", params=methods.list())
def model(request):
    return methods.create(request.param, preset="tiny")


def test_output_shape_range_and_determinism(model):
    batch = _batch(model.card, 2)
    a = model.translate(batch, generator=_gens(2))
    b = model.translate(batch, generator=_gens(2))
    assert a.images.shape == (2, 3, SIZE, SIZE)
    assert a.images.dtype == torch.float32 and torch.isfinite(a.images).all()
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert len(a.extras) == 2
    assert torch.equal(a.images, b.images), "same generators must give the same output"


def test_results_do_not_depend_on_batch_size(model):
    batch = _batch(model.card, 3)
    together = model.translate(batch, generator=_gens(3)).images
    alone = torch.cat([model.translate(batch.select([i]), generator=[_gens(3)[i]]).images for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-4), (together - alone).abs().max()


def test_card_and_instance_agree(model):
    card = model.card
    assert model.config == type(model).resolve_config("tiny")
    assert isinstance(model.weights_id, str) and model.weights_id
    assert set(card.defaults) == set(model.config)


def test_unknown_option_is_refused(model):
    with pytest.raises(methods.InputError, match="unknown option"):
        methods.create(model.card.name, preset="tiny", no_such_option=1)


def test_pil_images_go_through_translate_images(model):
    from PIL import Image

    img = Image.new("RGB", (SIZE, SIZE), (120, 80, 40))
    with pytest.raises(methods.InputError, match="translate_images"):
        model.translate(img)
    if model.card.name == "identity":  # the notebook path end to end on the cheapest method
        out = model.translate_images([img], prompts="a dog", seed=0)
        assert out[0].size == img.size and out[0].getpixel((0, 0)) == (120, 80, 40)
