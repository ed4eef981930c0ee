"""STAND-IN .deb packages for NVIDIA's DCGM and dcgm-exporter (there is no GPU, and NVIDIA's
repository is not reached from here), under the real packages' names and file layout, so
role vllama_dcgm installs, configures and starts them exactly as on a GPU host:

- `datacenter-gpu-manager-4-cuda13`: /usr/bin/nv-hostengine (listens on 127.0.0.1:5555, as
  DCGM's host engine does) and its unit nvidia-dcgm.service;
- `datacenter-gpu-manager-exporter`: /usr/bin/dcgm-exporter and nvidia-dcgm-exporter.service
  (the layout of NVIDIA/dcgm-exporter's packaging: the unit under /lib/systemd/system,
  counters under /etc/dcgm-exporter/). It takes the real flags the role gives it (`-f`
  counters file, `-a` listen address, `-r` host engine), refuses to start when the counters
  file is missing or the host engine does not answer (as the real exporter does), and
  serves the RECORDED /metrics of a real dcgm-exporter (fixtures/
  dcgm-exporter-recorded-rtx4000ada.prom) with a header line naming the flags it got.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "dcgm-exporter-recorded-rtx4000ada.prom"
RECORDED = "/usr/share/vllama-standin/dcgm-recorded.prom"

_HOSTENGINE = """#!/usr/bin/python3
# STAND-IN for DCGM's nv-hostengine: accepts connections on 127.0.0.1:5555.
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 5555))
s.listen()
while True:
    conn, _ = s.accept()
    conn.close()
"""

_EXPORTER = f"""#!/usr/bin/python3
# STAND-IN for NVIDIA's dcgm-exporter: the real flags, the recorded metrics.
import argparse, http.server, os, socket, sys
p = argparse.ArgumentParser()
p.add_argument("-f", "--collectors", default="/etc/dcgm-exporter/default-counters.csv")
p.add_argument("-a", "--address", default=":9400")
p.add_argument("-r", "--remote-hostengine-info", default="")
a = p.parse_args()
if not os.path.exists(a.collectors):
    sys.exit(f"collectors file {{a.collectors}} not found")
if a.remote_hostengine_info:
    host, port = a.remote_hostengine_info.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        sys.exit(f"cannot connect to the DCGM host engine at {{a.remote_hostengine_info}}: {{exc}}")
head = f"# vllama stand-in: -f {{a.collectors}} -r {{a.remote_hostengine_info or '(embedded)'}}\\n"
body = (head + open("{RECORDED}").read()).encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body if self.path == "/metrics" else b"")
    def log_message(self, *args):
        pass
host, port = a.address.rsplit(":", 1)
http.server.HTTPServer((host or "0.0.0.0", int(port)), H).serve_forever()
"""

_UNITS = {
    "nvidia-dcgm.service": (
        "[Unit]\nDescription=STAND-IN NVIDIA DCGM host engine\n\n[Service]\n"
        "ExecStart=/usr/bin/nv-hostengine\n\n[Install]\nWantedBy=multi-user.target\n"
    ),
    "nvidia-dcgm-exporter.service": (
        "[Unit]\nDescription=STAND-IN NVIDIA DCGM exporter\nAfter=nvidia-dcgm.service\n\n"
        "[Service]\nExecStart=/usr/bin/dcgm-exporter\n\n[Install]\nWantedBy=multi-user.target\n"
    ),
}


def _deb(dest: Path, name: str, files: dict[str, tuple[str, int]]) -> Path:
    root = dest / f"{name}-root"
    for path, (text, mode) in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
    control = root / "DEBIAN" / "control"
    control.parent.mkdir(parents=True, exist_ok=True)
    control.write_text(
        f"Package: {name}\nVersion: 0.0.0-vllama-standin\nArchitecture: all\n"
        "Maintainer: vllama tests <tests@invalid>\nDepends: python3\n"
        f"Description: STAND-IN for NVIDIA's {name} (vllama's tests; no GPU here)\n"
    )
    deb = dest / f"{name}_0.0.0-vllama-standin_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return deb


def build_debs(dest: Path) -> list[Path]:
    """The two stand-in packages, in install order."""
    dest.mkdir(parents=True, exist_ok=True)
    core = _deb(
        dest,
        "datacenter-gpu-manager-4-cuda13",
        {
            "/usr/bin/nv-hostengine": (_HOSTENGINE, 0o755),
            "/lib/systemd/system/nvidia-dcgm.service": (_UNITS["nvidia-dcgm.service"], 0o644),
        },
    )
    exporter = _deb(
        dest,
        "datacenter-gpu-manager-exporter",
        {
            "/usr/bin/dcgm-exporter": (_EXPORTER, 0o755),
            RECORDED: (FIXTURE.read_text(), 0o644),
            "/etc/dcgm-exporter/default-counters.csv": (
                "DCGM_FI_DEV_GPU_TEMP, gauge, temp\n",
                0o644,
            ),
            "/lib/systemd/system/nvidia-dcgm-exporter.service": (
                _UNITS["nvidia-dcgm-exporter.service"],
                0o644,
            ),
        },
    )
    return [core, exporter]
