"""Cost presets by CPU generation: every figure says where it comes from, and the figures
are the ones their sources give."""

from __future__ import annotations

import pytest

from vm.cpu.cost import COST_FIGURES, DEFAULT, PRESETS, preset


@pytest.mark.parametrize("name", PRESETS)
def test_every_figure_of_every_preset_names_its_source(name):
    model = PRESETS[name]
    assert model.name == name and model.cpu
    for figure in COST_FIGURES:
        source = model.source(figure)
        assert "ASPLOS 2006" in source or "Bugnion" in source or "vmlab's" in source, (
            f"{name}.{figure} = {getattr(model, figure)} cites nothing: {source}"
        )
        assert getattr(model, figure) > 0


def test_the_generations_the_issue_names_are_there_with_their_published_exits():
    # Adams & Agesen, Table 1 (VM entry): Pentium 4 (Prescott) 2,409, Core 2 (Merom) 937;
    # Bugnion, Nieh & Tsafrir: Prescott 1,926, Haswell 512.
    exits = {name: PRESETS[name].vm_exit for name in ("pentium4", "core2", "prescott", "haswell")}
    assert exits == {"pentium4": 2409, "core2": 937, "prescott": 1926, "haswell": 512}
    for name, model in PRESETS.items():
        assert model.hypercall == model.vm_exit, name  # a hypercall is an exit
        assert f"{model.vm_exit:,}" in model.source("vm_exit"), name
    p4 = PRESETS["pentium4"]
    assert (p4.shadow_update, p4.bt_callout) == (12733, 391)  # Figure 4, ptemod
    assert "Figure 4" in p4.source("shadow_update") and "Figure 4" in p4.source("bt_callout")


def test_haswell_figures_without_a_measurement_are_marked_as_estimates():
    haswell = PRESETS["haswell"]
    assert haswell.nested_paging and not PRESETS["pentium4"].nested_paging
    assert haswell.shadow_update == round(12733 * 512 / 2409)
    for figure in ("shadow_update", "bt_callout", "emulation", "hypercall_item"):
        assert "vmlab's" in haswell.source(figure), figure


def test_presets_differ_only_in_what_virtualization_costs():
    for model in PRESETS.values():
        assert (model.exception, model.page_walk, model.io) == (
            DEFAULT.exception,
            DEFAULT.page_walk,
            DEFAULT.io,
        )


def test_exits_get_cheaper_generation_by_generation():
    order = ["pentium4", "prescott", "core2", "haswell"]
    costs = [PRESETS[name].vm_exit for name in order]
    assert costs == sorted(costs, reverse=True)


def test_an_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="presets: pentium4, prescott, core2, haswell"):
        preset("pentium5")
    with pytest.raises(ValueError, match="no cost model"):
        preset(["haswell"])
