#!/usr/bin/env python3
"""The docs, run: every shell block of README.md and docs/*.md that shows
commands and their output is executed where it can run here, in the order
written, and what it prints is compared with what the doc shows.

    testkit/docs-test.py --lint                 the checks that run nothing (marks, paths, words, figures)
    testkit/docs-test.py --list                 every shell block and where it runs
    testkit/docs-test.py --phase local          plain processes: the quick start, the API, settings
    testkit/docs-test.py --phase vm --nsenter PID      a machine with systemd (deploy/tests/docs.sh boots it)
    testkit/docs-test.py --phase stack --nsenter PID   the same with the observability stack up

How a doc marks a block: an HTML comment on the line before its fence.

    <!-- test: local -->                        run in the phase named (local, vm, stack)
    <!-- test: local, in the background -->     its one command keeps running (a terminal of its
                                                own); the lines shown must appear in its output;
                                                at the phase's end it gets Ctrl-C (SIGINT to its
                                                process group) and must exit 0
    <!-- test: local, output of ./run.sh -->    a block of output only: these lines must appear
                                                in what that background command has printed so far

In those two, each line shown must be a line of the output, in any order
(several processes write to one terminal), waited for up to the timeout.
    <!-- test: not run: REASON -->              not run here, and why

A run block is a `console` block: lines that start with `$ ` are commands
(a line ending in a backslash continues), the lines after one are its output
(standard output and error, as a terminal shows them). Every command of a
phase runs in one shell, as in a terminal: variables and the directory carry
over. Output is compared line by line, exactly, but for these placeholders:

    ...             a line of its own: any number of lines; inside a line: any text
    <trace-id>      32 hex digits
    <time>          a timestamp as the daemons log it (2026-01-31T12:00:00.123456Z)
    <date>          a date as systemctl prints it (Sat 2026-01-31 12:00:00 UTC)
    <n>             a whole number
    <number>        a number, with or without decimals
    <A..B>          a number from A to B (e.g. <1.0..1.1>)

Every `console`, `sh`, `bash` or `shell` block must carry a mark: a block
no test runs is one the reader is told about.
"""

import argparse
import difflib
import functools
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHELL_LANGS = {"console", "sh", "bash", "shell"}
PHASES = ("local", "vm", "stack")
MARK = re.compile(r"^<!--\s*test:\s*(.*?)\s*-->\s*$")
README_MAX_LINES = 250
SHOW = False  # --show: print what each command printed, matched or not


def doc_files():
    """README.md, then docs/*.md by name: the order a phase runs them in."""
    return [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))


def rel(path):
    return str(path.relative_to(REPO))


# --- Blocks -----------------------------------------------------------------


@dataclass
class Block:
    file: Path
    line: int  # of the opening fence, 1-based
    lang: str
    body: list
    mark: str | None  # the text after "test:", or None
    phase: str | None = None
    mode: str = "run"  # run | background | output | skip
    of: str | None = None  # for mode "output": the background command
    reason: str | None = None  # for mode "skip"

    def where(self):
        return f"{rel(self.file)}:{self.line}"


def parse(path):
    """The fenced blocks of a markdown file, with the mark before each."""
    blocks, lines = [], path.read_text().split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)\s*([^\s`]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(2), m.group(3), i
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        prev = lines[start - 1] if start > 0 else ""
        mark = MARK.match(prev.strip())
        block = Block(path, start + 1, lang, lines[start + 1 : j], mark.group(1) if mark else None)
        interpret_mark(block)
        blocks.append(block)
        i = j + 1
    return blocks


def interpret_mark(block):
    if block.mark is None:
        return
    text = block.mark
    if text.startswith("not run"):
        block.mode, block.reason = "skip", text.partition(":")[2].strip() or None
        return
    parts = [p.strip() for p in text.split(",")]
    block.phase = parts[0]
    for part in parts[1:]:
        if part == "in the background":
            block.mode = "background"
        elif part.startswith("output of "):
            block.mode, block.of = "output", part[len("output of ") :]
        else:
            block.mode = f"bad option {part!r}"


def commands(block):
    """(command, [expected output lines]) pairs of a console block."""
    pairs, cmd, out, cont = [], None, [], False
    for line in block.body:
        if cont:
            cmd += "\n" + line
            cont = line.endswith("\\")
        elif line.startswith("$ ") or line == "$":
            if cmd is not None:
                pairs.append((cmd, out))
            cmd, out = line[2:], []
            cont = line.endswith("\\")
        else:
            if cmd is None:
                raise DocError(block, f"output before any command: {line!r}")
            out.append(line)
    if cmd is not None:
        pairs.append((cmd, out))
    return pairs


class DocError(Exception):
    def __init__(self, block, message):
        super().__init__(f"{block.where()}: {message}")


# --- Matching ---------------------------------------------------------------

PLACEHOLDERS = {
    "<trace-id>": r"[0-9a-f]{32}",
    "<time>": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z",
    "<date>": r"[A-Z][a-z]{2} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z]+",
    "<n>": r"\d+",
    "<number>": r"-?\d+(?:\.\d+)?",
}
TOKEN = re.compile(r"\.\.\.|<[a-z-]+>|<-?\d+(?:\.\d+)?\.\.-?\d+(?:\.\d+)?>")


@functools.lru_cache(maxsize=None)
def line_pattern(expected):
    """A regex for one expected line, and the ranges its <A..B> must keep."""
    out, ranges, pos = [], [], 0
    for m in TOKEN.finditer(expected):
        out.append(re.escape(expected[pos : m.start()]))
        tok = m.group(0)
        if tok == "...":
            out.append(".*?")
        elif tok in PLACEHOLDERS:
            out.append(PLACEHOLDERS[tok])
        elif ".." in tok:
            lo, hi = tok[1:-1].split("..")
            out.append(f"(?P<r{len(ranges)}>-?\\d+(?:\\.\\d+)?)")
            ranges.append((float(lo), float(hi)))
        else:  # <anything else> is text
            out.append(re.escape(tok))
        pos = m.end()
    out.append(re.escape(expected[pos:]))
    return re.compile("".join(out) + r"\Z"), tuple(ranges)


def line_matches(expected, actual):
    pattern, ranges = line_pattern(expected)
    m = pattern.match(actual)
    if not m:
        return False
    return all(lo <= float(m.group(f"r{k}")) <= hi for k, (lo, hi) in enumerate(ranges))


def matches(expected, actual):
    """Whether the actual lines are the expected ones (with placeholders)."""

    @functools.lru_cache(maxsize=None)
    def at(i, j):
        if i == len(expected):
            return j == len(actual)
        if expected[i] == "...":
            return any(at(i + 1, k) for k in range(j, len(actual) + 1))
        return j < len(actual) and line_matches(expected[i], actual[j]) and at(i + 1, j + 1)

    return at(0, 0)


def contains(expected, actual):
    """Whether each expected line (but `...`) is one of the actual lines, a
    line each, in any order: what a terminal that several processes write
    to shows."""
    left = list(actual)
    for want in expected:
        if want == "...":
            continue
        for k, line in enumerate(left):
            if line_matches(want, line):
                del left[k]
                break
        else:
            return False
    return True


def output_lines(text):
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def expected_lines(lines):
    lines = [line.rstrip() for line in lines]
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def explain(expected, actual):
    diff = difflib.unified_diff(expected, actual, "the doc shows", "the command printed", lineterm="", n=2)
    return "\n".join("    " + line for line in diff)


# --- A shell, as a terminal ---------------------------------------------------


class Session:
    """One bash that every command of a phase runs in, in order."""

    def __init__(self, argv, env):
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.chunks = queue.Queue()
        self.buffer = b""
        threading.Thread(target=self._read, daemon=True).start()
        self.backgrounds = {}  # command -> (pid, log file)

    def _read(self):
        while True:
            data = self.proc.stdout.read1(65536)
            self.chunks.put(data)
            if not data:
                return

    def run(self, command, timeout=60.0):
        """Runs COMMAND (stdin from /dev/null); returns (output, exit status)."""
        token = "docs-test-" + uuid.uuid4().hex
        script = f"{{ {command}\n}} </dev/null\nprintf '\\n%s %s\\n' {token} \"$?\"\n"
        self.proc.stdin.write(script.encode())
        self.proc.stdin.flush()
        end = time.monotonic() + timeout
        needle = ("\n" + token + " ").encode()
        while True:
            at = self.buffer.find(needle)
            if at >= 0:
                nl = self.buffer.find(b"\n", at + len(needle))
                if nl >= 0:
                    out = self.buffer[:at]
                    status = int(self.buffer[at + len(needle) : nl])
                    self.buffer = self.buffer[nl + 1 :]
                    return out.decode(errors="replace"), status
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no end after {timeout:.0f} s; printed so far:\n{self.buffer.decode(errors='replace')}")
            try:
                data = self.chunks.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if not data:
                raise RuntimeError(f"the shell exited; it printed:\n{self.buffer.decode(errors='replace')}")
            self.buffer += data

    def start_background(self, command):
        """Starts COMMAND as a job of its own (its own process group, as in
        a terminal of its own); an earlier one of the same command keeps
        running, under another name."""
        if command in self.backgrounds:
            self.backgrounds[f"{command} (#{len(self.backgrounds) + 1})"] = self.backgrounds.pop(command)
        log = f"/tmp/docs-test-{uuid.uuid4().hex[:12]}.log"
        out, _ = self.run(f"set -m; {{ {command}\n}} >{log} 2>&1 </dev/null & echo $!; set +m")
        self.backgrounds[command] = (int(out.split()[-1]), log)

    def background_output(self, command):
        _, log = self.backgrounds[command]
        out, _ = self.run(f"cat {log}")
        return out

    def interrupt_backgrounds(self):
        """Ctrl-C to each background command; (command, exit status, output) each."""
        results = []
        for command, (pid, log) in self.backgrounds.items():
            out, _ = self.run(f"kill -INT -- -{pid} 2>/dev/null; wait {pid}; echo \"status $?\"; cat {log}; rm -f {log}", timeout=30)
            first, _, text = out.partition("\n")
            results.append((command, int(first.split()[-1]), text))
        self.backgrounds = {}
        return results

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def clean_env(home):
    """The environment of a fresh login: no variable of the test run leaks in."""
    env = {
        "HOME": home,
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "USER": "root",
        "LOGNAME": "root",
    }
    return env


def local_session():
    """Plain processes: a private network (its own 127.0.0.1, so 8080 and
    8081 are free whatever else runs) and a private process table (pgrep
    finds only this phase's daemons), as the user running this."""
    env = clean_env(os.environ.get("HOME", "/root"))
    cargo = os.path.dirname(shutil.which("cargo") or "/nonexistent/cargo")
    env["PATH"] = f"{cargo}:{env['PATH']}"
    env["USER"] = env["LOGNAME"] = os.environ.get("USER", "root")
    for key in ("RUSTUP_HOME", "CARGO_HOME"):
        if key in os.environ:
            env[key] = os.environ[key]
    argv = ["unshare", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc", "bash", "--norc", "--noprofile"]
    session = Session(argv, env)
    session.run(f"ip link set lo up && cd {REPO}")
    return session


def container_session(init_pid):
    """A root shell on the machine whose init is INIT_PID (a container
    deploy/tests/docs.sh booted), in the checkout, as after logging in."""
    argv = ["nsenter", "-t", str(init_pid), "-a", "env", "-i"]
    argv += [f"{k}={v}" for k, v in clean_env("/root").items()]
    argv += ["bash", "--norc", "--noprofile"]
    session = Session(argv, None)
    session.run(f"cd {REPO}")
    return session


# --- Running a phase -------------------------------------------------------


@dataclass
class Result:
    failures: list = field(default_factory=list)
    commands: int = 0
    blocks: int = 0

    def fail(self, where, message):
        self.failures.append(f"{where}: {message}")
        print(f"FAIL  {where}: {message}", flush=True)


def run_block(session, block, result, timeout):
    result.blocks += 1
    if block.mode == "background":
        pairs = commands(block)
        if len(pairs) != 1:
            raise DocError(block, "a background block holds one command")
        command, expected = pairs[0]
        session.start_background(command)
        result.commands += 1
        wait_for(session, block, command, expected_lines(expected), result, timeout, "its terminal")
        return
    if block.mode == "output":
        if block.of not in session.backgrounds:
            raise DocError(block, f"no background command {block.of!r} runs at this point")
        wait_for(session, block, block.of, expected_lines(block.body), result, timeout, f"{block.of}'s terminal")
        return
    for command, expected in commands(block):
        result.commands += 1
        started = time.monotonic()
        try:
            out, status = session.run(command, timeout)
        except TimeoutError as e:
            result.fail(block.where(), f"$ {command}\n    {e}")
            raise
        took = time.monotonic() - started
        actual, want = output_lines(out), expected_lines(expected)
        if matches(want, actual):
            print(f"ok    {block.where()} ({took:.1f}s) $ {command.splitlines()[0]}", flush=True)
            if SHOW:
                print("\n".join("    | " + line for line in actual), flush=True)
        else:
            result.fail(
                block.where(),
                f"$ {command}\n  (exit status {status}) printed what the doc does not show:\n{explain(want, actual)}",
            )


def wait_for(session, block, command, wanted, result, timeout, what):
    end = time.monotonic() + timeout
    while True:
        actual = output_lines(session.background_output(command))
        if contains(wanted, actual):
            print(f"ok    {block.where()} {what} shows the lines", flush=True)
            return
        if time.monotonic() > end:
            result.fail(block.where(), f"{what} never showed these lines in {timeout:.0f} s:\n{explain(wanted, actual)}")
            return
        time.sleep(0.5)


def run_phase(phase, session, only, timeout):
    result = Result()
    try:
        for path in doc_files():
            for block in parse(path):
                if block.phase != phase or (only and not block.where().startswith(only)):
                    continue
                run_block(session, block, result, timeout)
        if phase == "local":
            settings_are_documented(session, result)
        for command, status, text in session.interrupt_backgrounds():
            if status != 0:
                tail = "\n".join("    " + line for line in output_lines(text)[-15:])
                result.fail(phase, f"{command}: exit status {status} after Ctrl-C (the docs say it stops cleanly):\n{tail}")
            else:
                print(f"ok    {command}: Ctrl-C, exit status 0", flush=True)
    except (TimeoutError, RuntimeError) as e:
        result.fail(phase, str(e))
    return result


# --- Checks that run nothing --------------------------------------------------

# History and the project's own notes stay out of what users read.
FORBIDDEN = [
    (re.compile(r"CONTRACT\.md|shared notes|\bthe contract\b", re.I), "cites a document users do not have"),
    (re.compile(r"\b(this|that|the previous|previous|last|next|each|every) round\b|\bround's\b", re.I), "history"),
    (re.compile(r"\bissues? #?\d+", re.I), "an issue number"),
    (re.compile(r"\bcommit of this\b|\bthe final code\b", re.I), "history"),
]
# Paths in backticks that name something of this repository.
REPO_PATH = re.compile(r"`((?:\.ci|bench|deploy|docs|fuzz|observability|service-a|service-b|service-kit|testkit)/[^`\s]*|[a-z.-]+\.(?:sh|md|toml|py))`")


def lint():
    problems = []
    for path in doc_files():
        text = path.read_text()
        lines = text.split("\n")
        for block in parse(path):
            if block.lang in SHELL_LANGS and block.mark is None:
                problems.append(f"{block.where()}: a {block.lang} block without a mark (<!-- test: PHASE --> or <!-- test: not run: REASON -->)")
            if block.mark is None:
                continue
            if block.mode == "skip" and not block.reason:
                problems.append(f"{block.where()}: 'not run' needs a reason")
            elif block.mode.startswith("bad option"):
                problems.append(f"{block.where()}: {block.mode}")
            elif block.phase is not None and block.phase not in PHASES:
                problems.append(f"{block.where()}: no phase {block.phase!r} (one of {', '.join(PHASES)})")
            elif block.mode in ("run", "background") and block.phase and block.lang != "console":
                problems.append(f"{block.where()}: a block that runs is a console block ($ COMMAND, then its output)")
            elif block.mode in ("run", "background"):
                try:
                    commands(block)
                except DocError as e:
                    problems.append(str(e))
        in_fence = False
        for n, line in enumerate(lines, 1):
            if re.match(r"^\s*(```|~~~)", line):
                in_fence = not in_fence
            for pattern, why in FORBIDDEN:
                m = pattern.search(line)
                if m and "round robin" not in line[max(0, m.start() - 10) : m.end() + 10]:
                    problems.append(f"{rel(path)}:{n}: {why}: {m.group(0)!r}")
            for m in REPO_PATH.finditer(line):
                problems += path_problem(path, n, m.group(1))
            for m in re.finditer(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", line):
                target, anchor = m.group(1), m.group(2)
                if re.match(r"[a-z]+:", target):
                    continue
                dest = (path.parent / target) if target else path
                if not dest.exists():
                    problems.append(f"{rel(path)}:{n}: the link {target} leads nowhere")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    problems.append(f"{rel(path)}:{n}: {target or rel(path)} has no heading #{anchor}")
    readme = (REPO / "README.md").read_text().splitlines()
    if len(readme) > README_MAX_LINES:
        problems.append(f"README.md: {len(readme)} lines, more than {README_MAX_LINES}")
    problems += rust_version_problems()
    problems += baseline_problems()
    return problems


def anchors(path):
    """The anchors GitHub gives a markdown file's headings."""
    found = set()
    for line in path.read_text().split("\n"):
        m = re.match(r"^#{1,6} (.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


def path_problem(path, n, token):
    """A repository path the doc cites that does not exist."""
    token = token.rstrip(".,:;)")
    if any(c in token for c in "<>*$") or "..." in token:
        return []
    candidates = [token]
    brace = re.match(r"(.*)\{([^}]*)\}(.*)", token)
    if brace:
        candidates = [brace.group(1) + alt + brace.group(3) for alt in brace.group(2).split(",")]
    missing = []
    for c in candidates:
        c = c.split(":")[0]
        bare = "/" not in c
        if bare:  # a file name alone: somewhere in the repository
            if not list(REPO.glob(f"**/{c}")) and not c.endswith(".md"):
                missing.append(c)
        elif not (REPO / c).exists():
            missing.append(c)
    return [f"{rel(path)}:{n}: cites {m}, which the repository does not have" for m in missing]


def rust_version_problems():
    cargo = (REPO / "Cargo.toml").read_text()
    want = re.search(r'^rust-version\s*=\s*"([^"]+)"', cargo, re.M).group(1)
    readme = (REPO / "README.md").read_text()
    said = re.findall(r"Rust (?:≥|>=) ?([0-9.]+)", readme)
    if not said:
        return [f"README.md: does not say which Rust it needs (Rust ≥ {want})"]
    return [f"README.md: says Rust ≥ {s}, Cargo.toml's rust-version is {want}" for s in said if s != want]


def baseline_problems():
    """PERFORMANCE.md's instruction counts are bench/instructions-baseline.json's."""
    import json

    doc = REPO / "docs" / "PERFORMANCE.md"
    if not doc.exists():
        return []
    base = json.loads((REPO / "bench" / "instructions-baseline.json").read_text())
    text = doc.read_text()
    problems = []
    for key, label in (
        ("b_on", "service-b `/call-echo`, telemetry on"),
        ("b_off", "service-b `/call-echo`, telemetry off"),
        ("a_on", "service-a `/echo`, telemetry on"),
        ("a_off", "service-a `/echo`, telemetry off"),
    ):
        m = re.search(r"^\| " + re.escape(label) + r" \| ([\d ]+) \|", text, re.M)
        if not m:
            problems.append(f"docs/PERFORMANCE.md: no row '| {label} | N |' in the instructions table")
        elif int(m.group(1).replace(" ", "")) != base[key]:
            problems.append(
                f"docs/PERFORMANCE.md: {label}: {m.group(1)}, the baseline (bench/instructions-baseline.json) says {base[key]}"
            )
    return problems


def settings_are_documented(session, result):
    """Every flag and variable --help lists is in docs/OPERATIONS.md's
    settings table, and the table names none that --help does not."""
    doc = (REPO / "docs" / "OPERATIONS.md").read_text()
    section = doc.split("\n## Settings\n")[1].split("\n## ")[0]
    table = "\n".join(line for line in section.split("\n") if line.startswith("| "))
    documented = set(re.findall(r"`(--[a-z-]+|[A-Z][A-Z0-9_]+)`", table))
    helped = set()
    for daemon in ("service-a", "service-b"):
        out, status = session.run(f"target/release/{daemon} --help")
        if status != 0:
            result.fail("docs/OPERATIONS.md", f"{daemon} --help: exit status {status}")
            continue
        flags = set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z-]+)", out, re.M)) - {"--help", "--version"}
        envs = set(re.findall(r"\[env: ([A-Z0-9_]+)=", out))
        helped |= flags | envs
        for name in sorted((flags | envs) - documented):
            result.fail("docs/OPERATIONS.md", f"{daemon} --help lists {name}; the settings table does not")
    for name in sorted(documented - helped):
        if name.startswith(("--", "SERVICE_A_", "SERVICE_B_")):
            result.fail("docs/OPERATIONS.md", f"the settings table names {name}; neither daemon's --help does")


# --- Main ---------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lint", action="store_true", help="only the checks that run nothing")
    ap.add_argument("--list", action="store_true", help="list the shell blocks and where each runs")
    ap.add_argument("--phase", choices=PHASES)
    ap.add_argument("--nsenter", type=int, metavar="PID", help="for vm and stack: the container's init")
    ap.add_argument("--only", metavar="FILE[:LINE]", help="only the blocks whose place starts with this")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per command (60)")
    ap.add_argument("--show", action="store_true", help="print what each command printed")
    args = ap.parse_args()
    global SHOW
    SHOW = args.show

    if args.list:
        for path in doc_files():
            for block in parse(path):
                if block.lang in SHELL_LANGS or block.mark:
                    where = block.phase or ("not run: " + (block.reason or "?") if block.mode == "skip" else "UNMARKED")
                    extra = {"background": " (in the background)", "output": f" (output of {block.of})"}.get(block.mode, "")
                    print(f"{block.where():32} {where}{extra}")
        return 0

    problems = lint()
    for p in problems:
        print(f"FAIL  {p}")
    if args.lint or not args.phase:
        print(f"docs-test: {'lint: ' + str(len(problems)) + ' problem(s)' if problems else 'lint: ok'}")
        return 1 if problems else 0
    if problems:
        return 1

    t0 = time.monotonic()
    if args.phase == "local":
        session = local_session()
    else:
        if not args.nsenter:
            ap.error(f"--phase {args.phase} runs in a container: deploy/tests/docs.sh {args.phase}")
        session = container_session(args.nsenter)
    try:
        result = run_phase(args.phase, session, args.only, args.timeout)
    finally:
        session.close()
    took = time.monotonic() - t0
    if result.failures:
        print(f"docs-test: phase {args.phase}: {len(result.failures)} failure(s) in {result.blocks} blocks, {took:.0f} s")
        return 1
    print(f"docs-test: phase {args.phase}: {result.blocks} blocks, {result.commands} commands as the docs show them, {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
