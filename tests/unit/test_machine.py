from __future__ import annotations

from shared.machine import cpu_isa


def test_cpu_isa_lists_the_kernel_relevant_flags_it_finds() -> None:
    info = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n"
    assert cpu_isa(info) == ["avx2", "avx512f", "avx512_vnni"]
    assert cpu_isa("processor\t: 0\n") == []
