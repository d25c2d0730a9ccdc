"""Compiling fused kernels for a GPU on a machine without one (test tooling).

Triton's interpreter runs the kernels' arithmetic but not its compiler, so a kernel that no
longer compiles for a GPU, stops being pipelined or needs more shared memory than a GPU has
would otherwise show only on a GPU. :func:`compile_ahead` compiles a planned
:class:`~mmfinercam.kernels._launch.Launch` for a chosen GPU target on any machine, and
:func:`resource_usage` reads what the compiled kernel needs (``tests/test_kernels.py``).
"""

from __future__ import annotations

import os
from typing import Any

from ._launch import LAUNCH_OPTIONS, Launch, triton


def compile_ahead(launch: Launch, target: tuple[str, int, int] = ("cuda", 90, 32)) -> Any:
    """Compile one launch for a GPU as Triton's JIT would for its arguments, on any machine.

    Alignment and unit values are specialized as the JIT specializes them; the launch's tensors
    may be on the CPU.

    Args:
        launch: a planned launch.
        target: the GPU (backend, compute capability, warp size); Hopper by default.

    Returns:
        Triton's compiled kernel: ``asm`` holds its TTGIR, PTX and cubin, ``metadata.shared``
        its shared memory.
    """
    from triton._C.libtriton import native_specialize_impl  # what the JIT specializes on
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource

    meta = dict(launch.meta)
    options = {key: meta.pop(key) for key in LAUNCH_OPTIONS if key in meta}
    signature: dict[str, str] = {}
    constants: dict[str, Any] = dict(meta)
    attrs: dict[tuple[int, ...], list] = {}
    args = iter(launch.args)
    for i, name in enumerate(launch.kernel.arg_names):
        if name in meta:
            signature[name] = "constexpr"
            continue
        kind, key = native_specialize_impl(BaseBackend, next(args), False, True, True)
        signature[name] = kind
        if kind == "constexpr":  # an integer 1
            constants[name] = key
        elif key:
            attrs[(i,)] = BaseBackend.parse_attr(key)
    source = ASTSource(launch.kernel, signature, constants, attrs)
    return triton.compile(source, target=GPUTarget(*target), options=options)


def resource_usage(compiled: Any) -> dict[str, int]:
    """What a compiled kernel needs, as ``cuobjdump`` (shipped with Triton) reads its cubin.

    Args:
        compiled: a kernel from :func:`compile_ahead`.

    Returns:
        ``registers`` a thread, ``spilled`` (local memory and stack), ``static_shared`` a
        program, and ``dynamic_shared``, the shared memory Triton asks for at launch.

    Raises:
        RuntimeError: when ``cuobjdump`` reports no resource usage.
    """
    import re
    import subprocess
    import tempfile

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        report = subprocess.run([tool, "-res-usage", cubin.name], capture_output=True, text=True, check=True)
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", report.stdout)
    if found is None:
        raise RuntimeError(f"no resource usage in cuobjdump's report: {report.stdout[-300:]}")
    registers, stack, shared, local = (int(g) for g in found.groups())
    return dict(
        registers=registers,
        spilled=stack + local,
        static_shared=shared,
        dynamic_shared=int(compiled.metadata.shared),
    )
