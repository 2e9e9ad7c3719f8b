"""The Translator interface, method cards and the lazy registry."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import methods
from methods import HParam, InputError, MethodCard, TranslationInput, Translator
from tests.conftest import ROOT


def test_listing_imports_no_torch_and_is_fast():
    code = textwrap.dedent("""
        import sys, time
        t = time.time()
        import methods
        names = methods.list()
        cards = methods.cards()
        assert "identity" in names and "sdedit" in names, names
        assert set(cards) == set(names)
        heavy = [m for m in ("torch", "diffusers", "transformers", "timm", "open_clip") if m in sys.modules]
        assert not heavy, heavy
        print(time.time() - t)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) < 2.0


def test_benchmark_list_command_imports_no_torch():
    code = "import sys, benchmark; benchmark.main(['list']); assert 'torch' not in sys.modules, 'torch imported'"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "sdedit" in out.stdout and "identity" in out.stdout


def test_unknown_method_names_closest_match_and_known_names():
    with pytest.raises(methods.UnknownMethodError) as e:
        methods.get("sdedti")
    msg = str(e.value)
    assert "'sdedit'" in msg and "Did you mean" in msg and "identity" in msg


def test_register_validates_class_and_name():
    with pytest.raises(TypeError, match="Translator subclass"):
        methods.register(object)  # type: ignore[arg-type]

    class NoCard(Translator):
        @classmethod
        def from_pretrained(cls, source=None, **kw):
            return cls()

        def translate(self, batch, *, generator=None):
            raise NotImplementedError

    with pytest.raises(TypeError, match="card"):
        methods.register(NoCard)

    class Clash(NoCard):
        card = MethodCard(name="identity", paper="x", year=2024, url="", kinds=frozenset({"paired"}),
                          needs_training=False, weights={"tiny": "none"}, defaults={}, license="MIT")

    with pytest.raises(ValueError, match="taken"):
        methods.register(Clash)


def test_plugin_file_registers_a_new_method(tmp_path):
    plugin = tmp_path / "my_method.py"
    plugin.write_text(textwrap.dedent("""
        from methods import MethodCard, Translator, TranslationOutput, register

        @register
        class Invert(Translator):
            card = MethodCard(name="invert-test", paper="test", year=2024, url="", kinds=frozenset({"paired"}),
                              needs_training=False, weights={"tiny": "none"}, defaults={}, license="MIT")
            config, weights_id = {}, "none"

            @classmethod
            def from_pretrained(cls, source=None, **kw):
                return cls()

            def translate(self, batch, *, generator=None):
                return TranslationOutput(images=1 - batch.images)
    """))
    methods.load_plugin(str(plugin))
    assert "invert-test" in methods.list()
    m = methods.create("invert-test")
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(m.translate(TranslationInput(images=x)).images, 1 - x)


def test_card_validation_and_config_resolution():
    with pytest.raises(ValueError, match="lowercase"):
        MethodCard(name="My Method", paper="", year=0, url="", kinds=frozenset({"paired"}), needs_training=False,
                   weights={"tiny": "x"}, defaults={}, license="")
    with pytest.raises(ValueError, match="unknown task kinds"):
        MethodCard(name="m", paper="", year=0, url="", kinds=frozenset({"pairs"}), needs_training=False,
                   weights={"tiny": "x"}, defaults={}, license="")
    with pytest.raises(ValueError, match="tiny"):
        MethodCard(name="m", paper="", year=0, url="", kinds=frozenset({"paired"}), needs_training=False,
                   weights={"paper": "x"}, defaults={}, license="")
    card = MethodCard(name="m", paper="", year=0, url="", kinds=frozenset({"paired"}), needs_training=False,
                      weights={"tiny": "x"}, defaults={"s": HParam(0.5, "paper")}, license="")
    assert card.resolve_config({"s": None}) == {"s": 0.5}  # None overrides are dropped (timm rule)
    assert card.resolve_config({"s": 0.7}) == {"s": 0.7}
    with pytest.raises(InputError, match="unknown option 'strenght'.*known options: s"):
        card.resolve_config({"strenght": 1})
    with pytest.raises(InputError, match="unknown preset 'huge'"):
        card.weights_for("huge")


def test_card_fixes_and_variants_name_options_and_report_what_a_config_turns_on():
    kw = dict(paper="", year=0, url="", kinds=frozenset({"paired"}), needs_training=False, weights={"tiny": "x"},
              license="", defaults={"s": HParam("a", "paper"), "k": HParam(1, "paper")})
    card = MethodCard(name="m", fixes=("upstream bug fixed",), variants={"s=b": "deviates", "k": "any k"}, **kw)
    assert card.active_variants(card.default_config()) == []
    assert card.active_variants({"s": "b", "k": 3}) == ["s=b", "k=3"]
    assert card.active_variants({"s": "c", "k": 1}) == []  # "s=c" is not a listed variant
    with pytest.raises(ValueError, match="names no option"):
        MethodCard(name="m", variants={"nope": "x"}, **kw)
    with pytest.raises(ValueError, match="is the default value"):
        MethodCard(name="m", variants={"s=a": "x"}, **kw)
    with pytest.raises(TypeError, match="fixes"):
        MethodCard(name="m", fixes=("",), **kw)


def test_every_paper_method_lists_its_fixes_and_variants():
    """The rule: defaults are the authors' algorithm; bug fixes kept on and opt-in deviations are on the card."""
    cards = methods.cards()
    # the zoo's paper methods (not the baselines: the copy, and diffusers' SD img2img; not other tests' plugins)
    for name in ("pix2pix-zero", "diffuseit", "piti", "pix2pix-turbo", "cyclegan-turbo"):
        card = cards[name]
        assert card.variants or card.fixes, f"{name}: no fixes / variants listed"
        for key, text in card.variants.items():
            assert len(text) > 20, f"{name}.{key}: describe the change and its measured effect"


def test_every_registered_card_cites_its_defaults():
    for name, card in methods.cards().items():
        for key, hp in card.defaults.items():
            assert hp.source.strip(), f"{name}.{key} has no source"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(images=torch.rand(2, 1, 8, 8)), "B x 3 x H x W"),
        (dict(images=torch.rand(2, 3, 8, 8) * 2 - 1), r"\[0, 1\].*\(x \+ 1\) / 2"),
        (dict(images=(torch.rand(2, 3, 8, 8) * 255).to(torch.uint8)), "divide uint8 by 255"),
        (dict(images=torch.rand(2, 3, 8, 8), tgt_prompts=["a"]), "1 entries for a batch of 2"),
        (dict(images=torch.rand(2, 3, 8, 8), condition=torch.rand(1, 3, 8, 8)), "B=2"),
        (dict(images=torch.rand(2, 3, 8, 8), direction="ab"), "direction"),
    ],
)
def test_translation_input_rejects_bad_batches(kwargs, match):
    with pytest.raises(InputError, match=match):
        TranslationInput(**kwargs)


def test_translation_input_select_keeps_fields_aligned():
    x = torch.rand(3, 3, 8, 8)
    b = TranslationInput(images=x, tgt_prompts=["a", "b", "c"], condition=x * 0.5, ids=["i", "j", "k"],
                         direction="b2a")
    s = b.select([2, 0])
    assert s.ids == ["k", "i"] and s.tgt_prompts == ["c", "a"] and s.direction == "b2a"
    assert torch.equal(s.images, x[[2, 0]]) and torch.equal(s.condition, x[[2, 0]] * 0.5)


def test_check_input_messages_name_samples_and_fix():
    m = methods.get("sdedit")
    inst = m.__new__(m)
    b = TranslationInput(images=torch.rand(1, 3, 60, 64), ids=["rocket"])
    with pytest.raises(InputError, match=r"rocket.*64x60.*multiples of 8.*--resolution"):
        inst.check_input(b)
    with pytest.raises(InputError, match="cannot run a 'image-guided' task"):
        inst.check_input(TranslationInput(images=torch.rand(1, 3, 64, 64)), "image-guided")


def test_tests_run_one_openmp_thread_per_process():
    # conftest sets OMP_NUM_THREADS=1 before torch loads (tiny models; no oversubscription with subprocess tests)
    assert torch.get_num_threads() == 1
