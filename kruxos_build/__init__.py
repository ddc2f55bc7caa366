"""The KruxOS image builder: appliance description -> mkosi config -> bootable disk image.

Modules: ``description`` (validated YAML), ``render`` (Jinja2 overlay -> build/generated), ``host`` (build
tools), ``mkosi`` (summary and build), ``outputs`` (zst, bmap, SHA256SUMS, manifest), ``boot`` (QEMU),
``cli`` (the ``build.py`` commands).
"""
