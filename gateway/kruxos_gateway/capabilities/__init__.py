"""Capabilities: what agents invoke. ``base`` defines what a capability is; ``builtin`` lists the
built-in ones (filesystem, process, network, alerts), each in its own module; ``workspace`` confines
paths to the workspace by descriptor."""
