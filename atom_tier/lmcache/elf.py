"""The DT_NEEDED entries of an ELF shared library, read without loading it.

Why not ``ctypes.CDLL`` or importing the extension: LMCache's CUDA-built ``cuda_ops`` cannot be
loaded on a ROCm machine (``libcudart`` is absent), and loading a library runs its
initialisers. Why not ``readelf -d``: binutils is not in every runtime image. The dynamic
section is small and its layout is fixed by the ELF specification, so reading it is a few
``struct`` calls: program headers -> ``PT_DYNAMIC`` -> ``DT_NEEDED`` offsets into the string
table at ``DT_STRTAB`` (a virtual address, mapped to a file offset through ``PT_LOAD``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

ELF_MAGIC = b"\x7fELF"
PT_LOAD = 1
PT_DYNAMIC = 2
DT_NULL = 0
DT_NEEDED = 1
DT_STRTAB = 5
DT_STRSZ = 10
# Far above any real library's dynamic section or string table: a bound against corrupt sizes.
MAX_TABLE_BYTES = 64 * 1024 * 1024


class ElfError(ValueError):
    """The file is not an ELF shared object this reader understands; the message says why."""


@dataclass(frozen=True)
class _Layout:
    """struct formats of one ELF class (32/64-bit) and byte order."""

    endian: str
    is64: bool
    header: str  # e_type .. e_shstrndx (after e_ident)
    phdr: str
    dyn: str

    def unpack(self, fmt: str, data: bytes) -> tuple[int, ...]:
        return struct.unpack(self.endian + fmt, data)

    def size(self, fmt: str) -> int:
        return struct.calcsize(self.endian + fmt)


_LAYOUTS = {
    # e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize e_phentsize e_phnum ...
    1: ("HHIIIIIHHHHHH", "IIIIIIII", "iI"),  # ELFCLASS32; p_type p_offset p_vaddr ... p_align
    2: ("HHIQQQIHHHHHH", "IIQQQQQQ", "qQ"),  # ELFCLASS64; p_type p_flags p_offset p_vaddr ...
}


def _read_at(f: BinaryIO, offset: int, size: int, what: str) -> bytes:
    if size < 0 or size > MAX_TABLE_BYTES:
        raise ElfError(f"{what} has an implausible size ({size} bytes)")
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ElfError(f"file is truncated inside the {what}")
    return data


def _layout(ident: bytes) -> _Layout:
    if len(ident) < 16 or ident[:4] != ELF_MAGIC:
        raise ElfError("not an ELF file")
    elf_class, encoding = ident[4], ident[5]
    if elf_class not in _LAYOUTS or encoding not in (1, 2):
        raise ElfError(f"unknown ELF class {elf_class} or data encoding {encoding}")
    header, phdr, dyn = _LAYOUTS[elf_class]
    return _Layout("<" if encoding == 1 else ">", elf_class == 2, header, phdr, dyn)


def _segments(f: BinaryIO, lay: _Layout) -> list[tuple[int, int, int, int]]:
    """(p_type, p_offset, p_vaddr, p_filesz) of every program header."""
    header = lay.unpack(lay.header, _read_at(f, 16, lay.size(lay.header), "ELF header"))
    phoff, phentsize, phnum = header[4], header[8], header[9]
    if phnum == 0:
        raise ElfError("no program headers: not a shared library")
    if phentsize < lay.size(lay.phdr):
        raise ElfError(f"program header entries too small ({phentsize} bytes)")
    table = _read_at(f, phoff, phentsize * phnum, "program header table")
    segments = []
    for i in range(phnum):
        fields = lay.unpack(lay.phdr, table[i * phentsize : i * phentsize + lay.size(lay.phdr)])
        if lay.is64:  # 64-bit order: type, flags, offset, vaddr, paddr, filesz
            segments.append((fields[0], fields[2], fields[3], fields[5]))
        else:  # 32-bit order: type, offset, vaddr, paddr, filesz
            segments.append((fields[0], fields[1], fields[2], fields[4]))
    return segments


def _file_offset(vaddr: int, segments: list[tuple[int, int, int, int]]) -> int:
    for p_type, offset, start, filesz in segments:
        if p_type == PT_LOAD and start <= vaddr < start + filesz:
            return vaddr - start + offset
    raise ElfError(f"string table address {vaddr:#x} lies in no loadable segment")


def needed_libraries(path: Path) -> tuple[str, ...]:
    """The DT_NEEDED names of a shared library, in link order (``readelf -d`` shows the same)."""
    try:
        with open(path, "rb") as f:
            lay = _layout(f.read(16))
            segments = _segments(f, lay)
            dynamic = [s for s in segments if s[0] == PT_DYNAMIC]
            if not dynamic:
                return ()  # statically linked: needs nothing
            _, offset, _, filesz = dynamic[0]
            raw = _read_at(f, offset, filesz, "dynamic section")
            step = lay.size(lay.dyn)
            needed: list[int] = []
            strtab = strsz = None
            for pos in range(0, len(raw) - step + 1, step):
                tag, value = lay.unpack(lay.dyn, raw[pos : pos + step])
                if tag == DT_NULL:
                    break
                if tag == DT_NEEDED:
                    needed.append(value)
                elif tag == DT_STRTAB:
                    strtab = value
                elif tag == DT_STRSZ:
                    strsz = value
            if not needed:
                return ()
            if strtab is None or strsz is None:
                raise ElfError("dynamic section lists libraries but has no string table")
            table = _read_at(f, _file_offset(strtab, segments), strsz, "string table")
    except OSError as exc:
        raise ElfError(f"cannot read {path}: {exc}") from exc
    names = []
    for start in needed:
        end = table.find(b"\0", start)
        if start >= len(table) or end < 0:
            raise ElfError(f"DT_NEEDED offset {start} is outside the string table")
        names.append(table[start:end].decode("utf-8", "replace"))
    return tuple(names)
