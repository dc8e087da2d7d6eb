"""The graph strategy explores what the properties are about: spiking structure in every graph by default."""

from hypothesis import HealthCheck, find, given, settings
from strategies import spiking_graphs

from sdmc import ir


def _neurons_reaching_outputs(g: ir.Graph) -> list[str]:
    anc = g.ancestors([n.name for n in g.output_nodes])
    return [n.name for n in g if n.op in ir.NEURON_OPS and n.name in anc]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(spiking_graphs())
def test_every_generated_graph_spikes_into_an_output(g):
    assert _neurons_reaching_outputs(g)


def test_spiking_false_still_draws_graphs_without_neurons():
    g = find(spiking_graphs(spiking=False), lambda g: not _neurons_reaching_outputs(g))
    assert not _neurons_reaching_outputs(g)
