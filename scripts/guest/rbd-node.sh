#!/usr/bin/env bash
# Guest side of csi-suite's long-lived guests (csi_suite::guest): one Kubernetes node
# of the csi-rbd tests, run by scripts/guest/run.sh on the Ceph fixture's bridge
# (GUEST_NETWORK=bridge:NAME GUEST_ADDR=IP/24 GUEST_MODULES="rbd nbd xfs").
#
#   rbd-node.sh IP PORT EXEC_PORT CSI_RBD ARGS...
#
# Starts a command server on IP:EXEC_PORT (the test's hands inside the node: it writes
# and checksums files in published volumes, runs df; one connection = one `sh -c`
# command, answered with its output and a last line "__EXIT__ <status>"), then runs
# `CSI_RBD ARGS... --endpoint tcp://IP:PORT` in the foreground: the node plugin, which
# the test drives over gRPC. Both listen on the test bridge only.
set -euo pipefail
(($# >= 4)) || {
  echo "usage: $0 IP PORT EXEC_PORT CSI_RBD ARGS..." >&2
  exit 2
}
ip=$1
port=$2
exec_port=$3
bin=$4
shift 4
[[ -x $bin ]] || {
  echo "rbd-node.sh: FAIL: $bin not found (cargo build --release -p csi-rbd)" >&2
  exit 2
}
python3 - "$ip" "$exec_port" <<'PY' &
import socketserver, subprocess, sys

class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        cmd = self.rfile.read().decode()
        try:
            p = subprocess.run(["sh", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
            out, rc = p.stdout, p.returncode
        except subprocess.TimeoutExpired as e:
            out, rc = (e.stdout or b"") + b"\ntimed out after 300s\n", 124
        self.wfile.write(out + b"\n__EXIT__ %d\n" % rc)

class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

Server((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
PY
echo "rbd-node.sh: command server on $ip:$exec_port, starting $bin on tcp://$ip:$port"
exec "$bin" "$@" --endpoint "tcp://$ip:$port"
