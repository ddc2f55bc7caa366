"""The protocol core: wire models, the sans-I/O ``kruxos.v1`` session, the invocation pipeline and
the dispatch of methods to the features that registered them. It knows no feature by name."""
