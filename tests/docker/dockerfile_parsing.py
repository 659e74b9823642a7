"""A small static reader of Dockerfiles and of the pip commands in their RUN instructions.

Docker cannot run on the development machines, so docker/Dockerfile.rocm is checked by reading
it: instructions (continuation lines joined, comment lines dropped, as Docker's parser does),
build stages, and every ``pip install``/``pip wheel`` inside a RUN with what it installs.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

# Shell words that end one simple command inside a RUN line.
COMMAND_SEPARATORS = {"&&", "||", ";", "|", "(", ")", "do", "done", "then", "else", "fi", "<"}
# pip options that take a value (the value is not a package to install).
PIP_VALUE_OPTIONS = {
    "-r", "--requirement", "-c", "--constraint", "-t", "--target", "-w", "--wheel-dir",
    "-d", "--dest", "-i", "--index-url", "--extra-index-url", "-f", "--find-links",
    "--prefix", "--root", "--cache-dir", "--log", "--config-settings", "-C",
}  # fmt: skip
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, ARG, RUN, ...
    arguments: str  # the rest, continuation lines joined with spaces
    line: int  # where it starts (1-based)


@dataclass
class Stage:
    base: str  # the FROM image expression, e.g. "${BASE_IMAGE}"
    name: str | None  # the AS name
    instructions: list[Instruction] = field(default_factory=list)

    def runs(self) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == "RUN"]

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass(frozen=True)
class PipCommand:
    """One pip invocation: its subcommand, options (with values) and install targets."""

    subcommand: str
    options: dict[str, list[str]]
    targets: list[str]
    environment: dict[str, str]  # VAR=value words written before the command

    def flag(self, name: str) -> bool:
        return name in self.options


def read_instructions(text: str) -> list[Instruction]:
    """Instructions in order. Comment lines are dropped, also inside continued instructions."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined = " ".join(part for part in pending if part)
        pending = []
        keyword, _, arguments = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
    if pending:
        raise ValueError(f"instruction starting at line {start} ends with a line continuation")
    return instructions


def global_args(instructions: list[Instruction]) -> dict[str, str | None]:
    """ARGs declared before the first FROM (the ones FROM lines may use), with defaults."""
    found: dict[str, str | None] = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, sep, default = instruction.arguments.partition("=")
            found[name.strip()] = default.strip().strip('"') if sep else None
    return found


def stages(instructions: list[Instruction]) -> list[Stage]:
    result: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            result.append(Stage(words[0], name))
        elif result:
            result[-1].instructions.append(instruction)
    return result


def shell_commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN line (shell form), as word lists."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word in COMMAND_SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def pip_commands(run: str) -> list[PipCommand]:
    """Every ``pip``/``python -m pip`` command of a RUN line."""
    found = []
    for words in shell_commands(run):
        environment = {}
        while words and ENV_ASSIGNMENT.match(words[0]):
            name, _, value = words.pop(0).partition("=")
            environment[name] = value
        if words and re.fullmatch(r"(.*/)?python3?(\.\d+)?", words[0]):
            if words[1:3] != ["-m", "pip"]:
                continue
            words = words[3:]
        elif words and re.fullmatch(r"(.*/)?pip3?", words[0]):
            words = words[1:]
        else:
            continue
        if not words:
            continue
        subcommand, rest = words[0], words[1:]
        options: dict[str, list[str]] = {}
        targets: list[str] = []
        index = 0
        while index < len(rest):
            word = rest[index]
            if word in PIP_VALUE_OPTIONS or word in ("-e", "--editable"):
                value = rest[index + 1] if index + 1 < len(rest) else ""
                options.setdefault(word, []).append(value)
                if word in ("-e", "--editable"):
                    targets.append(value)
                index += 2
                continue
            if word.startswith("-"):
                name, _, value = word.partition("=")
                options.setdefault(name, []).append(value)
            else:
                targets.append(word)
            index += 1
        found.append(PipCommand(subcommand, options, targets, environment))
    return found


def load(path: Path) -> tuple[dict[str, str | None], list[Stage]]:
    instructions = read_instructions(path.read_text())
    return global_args(instructions), stages(instructions)
