#!/usr/bin/env python3
# README sample scenario: a server "leaky-srv" holds what it accepts; clients close two,
# reset one, and one connects to a closed port. The server closes everything after 3.5 s.
import ctypes, os, socket, struct, time
libc = ctypes.CDLL(None)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    libc.prctl(15, b"leaky-srv", 0, 0, 0)
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(16)
    os.write(w, str(srv.getsockname()[1]).encode() + b"\n")
    held = []
    end = time.time() + 3.5
    srv.settimeout(0.1)
    while time.time() < end:
        try:
            c, _ = srv.accept(); held.append(c)
        except socket.timeout:
            pass
    for c in held: c.close()
    srv.close()
    os._exit(0)
port = int(os.read(r, 16))
cs = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
time.sleep(0.05)
for c in cs: c.close()
x = socket.create_connection(("127.0.0.1", port))
time.sleep(0.05)
x.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); x.close()
try:
    socket.create_connection(("127.0.0.1", 1))
except ConnectionRefusedError:
    pass
os.waitpid(pid, 0)
