"""The table of common GPUs and the fit of a run on one: a prediction, marked as such."""
from __future__ import annotations

import pytest

from oomdoctor.errors import BadInput
from oomdoctor.gpu.cards import CARDS, GiB, MiB, card, card_fit, describe


@pytest.mark.parametrize("name", ["A100-40GB", "a100 40gb", "A100_40GB", "nvidia a100-40gb"])
def test_a_card_is_found_however_its_name_is_typed(name):
    assert card(name).name == "A100-40GB"


def test_the_table_holds_the_common_cards_with_sane_figures():
    for name in ("T4-16GB", "V100-16GB", "V100-32GB", "A10G-24GB", "L4-24GB", "A100-40GB", "A100-80GB",
                 "H100-80GB", "H200-141GB", "RTX3090-24GB", "RTX4090-24GB"):
        c = CARDS[name]
        marketed = int(name.rsplit("-", 1)[1].removesuffix("GB"))
        # CUDA reports a little less than the marketed figure (ECC, driver pages), never more
        assert 0.9 * marketed < c.memory_bytes / GiB <= marketed
        assert 256 * MiB <= c.context_bytes <= 1 * GiB
        assert c.allocator_bytes == c.memory_bytes - c.context_bytes


def test_an_unknown_card_names_the_known_ones():
    with pytest.raises(BadInput) as caught:
        card("A100")  # two cards share the chip: the memory is part of the name
    message = str(caught.value)
    assert message.startswith("--gpu: unknown card 'A100'; known: ") and all(n in message for n in CARDS)
    assert caught.value.exit_code == 2


def test_a_run_fits_when_its_reserved_peak_is_within_the_allocator_share():
    t4 = card("T4-16GB")
    inside = card_fit(t4, t4.allocator_bytes)
    assert inside.fits and inside.headroom_bytes == 0
    # the card holds the bytes, but not once the context took its share
    outside = card_fit("T4-16GB", t4.allocator_bytes + 1)
    assert not outside.fits and outside.headroom_bytes == -1
    assert outside.reserved_peak_bytes < t4.memory_bytes


def test_the_machine_form_says_predicted_and_unvalidated_with_the_assumptions():
    data = card_fit("H100-80GB", 10 * GiB).to_dict()
    assert data["predicted"] is True and data["validated"] is False
    assert data["fits"] and data["headroom_bytes"] == CARDS["H100-80GB"].allocator_bytes - 10 * GiB
    assert data["assumptions"] and describe(CARDS["H100-80GB"])["name"] == "H100-80GB"
