"""The Debian package and its systemd unit.

Fast checks (any machine): the shipped config documents every key and passes check-config, the
unit parses cleanly and scores ≤ 2.0 on ``systemd-analyze security``, the build refuses bad input.

The slow test (root, dpkg-deb, on a disposable machine: it installs into the real system):
build the .deb, inspect it, install it with dpkg, run guaita the way the unit runs it — as the
``guaita`` user, no new privileges, W^X enforced, a read-only root with only /var/lib/guaita
writable, hidden /proc, private /tmp — under strace, and check every system call against the
unit's SystemCallFilter; then the real daemon against a TLS Mosquitto with certificates in
/etc/guaita/certs, an upgrade that keeps an edited /etc/guaita.toml, and a purge.
"""

from __future__ import annotations

import ctypes
import grp
import hashlib
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from edge.config import Config, parse_config

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "deploy" / "build_deb.sh"
UNIT = REPO / "deploy" / "guaita.service"
DEFAULT_CONFIG = REPO / "edge" / "default_config.toml"
SHIPPED_MODEL = REPO / "models" / "guaita-r18-sim"
MAX_EXPOSURE = 2.0
FORBIDDEN = re.compile(r"/site-packages/(torch|torchvision|fastai|fastcore|matplotlib)[/-]")
logger = logging.getLogger(__name__)
PROBE_LEN = 12288  # the workload's deliberate W+X mmap, told apart from real ones by its size


def _run(cmd: list[str], **kw: typing.Any) -> subprocess.CompletedProcess[str]:
    """Run, capture, and fail with the command's output when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} → {proc.returncode}\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


# ---------------------------------------------------------------- the shipped config


def _commented_settings_enabled(text: str) -> str:
    """The config with every '# key = value' line uncommented (prose comments stay)."""
    return re.sub(r"(?m)^# ?([a-z_]+ = .*)$", r"\1", text)


def _field_paths(cls: type, prefix: str = "") -> dict[str, typing.Any]:
    """'mqtt.tls.ca' → default, for every TOML key of the Config dataclass tree."""
    hints = typing.get_type_hints(cls)
    out: dict[str, typing.Any] = {}
    for f in fields(cls):
        if f.name == "source":
            continue
        if is_dataclass(hints[f.name]):
            out.update(_field_paths(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = f.default
    return out


def _toml_paths(data: dict[str, typing.Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in data.items():
        if isinstance(value, dict):
            out |= _toml_paths(value, f"{prefix}{key}.")
        else:
            out.add(prefix + key)
    return out


def test_default_config_passes_check_config():
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "check-config", "--config",
                           str(DEFAULT_CONFIG)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    cfg = parse_config(DEFAULT_CONFIG.read_text())
    assert cfg.mqtt.enabled is False
    assert cfg.paths.images == "/home/pi/allsky/images"
    assert cfg.paths.model == "/usr/share/guaita/models/default"
    assert cfg.paths.state == "/var/lib/guaita"


def test_default_config_documents_every_key():
    """Uncommenting every shown setting still validates, and together they cover every key
    (keys whose default is unset, like detection.threshold, are explained in prose)."""
    text = DEFAULT_CONFIG.read_text()
    full = _commented_settings_enabled(text)
    parse_config(full, source="uncommented default config")  # valid, no duplicate keys
    shown = _toml_paths(tomllib.loads(full))
    sections = re.split(r"(?m)^\[", text)
    missing = []
    for key, default in _field_paths(Config).items():
        if key in shown:
            continue
        section, _, name = key.rpartition(".")
        body = next((s for s in sections if s.startswith(f"{section}]")), "")
        if default is None and re.search(rf"\b{name}\b", body):
            continue
        missing.append(key)
    assert not missing, f"edge/default_config.toml does not document: {missing}"


def test_deploy_config_is_the_default_config():
    assert (REPO / "deploy" / "guaita.toml").resolve() == DEFAULT_CONFIG.resolve()


# ---------------------------------------------------------------- the unit


def _unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_runs_guaita_as_a_notify_service_behind_allsky():
    s = _unit_settings(UNIT)
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == ["/opt/guaita/bin/guaita run --config /etc/guaita.toml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert int(s["WatchdogSec"][0]) > 0 and s["Restart"] == ["on-failure"]
    assert "allsky.service" in s["After"][0].split()
    assert s["User"] == ["guaita"] and s["StateDirectory"] == ["guaita"]
    # AllSky's capture wins: lower priority and a small share of CPU and I/O.
    assert int(s["Nice"][0]) > 0 and int(s["CPUWeight"][0]) < 100 and int(s["IOWeight"][0]) < 100


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze missing: apt-get install systemd")
    return tool


def test_unit_parses_without_warnings(tmp_path):
    """`systemd-analyze verify` flags unknown keys and bad values only as warnings, so any
    output is a failure. ExecStart must exist for verify: a copy points it at /bin/true (the
    installed unit is verified as shipped in the slow test)."""
    tool = _systemd_analyze()
    copy = tmp_path / "guaita.service"
    copy.write_text(re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/bin/true", UNIT.read_text()))
    proc = subprocess.run([tool, "verify", "--man=no", str(copy)], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stderr


def exposure(unit: Path) -> float:
    """The overall exposure `systemd-analyze security` gives (0 = locked down, 10 = none)."""
    proc = subprocess.run([_systemd_analyze(), "security", "--offline=true", "--no-pager",
                           str(unit)], capture_output=True, text=True)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)",
                      proc.stdout + proc.stderr)
    assert found, proc.stdout + proc.stderr
    return float(found.group(1))


def test_unit_exposure_is_ok(tmp_path):
    score = exposure(UNIT)
    assert score <= MAX_EXPOSURE, f"systemd-analyze security: {score} > {MAX_EXPOSURE}"
    # The measurement must react to hardening, or the bound above proves nothing.
    stripped = tmp_path / "guaita.service"
    stripped.write_text("\n".join(
        line for line in UNIT.read_text().splitlines()
        if not line.startswith(("Protect", "Private", "Restrict", "SystemCall", "Capability",
                                "NoNewPrivileges"))))
    assert exposure(stripped) > score + 3


# ---------------------------------------------------------------- the build script's guards


def _build_tools() -> None:
    for tool in ("dpkg-deb", "dpkg", "readelf"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} missing (make setup installs it)")


def test_build_refuses_a_missing_model(tmp_path):
    _build_tools()
    proc = subprocess.run(["bash", str(BUILD), "--model", str(tmp_path / "nope"), "--out",
                           str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "no model bundle" in proc.stderr and "--allow-no-model" in proc.stderr
    assert not list(tmp_path.glob("*.deb"))


def test_build_refuses_a_foreign_arch(tmp_path):
    _build_tools()
    host = subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                          text=True).stdout.strip()
    other = "arm64" if host != "arm64" else "amd64"
    proc = subprocess.run(["bash", str(BUILD), "--arch", other, "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and f"on an {other} machine" in proc.stderr


# ---------------------------------------------------------------- the slow end-to-end test

# Runs as the service user, inside the sandbox: everything the daemon's libraries do at start
# (score with the packaged model, watch a folder, SQLite, a TLS handshake, boto3).
WORKLOAD = r'''
import mmap, socket, sqlite3, ssl, sys, threading, time
from pathlib import Path

work = Path(sys.argv[2])
try:  # W^X must be in force: a writable+executable mapping is refused
    mmap.mmap(-1, PROBE_LEN, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    wx = "allowed"
except OSError:
    wx = "refused"
print("wx", wx, flush=True)

import cv2, numpy as np
from edge.config import load_config
from edge.model import open_scorer
from edge.preprocess import read_gray

cfg = load_config("/etc/guaita.toml")
rng = np.random.default_rng(1)
paths = []
for i in range(2):
    img = rng.integers(20, 40, (480, 640, 3), dtype=np.uint8)
    if i:
        cv2.line(img, (100, 100), (300, 220), (255, 255, 255), 2)
    paths.append(work / f"image-2024081221000{i}.jpg")
    assert cv2.imwrite(str(paths[-1]), img)
scorer = open_scorer(sys.argv[1], threads=2)
score = scorer.score(read_gray(str(paths[0])), read_gray(str(paths[1])))
assert 0.0 <= score <= 1.0
print("score", score, flush=True)

from watchdog.events import FileClosedEvent, FileSystemEventHandler
from watchdog.observers import Observer
closed = threading.Event()
class Handler(FileSystemEventHandler):
    def on_closed(self, event):
        if isinstance(event, FileClosedEvent):
            closed.set()
observer = Observer()
observer.schedule(Handler(), str(work), recursive=True)
observer.start()
(work / "image-20240812210030.jpg").write_bytes(paths[1].read_bytes())  # a watched folder
assert closed.wait(10), "no close-write event"
observer.stop(); observer.join()

db = sqlite3.connect(work / "outbox.sqlite")
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE t (x)"); db.execute("INSERT INTO t VALUES (1)"); db.commit(); db.close()

import datetime as dt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
now = dt.datetime.now(dt.UTC)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1).not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(key, hashes.SHA256()))
(work / "s.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
(work / "s.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(work / "s.pem", work / "s.key")
listener = socket.create_server(("127.0.0.1", 0))
def serve():
    conn, _ = listener.accept()
    with server_ctx.wrap_socket(conn, server_side=True) as tls:
        tls.sendall(tls.recv(5))
threading.Thread(target=serve, daemon=True).start()
client_ctx = ssl.create_default_context(cafile=str(work / "s.pem"))
with socket.create_connection(("localhost", listener.getsockname()[1]), timeout=10) as raw:
    with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"hello")
        assert tls.recv(5) == b"hello"

import boto3
boto3.client("s3", region_name="eu-west-1", endpoint_url="http://127.0.0.1:9",
             aws_access_key_id="x", aws_secret_access_key="y")
print("WORKLOAD OK", flush=True)
'''.replace("PROBE_LEN", str(PROBE_LEN))

# Applies W^X (PR_SET_MDWE, Linux ≥ 6.3: what MemoryDenyWriteExecute= does with seccomp) and
# execs the real command; the flag survives exec and is inherited by every thread and child.
MDWE_EXEC = (
    "import ctypes, os, sys\n"
    "if os.environ.pop('GUAITA_TEST_MDWE', '') == '1':\n"
    "    if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:\n"
    "        sys.exit('PR_SET_MDWE failed')\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)

# The unit's file system view, in a private mount + PID namespace: hidden foreign processes
# (ProtectProc=invisible), read-only everything (ProtectSystem=strict, ProtectHome=read-only)
# but the state directory (StateDirectory=), private /tmp (PrivateTmp=); then the service user
# with no new privileges, traced by strace.
SANDBOX = r'''
set -e
mount -t proc -o hidepid=invisible proc /proc
awk '$2 !~ "^/(proc|sys|dev)(/|$)" && $4 ~ /(^|,)rw(,|$)/ {print $2}' /proc/self/mounts |
    while read -r m; do mount -o bind,remount,ro "$m"; done
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mount --bind /var/lib/guaita /var/lib/guaita
mount -o bind,remount,rw /var/lib/guaita
if touch /etc/guaita-rw-probe 2>/dev/null; then echo "sandbox: /etc writable" >&2; exit 97; fi
trace=$1; shift
exec setpriv --reuid=guaita --regid=guaita --init-groups --no-new-privs -- \
    env HOME=/var/lib/guaita strace -f -qq -o "$trace" /opt/guaita/bin/python -c "$MDWE_EXEC" "$@"
'''


def _sandboxed(trace: Path, argv: list[str]) -> list[str]:
    return ["unshare", "--mount", "--pid", "--fork", "--propagation", "private",
            "sh", "-c", SANDBOX, "sandbox", str(trace), *argv]


def _mdwe_supported() -> bool:
    proc = subprocess.run([sys.executable, "-c",
                           "import ctypes, sys; sys.exit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0))"])
    return proc.returncode == 0


def _syscall_group(name: str) -> set[str]:
    out = _run([_systemd_analyze(), "syscall-filter", "--no-pager", name]).stdout
    calls: set[str] = set()
    for line in out.splitlines():
        item = line.strip()
        if item and not item.startswith("#") and item != name:
            calls |= _syscall_group(item) if item.startswith("@") else {item}
    return calls


def allowed_syscalls(unit: Path) -> set[str]:
    """The unit's SystemCallFilter= lines applied in order, as systemd does for an allow list."""
    allowed: set[str] = set()
    for value in _unit_settings(unit).get("SystemCallFilter", []):
        deny = value.startswith("~")
        names: set[str] = set()
        for item in value.lstrip("~").split():
            names |= _syscall_group(item) if item.startswith("@") else {item}
        allowed = allowed - names if deny else allowed | names
    return allowed


def check_trace(trace: Path, allowed: set[str]) -> set[str]:
    """Every call in an strace log is allowed, and none needs writable+executable memory
    (MemoryDenyWriteExecute= refuses W+X mmap, mprotect/pkey_mprotect adding EXEC, shmat
    SHM_EXEC). Returns the calls seen."""
    text = trace.read_text()
    used = set(re.findall(r"(?m)^\d+ +([a-z_0-9]+)\(", text))
    assert used, "empty trace"
    assert not used - allowed, f"system calls the unit's filter refuses: {sorted(used - allowed)}"
    wx = [line for line in text.splitlines()
          if (re.search(r" mmap2?\(.*PROT_WRITE\|PROT_EXEC", line)
              and f", {PROBE_LEN}, " not in line)
          or re.search(r" (pkey_)?mprotect\(.*PROT_EXEC", line)
          or re.search(r" shmat\(.*SHM_EXEC", line)]
    assert not wx, "W^X violations:\n" + "\n".join(wx[:5])
    return used


def conv_bundle(directory: Path) -> Path:
    """An int8 (QDQ) convolutional bundle: exercises onnxruntime's quantized CPU kernels, as the
    shipped ResNet does, when models/guaita-r18-sim is not there."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge.bundle import write_bundle

    size = 64
    rng = np.random.default_rng(0)
    arrays = {
        "w_q": rng.integers(-60, 60, (8, 3, 3, 3), dtype=np.int8),
        "w_s": np.array(0.01, np.float32), "w_z": np.array(0, np.int8),
        "x_s": np.array(1.0, np.float32), "x_z": np.array(0, np.uint8),
        "y_s": np.array(0.05, np.float32), "y_z": np.array(0, np.uint8),
        "b_q": np.zeros(8, np.int32), "b_s": np.array(0.01, np.float32),
        "b_z": np.array(0, np.int32),
        "fc": (rng.standard_normal((8, 2)) * 0.1).astype(np.float32),
        "fcb": np.zeros(2, np.float32),
    }
    node = helper.make_node
    graph = helper.make_graph(
        [node("QuantizeLinear", ["image", "x_s", "x_z"], ["xq"]),
         node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
         node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wd"]),
         node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["bd"]),
         node("Conv", ["xd", "wd", "bd"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2]),
         node("Relu", ["y"], ["yr"]),
         node("QuantizeLinear", ["yr", "y_s", "y_z"], ["yq"]),
         node("DequantizeLinear", ["yq", "y_s", "y_z"], ["yd"]),
         node("GlobalAveragePool", ["yd"], ["p"]),
         node("Flatten", ["p"], ["f"], axis=1),
         node("Gemm", ["f", "fc", "fcb"], ["logits"]),
         node("Softmax", ["logits"], ["probs"], axis=1)],
        "conv_qdq",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(v, k) for k, v in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    write_bundle(directory, model.SerializeToString(), {
        "name": "conv-qdq-test", "version": "1", "preprocessing": {"id": "g1", "size": size},
        "input": {"name": "image", "shape": [1, 3, size, size], "dtype": "float32",
                  "range": [0, 255]},
        "classes": ["meteor", "not_meteor"], "recommended_threshold": 0.5})
    return directory


def build_deb(version: str, out: Path, model: Path, wheelhouse: Path) -> Path:
    proc = subprocess.run(
        ["bash", str(BUILD), "--version", version, "--out", str(out), "--model", str(model),
         "--wheelhouse", str(wheelhouse), "--compress", "zstd"],
        capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, f"build_deb.sh failed:\n{proc.stderr[-6000:]}"
    deb = out / f"guaita_{version}_{_host_arch()}.deb"
    assert deb.is_file() and proc.stdout.strip().endswith(deb.name)
    return deb


def _host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                          text=True).stdout.strip()


def _installed_version() -> str | None:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", "guaita"],
                          capture_output=True, text=True)
    status = proc.stdout.split()
    return status[1] if proc.returncode == 0 and status and status[0] == "ii" else None


def _dpkg(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return _run(["dpkg", *args], env=env)


def _mode(path: str) -> tuple[str, str, int]:
    st = os.stat(path)
    return (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name,
            stat.S_IMODE(st.st_mode))


def _notify_listener(path: Path) -> tuple[socket.socket, list[tuple[int, str]], threading.Event]:
    """A NOTIFY_SOCKET like systemd's: datagrams with the sender's pid (SO_PASSCRED)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(str(path))
    path.chmod(0o666)
    sock.settimeout(0.2)
    received: list[tuple[int, str]] = []
    done = threading.Event()

    def loop() -> None:
        creds_len = socket.CMSG_SPACE(ctypes.sizeof(ctypes.c_int) * 3)
        while not done.is_set():
            try:
                data, ancillary, _f, _a = sock.recvmsg(4096, creds_len)
            except TimeoutError:
                continue
            except OSError:
                return
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(payload[:4], sys.byteorder)
            received.append((pid, data.decode(errors="replace")))

    threading.Thread(target=loop, daemon=True).start()
    return sock, received, done


def _wait(predicate: typing.Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _write_frame(path: Path, seed: int) -> None:
    """A frame written in place (open, write, close), as AllSky's `cp` does."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    img = rng.integers(18, 34, (360, 480, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)


@pytest.mark.slow
def test_deb_build_install_run_upgrade_purge(tmp_path, tmp_path_factory):
    for tool in ("dpkg-deb", "dpkg", "strace", "unshare", "setpriv"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} missing (make setup installs it)")
    if os.geteuid() != 0:
        pytest.skip("installs the package into this (disposable) machine: needs root")
    if _installed_version() is not None:
        pytest.skip("guaita is already installed here; this test would replace and purge it")
    try:
        pwd.getpwnam("guaita")
        pytest.skip("a user 'guaita' exists without the package; the purge would delete it")
    except KeyError:
        pass
    _systemd_analyze()

    wheelhouse = Path(os.environ.get("GUAITA_WHEELHOUSE") or tmp_path_factory.mktemp("wheels"))
    model = (SHIPPED_MODEL if (SHIPPED_MODEL / "manifest.json").is_file()
             else conv_bundle(tmp_path / "conv-bundle"))
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    out = tmp_path / "dist"

    # ---- build and inspect
    logger.info("deb test: build v1")
    deb = build_deb(version, out, model, wheelhouse)
    listing = _run(["dpkg-deb", "-c", str(deb)]).stdout
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    assert not [p for p in paths if FORBIDDEN.search(p)], "training packages in the .deb"
    assert any("/site-packages/onnxruntime/" in p for p in paths)
    for expected in ("/opt/guaita/bin/guaita", "/opt/guaita/pyvenv.cfg", "/usr/bin/guaita",
                     "/etc/guaita.toml", "/etc/guaita/certs/", "/lib/systemd/system/guaita.service",
                     "/usr/share/guaita/models/default/model.onnx",
                     "/usr/share/guaita/models/default/manifest.json"):
        assert expected in paths, f"{expected} not in the package"
    for extra in sorted(model.glob("*.onnx")):  # a trail classifier's graph travels with it
        assert f"/usr/share/guaita/models/default/{extra.name}" in paths
    certs_line = next(line for line in listing.splitlines() if line.endswith("/etc/guaita/certs/"))
    assert certs_line.startswith("drwxr-x---")
    assert _run(["dpkg-deb", "-f", str(deb), "Package"]).stdout.strip() == "guaita"
    depends = _run(["dpkg-deb", "-f", str(deb), "Depends"]).stdout
    assert re.search(r"\bpython3\.\d+\b", depends) and "libc6" in depends
    conffiles = _run(["dpkg-deb", "-I", str(deb), "conffiles"]).stdout.split()
    assert conffiles == ["/etc/guaita.toml"]

    group = "guaitatest-allsky"
    home = Path(f"/home/guaitatest-{os.getpid()}")
    run_dir = Path(f"/run/guaita-test-{os.getpid()}")
    created_group = False
    try:
        # ---- an AllSky-like home: the login user's group may read, nobody else (bookworm 0700
        # homes opened to 0750, as docs/install.md tells the admin)
        if subprocess.run(["getent", "group", group], capture_output=True).returncode != 0:
            _run(["groupadd", "--system", group])
            created_group = True
        gid = grp.getgrnam(group).gr_gid
        images = home / "allsky" / "images"
        night = images / "20240812"
        night.mkdir(parents=True)
        for d in (home, home / "allsky", images, night):
            os.chown(d, 0, gid)
            d.chmod(0o750)
        for i in range(3):  # the catch-up backlog, 30 s apart
            _write_frame(night / f"image-2024081221{i // 2:02d}{(i % 2) * 30:02d}.jpg", i)

        # ---- fresh install over an admin-prepared config (kept with --force-confold)
        logger.info("deb test: install")
        shipped = DEFAULT_CONFIG.read_text()
        seeded = shipped.replace('images = "/home/pi/allsky/images"', f'images = "{images}"')
        assert seeded != shipped
        Path("/etc/guaita.toml").write_text(seeded)
        install = _dpkg("-i", "--force-confold", str(deb))
        assert "cannot read" not in install.stderr, install.stderr
        assert _installed_version() == version
        assert Path("/etc/guaita.toml").read_text() == seeded
        md5 = hashlib.md5(shipped.encode()).hexdigest()
        assert md5 in _run(["dpkg-query", "-W", "-f=${Conffiles}", "guaita"]).stdout

        assert _run(["/opt/guaita/bin/guaita", "--version"]).stdout.split() == ["guaita", version]
        _run(["guaita", "check-config", "--config", "/etc/guaita.toml"])
        user = pwd.getpwnam("guaita")
        assert user.pw_uid < 1000 and user.pw_dir == "/var/lib/guaita"
        assert user.pw_shell in ("/usr/sbin/nologin", "/bin/false")
        assert group in _run(["id", "-nG", "guaita"]).stdout.split(), "postinst did not grant"
        assert _mode("/var/lib/guaita") == ("guaita", "guaita", 0o750)
        assert _mode("/etc/guaita/certs") == ("root", "guaita", 0o750)
        assert Path("/etc/systemd/system/multi-user.target.wants/guaita.service").is_symlink()
        proc = subprocess.run([_systemd_analyze(), "verify", "--man=no",
                               "/lib/systemd/system/guaita.service"], capture_output=True,
                              text=True)
        assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stderr
        assert exposure(Path("/lib/systemd/system/guaita.service")) <= MAX_EXPOSURE

        # ---- the libraries, as the unit runs them
        logger.info("deb test: workload")
        allowed = allowed_syscalls(Path("/lib/systemd/system/guaita.service"))
        mdwe = _mdwe_supported()
        work = Path("/var/lib/guaita/workload")
        work.mkdir()
        os.chown(work, user.pw_uid, user.pw_gid)
        run_dir.mkdir(mode=0o755)
        script = run_dir / "workload.py"
        script.write_text(WORKLOAD)
        trace = Path("/var/lib/guaita/workload.trace")
        env = dict(os.environ, MDWE_EXEC=MDWE_EXEC, GUAITA_TEST_MDWE="1" if mdwe else "0")
        proc = subprocess.run(_sandboxed(trace, ["/opt/guaita/bin/python", str(script),
                                                 "/usr/share/guaita/models/default", str(work)]),
                              capture_output=True, text=True, env=env, timeout=240)
        assert proc.returncode == 0 and "WORKLOAD OK" in proc.stdout, proc.stdout + proc.stderr
        assert ("wx refused" if mdwe else "wx allowed") in proc.stdout
        assert "cpuinfo" not in proc.stderr  # onnxruntime still sees the CPU's features
        used = check_trace(trace, allowed)
        # The W^X scan sees such mappings: the workload's deliberate probe is in the trace.
        assert re.search(rf" mmap\(NULL, {PROBE_LEN}, PROT_READ\|PROT_WRITE\|PROT_EXEC",
                         trace.read_text())
        assert {"inotify_add_watch", "connect", "accept4"} <= used  # threads were traced too

        # ---- the daemon itself, against a TLS broker, with the admin's certificates
        logger.info("deb test: daemon")
        from tests.broker import THING, Subscriber, run_broker

        with run_broker(tmp_path) as broker:
            certs = {"ca": "ca.pem", "cert": "device.pem.crt", "key": "private.pem.key"}
            for src, name in ((broker.ca, "ca.pem"), (broker.client_cert, "device.pem.crt"),
                              (broker.client_key, "private.pem.key")):
                target = Path("/etc/guaita/certs") / name
                shutil.copyfile(src, target)
                os.chown(target, 0, user.pw_gid)
                target.chmod(0o640)
            edited = seeded.replace('observatory = "my-observatory"',
                                    'observatory = "deb-test"')
            edited = re.sub(r"(?m)^enabled = false$", "enabled = true", edited, count=1)
            edited = re.sub(r"(?m)^# host = .*$", f'host = "{broker.host}"', edited)
            edited = re.sub(r"(?m)^# port = .*$", f"port = {broker.port}", edited)
            edited = re.sub(r"(?m)^# client_id = .*$", f'client_id = "{THING}"', edited)
            edited = re.sub(r"(?m)^# status_interval_s = .*$", "status_interval_s = 1.0", edited)
            for key, name in certs.items():
                edited = re.sub(rf"(?m)^# {key} = .*$", f'{key} = "/etc/guaita/certs/{name}"',
                                edited)
            edited = re.sub(r"(?m)^# decision_timeout_s = .*$", "decision_timeout_s = 2.0",
                            edited)
            Path("/etc/guaita.toml").write_text(edited)
            checked = _run(["runuser", "-u", "guaita", "--", "guaita", "check-config"])
            assert "observatory deb-test" in checked.stdout

            subscriber = Subscriber(broker, ["guaita/deb-test/#"])
            notify_path = run_dir / "notify.sock"
            sock, received, done = _notify_listener(notify_path)
            trace = Path("/var/lib/guaita/daemon.trace")
            env = dict(os.environ, MDWE_EXEC=MDWE_EXEC, GUAITA_TEST_MDWE="1" if mdwe else "0",
                       NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="2000000")
            log_path = tmp_path / "daemon.log"
            with open(log_path, "w") as log:  # a file, not a pipe nobody reads until the end
                daemon = subprocess.Popen(
                    _sandboxed(trace, ["/opt/guaita/bin/guaita", "run", "--config",
                                       "/etc/guaita.toml", "--exit-when-idle", "6"]),
                    stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                subscriber.wait_subscribed()

                def lines(prefix: str) -> list[tuple[int, str]]:
                    return [(pid, m) for pid, m in received
                            if any(x.startswith(prefix) for x in m.splitlines())]

                _wait(lambda: bool(lines("READY=1")) or daemon.poll() is not None, 120,
                      "READY=1")
                assert daemon.poll() is None, log_path.read_text()[-4000:]
                main_pid = lines("READY=1")[0][0]
                for i in range(3, 6):  # live frames, as AllSky saves them
                    _write_frame(night / f"image-2024081221{i // 2:02d}{(i % 2) * 30:02d}.jpg", i)
                    time.sleep(0.3)
                os.kill(main_pid, signal.SIGHUP)  # ExecReload=
                _wait(lambda: bool(lines("RELOADING=1")), 30, "RELOADING=1")
                daemon.wait(timeout=120)
                statuses = subscriber.wait_for(
                    lambda ms: any(m.topic == "guaita/deb-test/status" for m in ms), timeout=10)
            finally:
                if daemon.poll() is None:
                    daemon.kill()
                done.set()
                sock.close()
                subscriber.client.loop_stop()
                subscriber.client.disconnect()
            assert statuses  # published over mutual TLS with the keys in /etc/guaita/certs
            stderr = log_path.read_text()
            assert daemon.returncode == 0, stderr[-4000:]
            assert len(lines("READY=1")) >= 2 and lines("WATCHDOG=1"), received
            stopping = re.search(r"guaita stopping: (\{.*\})", stderr)
            assert stopping, stderr[-4000:]
            counts = json.loads(stopping.group(1))
            assert counts["frames_scored"] >= 5, counts  # 6 frames: catch-up and live
        check_trace(trace, allowed)

        # ---- upgrade: the edited conffile and the certificates stay
        logger.info("deb test: upgrade")
        trace.unlink()
        new_version = f"{version}+1"
        deb2 = build_deb(new_version, out, model, wheelhouse)
        _dpkg("-i", "--force-confold", str(deb2))
        assert _installed_version() == new_version
        assert Path("/etc/guaita.toml").read_text() == edited
        assert _mode("/etc/guaita/certs") == ("root", "guaita", 0o750)
        assert _mode("/etc/guaita/certs/private.pem.key") == ("root", "guaita", 0o640)
        assert pwd.getpwnam("guaita").pw_uid == user.pw_uid
        assert Path("/var/lib/guaita/processed.sqlite").exists()  # state kept too
        _run(["guaita", "check-config"])

        # ---- purge: state, certificates, user and config go
        logger.info("deb test: purge")
        _dpkg("--purge", "guaita")
        assert _installed_version() is None
        for gone in ("/opt/guaita", "/var/lib/guaita", "/etc/guaita", "/etc/guaita.toml",
                     "/usr/bin/guaita", "/lib/systemd/system/guaita.service",
                     "/etc/systemd/system/multi-user.target.wants/guaita.service"):
            assert not os.path.lexists(gone), f"{gone} survived the purge"
        with pytest.raises(KeyError):
            pwd.getpwnam("guaita")
        with pytest.raises(KeyError):
            grp.getgrnam("guaita")
        assert "/etc/guaita/certs" not in _run(["dpkg-statoverride", "--list"]).stdout
    finally:
        if _installed_version() is not None or subprocess.run(
                ["dpkg-query", "-W", "guaita"], capture_output=True).returncode == 0:
            subprocess.run(["dpkg", "--purge", "guaita"], capture_output=True)
        if subprocess.run(["dpkg-query", "-W", "guaita"], capture_output=True).returncode != 0:
            Path("/etc/guaita.toml").unlink(missing_ok=True)  # ours: seeded before installing
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        if created_group:
            subprocess.run(["groupdel", group], capture_output=True)
