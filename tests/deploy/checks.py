#!/usr/bin/env python3
"""Checks of ssegate's operations files: Dockerfile, Kubernetes manifests,
systemd unit, Grafana dashboard, Prometheus rules.

No Docker and no cluster: the image's final stage is rebuilt in a temporary
root by following the Dockerfile's COPY lines, and the binary is run there
(chrooted when we are root) with the image's and the pod's arguments,
environment and files. Prints one `ok - NAME`, `FAIL - NAME: WHY` or
`skip - NAME: WHY` line per check; tests/deploy/run.sh adds them up.

Usage: checks.py REPO_ROOT SSEGATE_BINARY [NAME-SUBSTRING]
"""
import base64
import http.client
import json
import os
import queue
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
BINARY = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else os.path.join(REPO, "ssegate"))
ONLY = sys.argv[3] if len(sys.argv) > 3 else ""

DOCKERFILE = os.path.join(REPO, "Dockerfile")
DOCKERIGNORE = os.path.join(REPO, ".dockerignore")
K8S_DIR = os.path.join(REPO, "deploy/kubernetes")
UNIT = os.path.join(REPO, "deploy/systemd/ssegate.service")
DASHBOARD = os.path.join(REPO, "deploy/grafana/ssegate.json")
ALERTS = os.path.join(REPO, "deploy/prometheus/alerts.yml")
ALERTS_TEST = os.path.join(REPO, "tests/deploy/alerts_test.yml")
PROMTOOL = os.environ.get("PROMTOOL", "promtool")

# The metric families ssegate exports (name: type). Dashboards and alerts
# may name only these (histograms with their _bucket/_sum/_count series).
FAMILIES = {
    "ssegate_requests_total": "counter",
    "ssegate_active_connections": "gauge",
    "ssegate_active_streams": "gauge",
    "ssegate_upstream_ttfb_seconds": "histogram",
    "ssegate_request_duration_seconds": "histogram",
    "ssegate_chunks_relayed_total": "counter",
    "ssegate_tokens_total": "counter",
    "ssegate_upstream_errors_total": "counter",
    "ssegate_retries_total": "counter",
    "ssegate_tls_handshakes_total": "counter",
    "ssegate_rate_limited_total": "counter",
    "ssegate_auth_failures_total": "counter",
    "ssegate_streams_resumed_total": "counter",
    "ssegate_config_reloads_total": "counter",
    "ssegate_build_info": "gauge",
    "ssegate_upstream_ejections_total": "counter",
}
# Announced families a binary may not export yet.
ANNOUNCED = {"ssegate_upstream_ejections_total"}
# Series Prometheus itself makes for every target.
SYNTHETIC = {"up"}

# Files that no package owns but a package's maintainer script generates.
GENERATED_BY = {"/etc/ssl/certs/ca-certificates.crt": "ca-certificates"}

SERVE_TIMEOUT = 10.0  # start-up, and any one request


class Skip(Exception):
    pass


CHECKS = []


def check(name):
    def register(fn):
        CHECKS.append((name, fn))
        return fn
    return register


def require(cond, why):
    if not cond:
        raise AssertionError(why)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def is_root():
    return os.geteuid() == 0


# ---- durations, as ssegate spells them ------------------------------------

def seconds(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", str(text).strip())
    require(m is not None, f"not a duration: {text!r}")
    n = float(m.group(1))
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


_help_cache = []


def help_text():
    if not _help_cache:
        require(os.access(BINARY, os.X_OK), f"{BINARY} is not built (make ssegate)")
        out = subprocess.run([BINARY, "--help"], capture_output=True, text=True, timeout=10)
        _help_cache.append(out.stdout + out.stderr)
    return _help_cache[0]


def flag_default(flag):
    m = re.search(r"^\s+" + re.escape(flag) + r"\s.*\(default ([^)]+)\)", help_text(), re.M)
    require(m is not None, f"ssegate --help gives no default for {flag}")
    return m.group(1)


def flag_value(args, flag):
    """The value of --flag in an argument list (--flag V or --flag=V), or None."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a[len(flag) + 1:]
    return None


def with_flag(args, flag, value):
    out = list(args)
    for i, a in enumerate(out):
        if a == flag and i + 1 < len(out):
            out[i + 1] = value
            return out
        if a.startswith(flag + "="):
            out[i] = flag + "=" + value
            return out
    return out + [flag, value]


# ---- Dockerfile ------------------------------------------------------------

def dockerfile_stages():
    """[{base, name, instrs: [(INSTR, argtext)]}] from the Dockerfile."""
    logical, cur = [], ""
    for raw in read(DOCKERFILE).splitlines():
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if cur and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        logical.append(cur + line)
        cur = ""
    require(not cur, "the Dockerfile ends inside a continued line")
    stages = []
    for text in logical:
        instr, _, rest = text.partition(" ")
        instr = instr.upper()
        rest = rest.strip()
        if instr == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append({"base": words[0], "name": name, "instrs": []})
            continue
        require(stages, f"{instr} before any FROM")
        stages[-1]["instrs"].append((instr, rest))
    return stages


def exec_form(text):
    require(text.startswith("["), f"not in exec (JSON) form: {text}")
    v = json.loads(text)
    require(isinstance(v, list) and all(isinstance(x, str) for x in v), f"not a list of strings: {text}")
    return v


def copy_spec(text):
    """(flags dict, sources, dest) of a COPY instruction."""
    words = shlex.split(text)
    flags = {}
    while words and words[0].startswith("--"):
        k, _, v = words.pop(0)[2:].partition("=")
        flags[k] = v
    rest = " ".join(shlex.quote(w) for w in words)
    if rest.startswith("["):
        words = exec_form(rest)
    require(len(words) >= 2, f"COPY needs a source and a destination: {text}")
    return flags, words[:-1], words[-1]


def env_pairs(text):
    words = shlex.split(text)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}  # legacy ENV key value
    return dict(w.split("=", 1) for w in words)


def final_stage():
    return dockerfile_stages()[-1]


def build_stage(name):
    for s in dockerfile_stages():
        if s["name"] == name:
            return s
    raise AssertionError(f"no stage named {name!r}")


def instrs(stage, kind):
    return [rest for instr, rest in stage["instrs"] if instr == kind]


def image_user():
    users = instrs(final_stage(), "USER")
    require(users, "the final stage has no USER")
    m = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    require(m is not None, f"USER {users[-1]} is not numeric (runAsNonRoot cannot verify a name)")
    uid = int(m.group(1))
    gid = int(m.group(2) if m.group(2) else m.group(1))
    return uid, gid


def image_env():
    env = {}
    for text in instrs(final_stage(), "ENV"):
        env.update(env_pairs(text))
    return env


def image_command():
    st = final_stage()
    ep = instrs(st, "ENTRYPOINT")
    cmd = instrs(st, "CMD")
    require(ep, "no ENTRYPOINT")
    return exec_form(ep[-1]), exec_form(cmd[-1]) if cmd else []


def dockerignore_patterns():
    pats = []
    for line in read(DOCKERIGNORE).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        p = line[1:] if neg else line
        p = os.path.normpath(p.strip("/"))
        rx = ""
        i = 0
        while i < len(p):
            if p.startswith("**", i):
                rx += ".*"
                i += 2
                if p.startswith("/", i):
                    rx = rx[:-2] + "(?:.*/)?"
                    i += 1
            elif p[i] == "*":
                rx += "[^/]*"
                i += 1
            elif p[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(p[i])
                i += 1
        pats.append((neg, re.compile(rx + r"\Z"), line))
    return pats


def dockerignored(path):
    """True when the build context leaves out path (relative to the repo)."""
    parts = os.path.normpath(path).split("/")
    excluded = False
    for neg, rx, _ in dockerignore_patterns():
        for n in range(1, len(parts) + 1):
            if rx.match("/".join(parts[:n])):
                excluded = not neg
                break
    return excluded


@check("dockerfile: a Debian bookworm build stage and a scratch final stage")
def _():
    stages = dockerfile_stages()
    require(len(stages) >= 2, f"{len(stages)} stage(s); want a build stage and a final one")
    build = stages[0]
    require(re.fullmatch(r"debian:bookworm(-slim)?(@sha256:[0-9a-f]{64})?", build["base"]) is not None,
            f"build stage is FROM {build['base']}, not debian:bookworm")
    require(build["name"], "the build stage has no name (FROM ... AS build)")
    require(stages[-1]["base"] == "scratch", f"final stage is FROM {stages[-1]['base']}")


@check("dockerfile: the build stage installs the toolchain and runs make ssegate")
def _():
    build = dockerfile_stages()[0]
    runs = " && ".join(instrs(build, "RUN"))
    m = re.search(r"apt-get install ([^&|;]*)", runs)
    require(m is not None, "no apt-get install in the build stage")
    pkgs = set(w for w in m.group(1).split() if not w.startswith("-"))
    for pkg in ("gcc", "make", "libc6-dev", "ca-certificates"):
        require(pkg in pkgs, f"apt-get install lacks {pkg}")
    require(re.search(r"\bmake\b[^&|;]*\bssegate\b", runs), "no RUN make ssegate")
    require(re.search(r"INTERP", runs), "the build does not check that the binary is static")


@check("dockerfile: the final stage runs nothing (no RUN, ADD or HEALTHCHECK)")
def _():
    st = final_stage()
    allowed = {"COPY", "USER", "EXPOSE", "ENV", "ENTRYPOINT", "CMD", "LABEL", "STOPSIGNAL", "WORKDIR", "ARG"}
    for instr, rest in st["instrs"]:
        require(instr in allowed, f"{instr} {rest} in a scratch stage (no shell there)")
    for instr, rest in st["instrs"]:
        if instr == "COPY":
            flags, _, _ = copy_spec(rest)
            if "from" in flags:
                require(flags["from"] == dockerfile_stages()[0]["name"],
                        f"COPY --from={flags['from']}: not the build stage")


@check("dockerfile: the final stage gets the binary, the CA bundle, passwd and group")
def _():
    dests = {}
    for text in instrs(final_stage(), "COPY"):
        flags, srcs, dest = copy_spec(text)
        for s in srcs:
            d = os.path.join(dest, os.path.basename(s)) if dest.endswith("/") or len(srcs) > 1 else dest
            dests[d] = (flags.get("from"), s)
    ep, _ = image_command()
    require(ep[0] in dests and dests[ep[0]][0], f"ENTRYPOINT {ep[0]} is not copied from the build stage")
    ca = flag_default("--ca-file")
    require(ca in dests, f"nothing is copied to {ca} (ssegate's default --ca-file)")
    require(dests[ca] == (dockerfile_stages()[0]["name"], ca), f"{ca} does not come from the build stage's {ca}")
    for f in ("/etc/passwd", "/etc/group"):
        require(f in dests, f"nothing is copied to {f}")


@check("dockerfile: USER is a numeric non-root uid:gid listed in passwd and group")
def _():
    uid, gid = image_user()
    require(uid != 0 and gid != 0, f"USER {uid}:{gid} is root")
    passwd = read(os.path.join(REPO, "deploy/docker/passwd"))
    group = read(os.path.join(REPO, "deploy/docker/group"))
    users = [l.split(":") for l in passwd.splitlines() if l]
    groups = [l.split(":") for l in group.splitlines() if l]
    require(all(len(u) == 7 for u in users), "passwd lines need 7 fields")
    require(all(len(g) == 4 for g in groups), "group lines need 4 fields")
    mine = [u for u in users if u[2] == str(uid)]
    require(mine and mine[0][3] == str(gid), f"no passwd entry {uid} with group {gid}")
    require(any(g[2] == str(gid) for g in groups), f"no group {gid}")
    require(mine[0][6] in ("/sbin/nologin", "/usr/sbin/nologin", "/bin/false"), "the user has a login shell")


@check("dockerfile: listens on 0.0.0.0:8080 with client auth, exec-form ENTRYPOINT and CMD")
def _():
    ep, cmd = image_command()
    require(ep == ["/ssegate"], f"ENTRYPOINT {ep}")
    listen = flag_value(cmd, "--listen")
    require(listen == "0.0.0.0:8080", f"CMD --listen is {listen}")
    require(image_env().get("SSEGATE_LISTEN") == "0.0.0.0:8080", "ENV SSEGATE_LISTEN is not 0.0.0.0:8080")
    require(flag_value(cmd, "--keys-file") or "--allow-anonymous" in cmd,
            "CMD has neither --keys-file nor --allow-anonymous: ssegate refuses 0.0.0.0 without client auth")
    require(instrs(final_stage(), "EXPOSE") == ["8080"], f"EXPOSE {instrs(final_stage(), 'EXPOSE')}")


@check("dockerignore: leaves out build output, fetched deps, node_modules and .git, keeps the sources")
def _():
    for p in ("build/obj/main.o", "third_party/include/bearssl.h", "third_party/lib/libbearssl.a",
              "tests/sdk/node_modules/openai/package.json", ".git/HEAD", "ssegate"):
        require(dockerignored(p), f".dockerignore does not exclude {p}")
    for p in ("Makefile", "src/main.c", "src/core/wbuf.c", "third_party/fetch.sh", "deploy/docker/passwd"):
        require(not dockerignored(p), f".dockerignore excludes {p}, which the build needs")


@check("dockerfile: every COPY from the context names a file there that .dockerignore keeps")
def _():
    n = 0
    for st in dockerfile_stages():
        for text in instrs(st, "COPY"):
            flags, srcs, _ = copy_spec(text)
            if "from" in flags:
                continue
            for s in srcs:
                n += 1
                require(os.path.exists(os.path.join(REPO, s)), f"COPY {s}: not in the repository")
                require(not dockerignored(s.rstrip("/")), f"COPY {s}: excluded by .dockerignore")
    require(n > 0, "no COPY from the context")


def copy_like_docker(src, name, count, dest, context):
    """COPY's rules: a directory's contents go into dest; a file goes to
    dest, or into it when dest ends with '/' or there are several sources.
    From the build context, what .dockerignore excludes is left out."""
    if os.path.isdir(src):
        def ignore(d, names):
            if not context:
                return []
            return [n for n in names if dockerignored(os.path.relpath(os.path.join(d, n), REPO))]
        shutil.copytree(src, dest, dirs_exist_ok=True, ignore=ignore)
        return
    if dest.endswith("/") or count > 1:
        dest = os.path.join(dest, os.path.basename(name))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copy2(src, dest)


@check("dockerfile: the build stage's COPY lines bring all that `make ssegate` needs")
def _():
    build = dockerfile_stages()[0]
    tmp = tempfile.mkdtemp(prefix="ssegate-build.")
    try:
        workdir = "/"
        for instr, rest in build["instrs"]:
            if instr == "WORKDIR":
                workdir = os.path.join(workdir, rest)
            if instr != "COPY":
                continue
            flags, srcs, dest = copy_spec(rest)
            require("from" not in flags, f"COPY --from in the build stage: {rest}")
            at = os.path.normpath(os.path.join(workdir, dest))
            require(at == workdir or at.startswith(workdir.rstrip("/") + "/"), f"COPY to {at}, outside WORKDIR")
            # WORKDIR is tmp; the trailing '/' of dest matters to COPY.
            where = os.path.join(tmp, os.path.relpath(at, workdir)) + ("/" if dest.endswith("/") else "")
            for s in srcs:
                copy_like_docker(os.path.join(REPO, s), s, len(srcs), where, context=True)
        # `make deps` would download the pinned .debs; the checkout's copy
        # of what it unpacks stands in for it, so this needs no network.
        for d in ("third_party/include", "third_party/lib"):
            require(os.path.isdir(os.path.join(REPO, d)), f"{d} missing: run `make deps` first")
            shutil.copytree(os.path.join(REPO, d), os.path.join(tmp, d), dirs_exist_ok=True)
        env = dict(os.environ, MAKEFLAGS=f"-j{os.cpu_count() or 2}")
        out = subprocess.run(["make", "ssegate"], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
        require(out.returncode == 0, "make ssegate failed in the build context: " + out.stderr.strip()[-600:])
        built = os.path.join(tmp, "ssegate")
        require(not elf_interp(built), "the binary built from the context is not static")
        out = subprocess.run([built, "--help"], capture_output=True, text=True, timeout=10)
        require(out.returncode == 0, f"the binary built from the context: --help exited {out.returncode}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- the final image, rebuilt in a temporary root -------------------------

def stage_path(stage, path):
    """Where a path of a build stage's filesystem is on this machine."""
    workdir = "/"
    for instr, rest in stage["instrs"]:
        if instr == "WORKDIR":
            workdir = os.path.join(workdir, rest)
    path = os.path.normpath(os.path.join(workdir, path))
    if path == workdir or path.startswith(workdir.rstrip("/") + "/"):
        rel = os.path.relpath(path, workdir)
        # The build runs `make ssegate` in WORKDIR, a copy of this checkout.
        return BINARY if rel == "ssegate" else os.path.join(REPO, rel)
    runs = " ".join(instrs(stage, "RUN"))
    pkg = GENERATED_BY.get(path)
    if pkg is None:
        out = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True, timeout=30)
        require(out.returncode == 0, f"{path}: no Debian package ships it here")
        pkg = out.stdout.split(":")[0]
    require(re.search(r"apt-get install[^&|;]*\b" + re.escape(pkg) + r"\b", runs),
            f"{path} comes from {pkg}, which the build stage does not install")
    return path


def rebuild_root(root):
    """Performs the final stage's COPY lines into root; returns what was copied."""
    stages = dockerfile_stages()
    by_name = {s["name"]: s for s in stages if s["name"]}
    placed = []
    for text in instrs(stages[-1], "COPY"):
        flags, srcs, dest = copy_spec(text)
        for s in srcs:
            src = stage_path(by_name[flags["from"]], s) if "from" in flags else os.path.join(REPO, s)
            require(os.path.exists(src), f"COPY source {s} ({src}) does not exist")
            target = os.path.join(dest, os.path.basename(s)) if dest.endswith("/") or len(srcs) > 1 else dest
            copy_like_docker(src, s, len(srcs), os.path.join(root, dest.lstrip("/")) + ("/" if dest.endswith("/") else ""),
                             context="from" not in flags)
            placed.append(target)
    # Docker creates directories 0755 and files keep their modes; make sure
    # the unprivileged user can traverse what we created under a 0700 mktemp.
    os.chmod(root, 0o755)
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
    return placed


_root_cache = []


def image_root():
    if not _root_cache:
        root = tempfile.mkdtemp(prefix="ssegate-image.")
        try:
            _root_cache.append((root, rebuild_root(root)))
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
    return _root_cache[0]


def elf_interp(path):
    """True if the ELF file at path asks for a program interpreter."""
    with open(path, "rb") as f:
        head = f.read(64)
        require(head[:4] == b"\x7fELF", f"{path} is not ELF")
        bits64 = head[4] == 2
        end = "<" if head[5] == 1 else ">"
        if bits64:
            phoff, = struct.unpack_from(end + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 54)
        else:
            phoff, = struct.unpack_from(end + "I", head, 28)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 42)
        require(0 < phnum < 256, f"{path}: {phnum} program headers")
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, = struct.unpack(end + "I", f.read(4))
            if p_type == 3:  # PT_INTERP
                return True
    return False


@check("image root: the COPY lines place the binary, CA bundle, passwd and group")
def _():
    root, placed = image_root()
    ep, _ = image_command()
    require(ep[0] in placed, f"{ep[0]} not placed (placed: {placed})")
    binary = os.path.join(root, ep[0].lstrip("/"))
    require(os.path.isfile(binary) and os.stat(binary).st_mode & 0o111, f"{ep[0]} is not an executable file")
    ca = os.path.join(root, flag_default("--ca-file").lstrip("/"))
    text = read(ca)
    require(text.count("BEGIN CERTIFICATE") >= 10, f"{ca}: {text.count('BEGIN CERTIFICATE')} certificates")
    uid, gid = image_user()
    passwd = read(os.path.join(root, "etc/passwd"))
    group = read(os.path.join(root, "etc/group"))
    require(re.search(rf"^[^:]+:x:{uid}:{gid}:", passwd, re.M), f"/etc/passwd has no {uid}:{gid}")
    require(re.search(rf"^[^:]+:x:{gid}:", group, re.M), f"/etc/group has no {gid}")
    extra = [p for p in placed if p not in (ep[0], flag_default("--ca-file"), "/etc/passwd", "/etc/group")]
    require(not extra, f"the image gets more than it needs: {extra}")


@check("image root: the binary is static (no program interpreter)")
def _():
    root, _ = image_root()
    ep, _ = image_command()
    require(not elf_interp(os.path.join(root, ep[0].lstrip("/"))), f"{ep[0]} has PT_INTERP: it needs a loader")


@check("image root: the binary runs from the root (--help)")
def _():
    root, _ = image_root()
    ep, _ = image_command()
    out = subprocess.run([os.path.join(root, ep[0].lstrip("/")), "--help"], capture_output=True, text=True, timeout=10)
    require(out.returncode == 0, f"--help exited {out.returncode}")
    require("usage: ssegate" in out.stdout + out.stderr, "--help printed no usage")


def need_chroot():
    if not is_root():
        raise Skip("needs root for chroot")
    if shutil.which("chroot") is None:
        raise Skip("no chroot")


@check("image root: chroot ROOT /ssegate --help as the image's user")
def _():
    need_chroot()
    root, _ = image_root()
    uid, gid = image_user()
    ep, _ = image_command()
    out = subprocess.run(["chroot", f"--userspec={uid}:{gid}", root] + ep + ["--help"],
                         capture_output=True, text=True, timeout=10)
    require(out.returncode == 0, f"exited {out.returncode}: {out.stderr.strip()[:300]}")
    require("usage: ssegate" in out.stdout + out.stderr, "--help printed no usage")


class Served:
    """ssegate started on 127.0.0.1:0; its stderr collected line by line."""

    def __init__(self, argv, env, root=None, user=None):
        cmd = list(argv)
        if root:
            # Absolute: env's PATH is the image's, not this machine's.
            cmd = [shutil.which("chroot"), f"--userspec={user[0]}:{user[1]}", root] + cmd
        self.lines = []
        self._q = queue.Queue()
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.address = None
        deadline = time.monotonic() + SERVE_TIMEOUT
        while self.address is None and time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line is None:
                break
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "listen" in rec:
                self.address = rec["listen"]
        if self.address is None:
            self.stop()
            raise AssertionError("ssegate did not start: " + " | ".join(self.lines)[-600:])

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._q.put(line)
        self._q.put(None)

    def request(self, method, path, headers=None, body=None):
        host, port = self.address.rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=SERVE_TIMEOUT)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read().decode("utf-8", "replace")
        finally:
            c.close()

    def signal(self, signo):
        self.proc.send_signal(signo)

    def stop(self, timeout=SERVE_TIMEOUT):
        """SIGTERM; the exit status and seconds taken (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None, timeout
        finally:
            self._reader.join(timeout=2)  # the last lines, for messages
        return rc, time.monotonic() - t0


def base_env(extra):
    env = {"PATH": "/nonexistent"}  # scratch has no PATH worth the name
    env.update(extra)
    return env


def exercise(srv, key):
    """The endpoints orchestrators and clients rely on; key: a valid client key."""
    st, _ = srv.request("GET", "/healthz")
    require(st == 200, f"/healthz: {st}")
    st, _ = srv.request("GET", "/readyz")
    require(st == 200, f"/readyz: {st}")
    st, body = srv.request("GET", "/metrics")
    require(st == 200 and "# TYPE ssegate_build_info gauge" in body, f"/metrics: {st}")
    chat = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    st, _ = srv.request("POST", "/v1/chat/completions", {"Content-Type": "application/json"}, chat)
    require(st == 401, f"a request without a key got {st}, not 401")
    st, _ = srv.request("POST", "/v1/chat/completions",
                        {"Content-Type": "application/json", "Authorization": "Bearer not-a-key"}, chat)
    require(st == 401, f"a request with a wrong key got {st}, not 401")
    # The upstream names resolve to 127.0.0.1, where nothing serves TLS: a
    # key that is accepted gets a gateway error, not 401.
    st, _ = srv.request("POST", "/v1/chat/completions",
                        {"Content-Type": "application/json", "Authorization": "Bearer " + key}, chat)
    require(500 <= st <= 504, f"a request with a valid key got {st}; want the upstream's 5xx")
    return body


def hosts_file(names):
    return "127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {n}\n" for n in sorted(names))


def stop_cleanly(srv, limit):
    rc, took = srv.stop(timeout=limit + 5)
    require(rc == 0, f"SIGTERM: exit status {rc} after {took:.1f}s (want 0 within {limit:.0f}s)")
    require(took <= limit, f"SIGTERM: took {took:.1f}s, more than {limit:.0f}s")
    require(any('"draining"' in l for l in srv.lines), "no 'draining' log line after SIGTERM")


@check("image root: the image's ENTRYPOINT, CMD and ENV serve in the empty root")
def _():
    need_chroot()
    root, _ = image_root()
    run = tempfile.mkdtemp(prefix="ssegate-run.")
    try:
        shutil.copytree(root, run, dirs_exist_ok=True, symlinks=True)
        os.chmod(run, 0o755)
        ep, cmd = image_command()
        keys_path = flag_value(cmd, "--keys-file")
        require(keys_path, "CMD has no --keys-file to put a test key in")
        # What `docker run -v keys:/etc/ssegate/keys:ro` and the runtime's
        # own /etc/hosts mount would provide.
        os.makedirs(os.path.join(run, os.path.dirname(keys_path).lstrip("/")), exist_ok=True)
        with open(os.path.join(run, keys_path.lstrip("/")), "w") as f:
            f.write("test-client-key-0123456789 tester 600 - -\n")
        with open(os.path.join(run, "etc/hosts"), "w") as f:
            f.write(hosts_file(["api.openai.com"]))
        env = base_env(image_env())
        env["OPENAI_API_KEY"] = "test-upstream-key"
        args = with_flag(cmd, "--listen", "127.0.0.1:0")
        srv = Served(ep + args, env, root=run, user=image_user())
        try:
            exercise(srv, "test-client-key-0123456789")
            for line in srv.lines:
                require(line.startswith("{") and json.loads(line), f"not a JSON log line: {line}")
        finally:
            limit = seconds(flag_value(cmd, "--drain-timeout") or flag_default("--drain-timeout"))
            stop_cleanly(srv, limit)
    finally:
        shutil.rmtree(run, ignore_errors=True)


@check("image root: the binary exports every metric family the dashboard and alerts use")
def _():
    srv = Served([BINARY, "--listen", "127.0.0.1:0"], base_env({}))
    try:
        st, body = srv.request("GET", "/metrics")
    finally:
        srv.stop()
    require(st == 200, f"/metrics: {st}")
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", body, re.M))
    for fam, kind in FAMILIES.items():
        if fam in ANNOUNCED and fam not in types:
            continue
        require(fam in types, f"{fam} is not on the /metrics page")
        require(types[fam] == kind, f"{fam} is a {types[fam]}, not a {kind}")


# ---- Kubernetes ------------------------------------------------------------

def yaml_module():
    try:
        import yaml
    except ImportError:
        raise AssertionError("PyYAML is missing (apt-get install python3-yaml)")
    return yaml


_k8s_cache = []


def k8s_docs():
    if not _k8s_cache:
        yaml = yaml_module()
        docs = []
        for name in sorted(os.listdir(K8S_DIR)):
            if name.endswith(".yaml") and name != "kustomization.yaml":
                with open(os.path.join(K8S_DIR, name), encoding="utf-8") as f:
                    for d in yaml.safe_load_all(f):
                        if d is not None:
                            d["__file"] = name
                            docs.append(d)
        _k8s_cache.append(docs)
    return _k8s_cache[0]


def k8s(kind, name=None):
    found = [d for d in k8s_docs() if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    require(found, f"no {kind}" + (f" named {name}" if name else ""))
    return found


def deployment():
    return k8s("Deployment")[0]


def container():
    cs = deployment()["spec"]["template"]["spec"]["containers"]
    require(len(cs) == 1, f"{len(cs)} containers; want ssegate alone")
    return cs[0]


def pod_drain_seconds():
    c = container()
    v = flag_value(c.get("args", []), "--drain-timeout")
    if v is None:
        v = next((e.get("value") for e in c.get("env", []) if e["name"] == "SSEGATE_DRAIN_TIMEOUT"), None)
    return seconds(v if v is not None else flag_default("--drain-timeout"))


def secret_data(name):
    s = k8s("Secret", name)[0]
    data = dict(s.get("stringData") or {})
    for k, v in (s.get("data") or {}).items():
        data[k] = base64.b64decode(v).decode()
    return data


def config_json():
    cm = k8s("ConfigMap", "ssegate-config")[0]
    require("config.json" in cm.get("data", {}), "ConfigMap ssegate-config has no config.json")
    try:
        return json.loads(cm["data"]["config.json"])
    except ValueError as e:
        raise AssertionError(f"config.json does not parse: {e}")


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


@check("k8s: kustomization lists every manifest; kinds and apiVersions are the expected ones")
def _():
    yaml = yaml_module()
    kz = yaml.safe_load(read(os.path.join(K8S_DIR, "kustomization.yaml")))
    files = sorted(n for n in os.listdir(K8S_DIR) if n.endswith(".yaml") and n != "kustomization.yaml")
    require(sorted(kz.get("resources", [])) == files, f"resources {kz.get('resources')} != files {files}")
    want = {"Deployment": "apps/v1", "Service": "v1", "ConfigMap": "v1", "Secret": "v1",
            "PodDisruptionBudget": "policy/v1", "HorizontalPodAutoscaler": "autoscaling/v2"}
    kinds = {}
    for d in k8s_docs():
        require(d.get("metadata", {}).get("name"), f"{d['__file']}: a {d.get('kind')} without a name")
        kinds.setdefault(d["kind"], set()).add(d["apiVersion"])
    for kind, api in want.items():
        require(kinds.get(kind) == {api}, f"{kind}: apiVersion {kinds.get(kind)}, want {api}")
    images = {i["name"] for i in kz.get("images", [])}
    require(container()["image"].split(":")[0] in images, "kustomization does not set the container's image")


@check("k8s: selectors of the Deployment, Service and PDB match the pod; the HPA targets the Deployment")
def _():
    dep = deployment()
    labels = dep["spec"]["template"]["metadata"]["labels"]
    require(dep["spec"]["replicas"] == 2, f"replicas {dep['spec']['replicas']}")
    require(selects(dep["spec"]["selector"]["matchLabels"], labels), "Deployment selector misses its pods")
    svc = k8s("Service")[0]
    require(selects(svc["spec"]["selector"], labels), "Service selector misses the pods")
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    for p in svc["spec"]["ports"]:
        require(p["targetPort"] in ports or p["targetPort"] in ports.values(), f"Service targetPort {p['targetPort']}")
    pdb = k8s("PodDisruptionBudget")[0]
    require(selects(pdb["spec"]["selector"]["matchLabels"], labels), "PDB selector misses the pods")
    hpa = k8s("HorizontalPodAutoscaler")[0]
    ref = hpa["spec"]["scaleTargetRef"]
    require(ref["kind"] == "Deployment" and ref["name"] == dep["metadata"]["name"], f"HPA targets {ref}")
    require(any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"]),
            "HPA does not scale on CPU")
    min_avail = pdb["spec"].get("minAvailable")
    require(isinstance(min_avail, int) and hpa["spec"]["minReplicas"] > min_avail,
            "the HPA's minimum leaves the PDB no pod to evict")


@check("k8s: startup, liveness (/healthz) and readiness (/readyz) probes on the container's port")
def _():
    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        require(probe in c, f"no {probe}")
        g = c[probe].get("httpGet")
        require(g and g["path"] == path, f"{probe} is not GET {path}")
        require(g["port"] in ports or g["port"] in ports.values(), f"{probe} port {g['port']} is not a container port")
    listen = flag_value(c["args"], "--listen")
    require(listen == "0.0.0.0:" + str(ports.get("http")), f"--listen {listen} vs containerPort {ports}")
    require(flag_value(c["args"], "--keys-file") or "--allow-anonymous" in c["args"],
            "0.0.0.0 without --keys-file or --allow-anonymous: ssegate refuses to start")


@check("k8s: preStop sleep action, and a grace period longer than sleep plus drain")
def _():
    c = container()
    pre = c.get("lifecycle", {}).get("preStop", {})
    require("exec" not in pre, "preStop exec needs a shell or sleep binary; the image has neither")
    require(pre.get("sleep", {}).get("seconds", 0) > 0, "no preStop sleep")
    grace = deployment()["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    need = pre["sleep"]["seconds"] + pod_drain_seconds()
    require(grace > need, f"terminationGracePeriodSeconds {grace} <= preStop {pre['sleep']['seconds']}s + drain")


@check("k8s: resource requests and limits, requests not above limits")
def _():
    def cpu(v):
        v = str(v)
        return float(v[:-1]) / 1000 if v.endswith("m") else float(v)

    def mem(v):
        m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(v))
        require(m is not None, f"memory {v}")
        return int(m.group(1)) * {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, None: 1}[m.group(2)]

    r = container().get("resources", {})
    for part in ("requests", "limits"):
        for res in ("cpu", "memory"):
            require(res in r.get(part, {}), f"no {part}.{res}")
    require(cpu(r["requests"]["cpu"]) <= cpu(r["limits"]["cpu"]), "cpu request above limit")
    require(mem(r["requests"]["memory"]) <= mem(r["limits"]["memory"]), "memory request above limit")


@check("k8s: non-root, read-only root, no privilege escalation, no capabilities, RuntimeDefault seccomp")
def _():
    pod = deployment()["spec"]["template"]["spec"]
    sc = container().get("securityContext", {})
    psc = pod.get("securityContext", {})
    require(sc.get("runAsNonRoot") or psc.get("runAsNonRoot"), "runAsNonRoot is not set")
    require(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem is not true")
    require(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is not false")
    require(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities do not drop ALL")
    seccomp = sc.get("seccompProfile") or psc.get("seccompProfile") or {}
    require(seccomp.get("type") == "RuntimeDefault", "seccompProfile is not RuntimeDefault")
    uid = sc.get("runAsUser", psc.get("runAsUser"))
    gid = sc.get("runAsGroup", psc.get("runAsGroup"))
    require((uid, gid) == image_user(), f"runs as {uid}:{gid}, the image's USER is {image_user()}")
    require(pod.get("automountServiceAccountToken") is False, "the service account token is mounted")
    require(pod.get("enableServiceLinks") is False,
            "service links are on: the Service 'ssegate' would inject SSEGATE_* variables")


@check("k8s: every Secret and ConfigMap reference resolves; Secret values are placeholders")
def _():
    c = container()
    pod = deployment()["spec"]["template"]["spec"]
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            require(ref["key"] in secret_data(ref["name"]), f"env {e['name']}: Secret {ref['name']} has no {ref['key']}")
    require(any(e["name"] == "OPENAI_API_KEY" and "secretKeyRef" in e.get("valueFrom", {}) for e in c["env"]),
            "OPENAI_API_KEY does not come from a Secret")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        require(m["name"] in vols, f"mount {m['name']} has no volume")
        require(m.get("readOnly") is True, f"mount {m['mountPath']} is writable")
        v = vols[m["name"]]
        if "configMap" in v:
            k8s("ConfigMap", v["configMap"]["name"])
        elif "secret" in v:
            k8s("Secret", v["secret"]["secretName"])
    for s in k8s("Secret"):
        for k, v in secret_data(s["metadata"]["name"]).items():
            require(not re.search(r"sk-[A-Za-z0-9_-]{20,}", v), f"Secret {s['metadata']['name']}/{k} looks like a real key")
            require("REPLACE-ME" in v, f"Secret {s['metadata']['name']}/{k} is not marked as a placeholder")


def pod_files():
    """{path in the container: content} for every mounted ConfigMap/Secret key."""
    c = container()
    pod = deployment()["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    files = {}
    for m in c.get("volumeMounts", []):
        v = vols[m["name"]]
        if "configMap" in v:
            data = k8s("ConfigMap", v["configMap"]["name"])[0].get("data", {})
            items = v["configMap"].get("items")
        else:
            data = secret_data(v["secret"]["secretName"])
            items = v["secret"].get("items")
        pairs = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
        for key, rel in pairs:
            files[os.path.join(m["mountPath"], rel)] = data[key]
    return files


def pod_env():
    env = {}
    for e in container().get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"].get("secretKeyRef") or e["valueFrom"].get("configMapKeyRef")
            src = secret_data(ref["name"]) if "secretKeyRef" in e["valueFrom"] else \
                k8s("ConfigMap", ref["name"])[0]["data"]
            env[e["name"]] = src[ref["key"]]
    return env


@check("k8s: the files the container is told to read are mounted")
def _():
    c = container()
    files = pod_files()
    keys = flag_value(c["args"], "--keys-file")
    require(keys in files, f"--keys-file {keys} is not a mounted key ({sorted(files)})")
    cfg = pod_env().get("SSEGATE_CONFIG") or flag_value(c["args"], "--config")
    require(cfg in files, f"config {cfg} is not a mounted key")


@check("k8s: the ConfigMap's config.json parses and its routes name its upstreams")
def _():
    cfg = config_json()
    ups = cfg.get("upstreams")
    require(isinstance(ups, list) and len(ups) >= 2, "want two upstreams or more")
    names = set()
    env = pod_env()
    for u in ups:
        for field, kind in (("name", str), ("url", str), ("key_env", str), ("weight", int), ("models", list),
                            ("max_conns", int)):
            require(isinstance(u.get(field), kind), f"upstream {u.get('name')}: {field} missing or not {kind.__name__}")
        require(u["name"] not in names, f"upstream {u['name']} twice")
        names.add(u["name"])
        require(re.match(r"https?://[^/]+", u["url"]), f"upstream {u['name']}: url {u['url']}")
        require(u["key_env"] in env, f"upstream {u['name']}: key_env {u['key_env']} is not in the container's env")
        require(u["weight"] > 0 and u["max_conns"] > 0, f"upstream {u['name']}: weight/max_conns not positive")
    routes = cfg.get("routes")
    require(isinstance(routes, dict) and "*" in routes, "routes need a '*' entry")
    for model, tiers in routes.items():
        require(isinstance(tiers, list) and tiers, f"route {model}: not a non-empty list")
        for tier in tiers:
            group = tier if isinstance(tier, list) else [tier]
            require(group and all(isinstance(n, str) for n in group), f"route {model}: tier {tier}")
            for n in group:
                require(n in names, f"route {model} names unknown upstream {n}")
    served = set(routes) | {m for u in ups for m in u["models"]}
    names = {u["name"] for u in cfg["upstreams"]}
    for alias, target in cfg.get("aliases", {}).items():
        require(isinstance(target, dict) and "model" in target, f"alias {alias}: want {{\"model\": ...}}")
        require(target["model"] in served, f"alias {alias} -> {target['model']}, which nothing serves")
        require(target.get("upstream", next(iter(names))) in names, f"alias {alias}: no upstream {target.get('upstream')}")
    require(set(cfg) <= {"upstreams", "routes", "aliases", "clients"}, f"unknown keys {set(cfg)}")


@check("k8s: the container as the Deployment runs it serves and drains in the emulated root")
def _():
    need_chroot()
    root, _ = image_root()
    run = tempfile.mkdtemp(prefix="ssegate-pod.")
    try:
        shutil.copytree(root, run, dirs_exist_ok=True, symlinks=True)
        for path, content in pod_files().items():
            where = os.path.join(run, path.lstrip("/"))
            os.makedirs(os.path.dirname(where), exist_ok=True)
            with open(where, "w") as f:
                f.write(content)
            os.chmod(where, 0o444)
        for dirpath, dirnames, _ in os.walk(run):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
        os.chmod(run, 0o755)
        hosts = {"api.openai.com"} | {re.match(r"https?://([^/:]+)", u["url"]).group(1)
                                      for u in config_json()["upstreams"]}
        with open(os.path.join(run, "etc/hosts"), "w") as f:
            f.write(hosts_file(hosts))
        ep, _ = image_command()
        c = container()
        argv = (c.get("command") or ep) + with_flag(c["args"], "--listen", "127.0.0.1:0")
        env = base_env(image_env())
        env.update(pod_env())
        keyfile = pod_files()[flag_value(c["args"], "--keys-file")]
        key = next(l.split()[0] for l in keyfile.splitlines() if l.strip() and not l.lstrip().startswith("#"))
        srv = Served(argv, env, root=run, user=image_user())
        try:
            exercise(srv, key)
        finally:
            stop_cleanly(srv, pod_drain_seconds())
    finally:
        shutil.rmtree(run, ignore_errors=True)


# ---- systemd ---------------------------------------------------------------

def unit_entries():
    entries, section = [], None
    for raw in read(UNIT).splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        k, _, v = line.partition("=")
        entries.append((section, k.strip(), v.strip()))
    return entries


def unit_values(key, section="Service"):
    return [v for s, k, v in unit_entries() if s == section and k == key]


def unit_exec_start():
    starts = unit_values("ExecStart")
    require(len(starts) == 1, f"{len(starts)} ExecStart lines")
    return shlex.split(starts[0])


@check("systemd: the hardening settings are there")
def _():
    want = {
        "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "RestrictNamespaces": "yes",
        "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "CapabilityBoundingSet": "",
        "AmbientCapabilities": "", "Restart": "on-failure", "LimitNOFILE": "65536",
        "EnvironmentFile": "-/etc/ssegate/ssegate.env",
    }
    for k, v in want.items():
        got = unit_values(k)
        require(got and got[-1] == v, f"{k}={got[-1] if got else '(unset)'}, want {k}={v}")
    require("@system-service" in unit_values("SystemCallFilter"), "SystemCallFilter lacks @system-service")


@check("systemd: secrets come as credentials, reload is SIGHUP, stop outlasts the drain")
def _():
    creds = dict(v.split(":", 1) for v in unit_values("LoadCredential"))
    argv = unit_exec_start()
    require(argv[0] == "/usr/local/bin/ssegate", f"ExecStart runs {argv[0]}")
    for flag in ("--upstream-key-file", "--keys-file"):
        v = flag_value(argv, flag)
        require(v and v.startswith("%d/"), f"{flag} {v} is not in the credentials directory (%d)")
        require(v[3:] in creds, f"{flag} {v}: no LoadCredential={v[3:]}:...")
    require(unit_values("ExecReload") == ["/bin/kill -HUP $MAINPID"], f"ExecReload {unit_values('ExecReload')}")
    drain = seconds(flag_value(argv, "--drain-timeout") or flag_default("--drain-timeout"))
    stop = unit_values("TimeoutStopSec")
    require(stop and seconds(stop[-1]) > drain, f"TimeoutStopSec {stop} is not above the {drain:.0f}s drain")
    for f in argv[1:]:
        if f.startswith("--"):
            require(re.search(r"^\s+" + re.escape(f.split("=")[0]) + r"\s", help_text(), re.M),
                    f"ExecStart uses {f}, which ssegate --help does not list")


def unit_for_this_machine(tmp):
    """The unit with ExecStart pointing at the binary under test."""
    text = read(UNIT).replace("ExecStart=/usr/local/bin/ssegate", "ExecStart=" + BINARY)
    path = os.path.join(tmp, "ssegate.service")
    with open(path, "w") as f:
        f.write(text)
    return path


def need_systemd_analyze():
    if shutil.which("systemd-analyze") is None:
        raise Skip("systemd-analyze is not installed")


@check("systemd: systemd-analyze verify")
def _():
    need_systemd_analyze()
    tmp = tempfile.mkdtemp(prefix="ssegate-unit.")
    try:
        out = subprocess.run(["systemd-analyze", "verify", "--man=no", unit_for_this_machine(tmp)],
                             capture_output=True, text=True, timeout=60)
        require(out.returncode == 0 and not out.stderr.strip(), (out.stdout + out.stderr).strip()[:500])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@check("systemd: systemd-analyze security rates the unit 2.0 or better")
def _():
    need_systemd_analyze()
    tmp = tempfile.mkdtemp(prefix="ssegate-unit.")
    try:
        out = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20",
                              unit_for_this_machine(tmp)], capture_output=True, text=True, timeout=60)
        m = re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout)
        require(m is not None, "no exposure level: " + (out.stdout + out.stderr).strip()[-300:])
        require(float(m.group(1)) <= 2.0 and out.returncode == 0, f"exposure {m.group(1)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@check("systemd: ExecStart with its credentials serves, survives ExecReload, stops on SIGTERM")
def _():
    creds = dict(v.split(":", 1) for v in unit_values("LoadCredential"))
    tmp = tempfile.mkdtemp(prefix="ssegate-creds.")
    try:
        content = {"keys": "test-client-key-0123456789 tester - - -\n", "openai-key": "test-upstream-key\n"}
        for name in creds:
            require(name in content, f"LoadCredential {name}: the test has no stand-in for it")
            with open(os.path.join(tmp, name), "w") as f:
                f.write(content[name])
        argv = [a.replace("%d", tmp) for a in unit_exec_start()]
        argv[0] = BINARY
        # What /etc/ssegate/ssegate.env would hold on a test machine. The
        # upstream host cannot be resolved through /etc/hosts without a
        # chroot, so it is an address here.
        env = base_env({"SSEGATE_LISTEN": "127.0.0.1:0", "OPENAI_BASE_URL": "https://127.0.0.1:9/v1"})
        srv = Served(argv, env)
        try:
            exercise(srv, "test-client-key-0123456789")
            # ExecReload: $MAINPID gets SIGHUP and keeps serving.
            srv.signal(signal.SIGHUP)
            time.sleep(0.3)
            require(srv.proc.poll() is None, f"SIGHUP ended the process (status {srv.proc.returncode})")
            st, _ = srv.request("GET", "/healthz")
            require(st == 200, f"/healthz after SIGHUP: {st}")
        finally:
            stop_cleanly(srv, seconds(unit_values("TimeoutStopSec")[-1]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- PromQL: which metric names an expression uses ------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                "bool", "offset", "inf", "nan", "atan2"}


def promql_metrics(expr):
    """Metric names an expression selects (not functions, labels or keywords)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*|\d+(?:\.\d+)?(?:e[+-]?\d+)?[a-z]*|\$\w+", e):
        tok = m.group(0)
        if tok[0].isdigit() or tok.startswith("$") or tok.lower() in PROMQL_WORDS:
            continue
        if re.match(r"\s*\(", e[m.end():]):
            continue  # a function call
        names.add(tok)
    return names


def family_of(name):
    if name in FAMILIES:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and FAMILIES.get(base) == "histogram":
            return base
    return None


def promql_valid(exprs):
    """promtool's verdict on expressions (Grafana variables given values)."""
    yaml = yaml_module()
    rules = []
    for i, e in enumerate(exprs):
        e = e.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
        e = re.sub(r"\$\{?(\w+)\}?", "x", e)
        rules.append({"record": f"dashboard:query_{i}", "expr": e})
    fd, path = tempfile.mkstemp(suffix=".yml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    try:
        out = subprocess.run([PROMTOOL, "check", "rules", path], capture_output=True, text=True, timeout=60)
        return out.returncode == 0, (out.stdout + out.stderr).strip()
    finally:
        os.unlink(path)


def need_promtool():
    require(shutil.which(PROMTOOL) is not None, f"{PROMTOOL} not found (apt-get install prometheus)")


# ---- Grafana ---------------------------------------------------------------

def dashboard():
    try:
        return json.loads(read(DASHBOARD))
    except ValueError as e:
        raise AssertionError(f"{DASHBOARD} does not parse: {e}")


def panels(d):
    for p in d.get("panels", []):
        yield p
        yield from p.get("panels", [])  # inside collapsed rows


def dashboard_exprs(d):
    out = []
    for p in panels(d):
        for t in p.get("targets", []):
            out.append((p.get("title", "?"), t.get("expr", "")))
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q.strip())
            out.append(("$" + v["name"], m.group(1) if m else q))
    return out


@check("grafana: the dashboard parses, with a Prometheus data source variable used by every panel")
def _():
    d = dashboard()
    require(d.get("uid") and d.get("title"), "no uid or title")
    require(isinstance(d.get("schemaVersion"), int) and d["schemaVersion"] >= 36, f"schemaVersion {d.get('schemaVersion')}")
    vars_ = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = [n for n, v in vars_.items() if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    require(ds, "no Prometheus data source variable")
    ref = "${" + ds[0] + "}"
    for p in panels(d):
        if p.get("type") == "row":
            continue
        require(p.get("datasource", {}).get("uid") == ref, f"panel {p.get('title')}: data source is not {ref}")
        require(p.get("targets"), f"panel {p.get('title')}: no queries")
        for t in p["targets"]:
            require(t.get("datasource", {}).get("uid", ref) == ref, f"panel {p.get('title')}: a query's data source")
            require(t.get("expr"), f"panel {p.get('title')}: an empty query")


@check("grafana: every query names only ssegate's metric families")
def _():
    for title, expr in dashboard_exprs(dashboard()):
        names = promql_metrics(expr)
        require(names, f"{title}: names no metric: {expr}")
        for n in names:
            require(family_of(n), f"{title}: {n} is not an ssegate metric family")


@check("grafana: every query is valid PromQL (promtool)")
def _():
    need_promtool()
    ok, out = promql_valid([e for _, e in dashboard_exprs(dashboard())])
    require(ok, out[-600:])


@check("grafana: every metric family has a panel, and the panels the brief asks for are there")
def _():
    d = dashboard()
    used = set()
    for _, expr in dashboard_exprs(d):
        used |= {family_of(n) for n in promql_metrics(expr)}
    missing = set(FAMILIES) - used
    require(not missing, f"no panel shows {sorted(missing)}")
    exprs = " ".join(e for _, e in dashboard_exprs(d))
    for needle in ("histogram_quantile(0.5, sum by (le, upstream) (rate(ssegate_upstream_ttfb_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le, upstream) (rate(ssegate_upstream_ttfb_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le, route) (rate(ssegate_request_duration_seconds_bucket",
                   "topk(", "sum by (client, limit)", "sum by (reason)", "sum by (kind)", "sum by (route, status)"):
        require(needle in exprs, f"no query with {needle}")


@check("grafana: panel ids are unique and panels do not overlap on the 24-column grid")
def _():
    seen, boxes = set(), []
    for p in panels(dashboard()):
        require(p["id"] not in seen, f"panel id {p['id']} twice")
        seen.add(p["id"])
        g = p["gridPos"]
        require(0 <= g["x"] and g["x"] + g["w"] <= 24, f"panel {p['title']} is off the grid")
        for q, h in boxes:
            if g["x"] < h["x"] + h["w"] and h["x"] < g["x"] + g["w"] and g["y"] < h["y"] + h["h"] and h["y"] < g["y"] + g["h"]:
                raise AssertionError(f"panels {q} and {p['title']} overlap")
        boxes.append((p["title"], g))


# ---- Prometheus rules ------------------------------------------------------

def alert_rules():
    yaml = yaml_module()
    doc = yaml.safe_load(read(ALERTS))
    groups = {g["name"]: g for g in doc["groups"]}
    require("ssegate" in groups, "no rule group named ssegate")
    return groups["ssegate"]["rules"]


@check("prometheus: promtool check rules")
def _():
    need_promtool()
    out = subprocess.run([PROMTOOL, "check", "rules", ALERTS], capture_output=True, text=True, timeout=60)
    require(out.returncode == 0, (out.stdout + out.stderr).strip()[-600:])


@check("prometheus: promtool test rules (synthetic series)")
def _():
    need_promtool()
    out = subprocess.run([PROMTOOL, "test", "rules", ALERTS_TEST], capture_output=True, text=True, timeout=120)
    require(out.returncode == 0, (out.stdout + out.stderr).strip()[-1500:])


@check("prometheus: each alert has a severity, a summary and a description, and names known metrics")
def _():
    rules = alert_rules()
    for r in rules:
        require("alert" in r, f"a recording rule in the alert group: {r}")
        require(r.get("labels", {}).get("severity") in ("critical", "warning", "info"), f"{r['alert']}: severity")
        for a in ("summary", "description"):
            require(r.get("annotations", {}).get(a), f"{r['alert']}: no {a}")
        names = promql_metrics(r["expr"])
        require(names, f"{r['alert']}: names no metric")
        for n in names:
            require(family_of(n) or n in SYNTHETIC, f"{r['alert']}: {n} is not an ssegate metric family")
    exprs = {r["alert"]: r["expr"] for r in rules}
    for needle in ("ssegate_upstream_ejections_total", "ssegate_upstream_ttfb_seconds_bucket",
                   "ssegate_rate_limited_total", "ssegate_auth_failures_total", "resets(", "up{"):
        require(any(needle in e for e in exprs.values()), f"no alert on {needle}")
    require(any(re.search(r'status=~"5\.\."', e) and "0.05" in e for e in exprs.values()), "no 5xx ratio alert")


@check("prometheus: every alert fires in at least one unit test")
def _():
    yaml = yaml_module()
    tests = yaml.safe_load(read(ALERTS_TEST))
    fired = set()
    for t in tests["tests"]:
        for a in t.get("alert_rule_test", []):
            if a.get("exp_alerts"):
                fired.add(a["alertname"])
    untested = {r["alert"] for r in alert_rules()} - fired
    require(not untested, f"no test makes these fire: {sorted(untested)}")


def main():
    rc = 0
    try:
        for name, fn in CHECKS:
            if ONLY and ONLY not in name:
                continue
            try:
                fn()
                print(f"ok - {name}", flush=True)
            except Skip as e:
                print(f"skip - {name}: {e}", flush=True)
            except Exception as e:  # a broken check is a failed one
                msg = str(e) if isinstance(e, AssertionError) else f"{type(e).__name__}: {e}"
                print(f"FAIL - {name}: {msg}", flush=True)
                rc = 1
    finally:
        for root, _ in _root_cache:
            shutil.rmtree(root, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
