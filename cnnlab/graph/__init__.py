"""A model as a graph of layer calls.

    functional.py  Functional: nodes in topological order, its layers, its config; a graph is a
                   layer too, so models nest
    execute.py     the forward pass that leaves a tape, and the backward walk over it
    fusion.py      the two fusions, planned from the graph at every call
    summary.py     the summary table, with the article's formula and Keras' "Connected to"
"""
