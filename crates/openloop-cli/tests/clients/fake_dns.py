"""A fake DNS server for tests/network.rs: answers A queries for a few test names from a
network namespace the test made (never a real resolver). Usage: fake_dns.py ADDRESS."""

import socket
import struct
import sys

ANSWERS = {
    "web.lan.test": "192.168.77.2",
    "x.wild.test": "203.0.113.7",
    "other.test": "203.0.113.7",
}

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
while True:
    data, peer = s.recvfrom(4096)
    try:
        tid, _flags, _qd, _an, _ns, _ar = struct.unpack(">HHHHHH", data[:12])
        i, labels = 12, []
        while data[i]:
            n = data[i]
            labels.append(data[i + 1 : i + 1 + n].decode())
            i += 1 + n
        i += 1
        qtype, _qclass = struct.unpack(">HH", data[i : i + 4])
        question = data[12 : i + 4]
    except (IndexError, struct.error, UnicodeDecodeError):
        continue
    ip = ANSWERS.get(".".join(labels).lower())
    if ip and qtype == 1:
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
        reply = struct.pack(">HHHHHH", tid, 0x8180, 1, 1, 0, 0) + question + answer
    else:
        rcode = 0 if ip else 3
        reply = struct.pack(">HHHHHH", tid, 0x8180 | rcode, 1, 0, 0, 0) + question
    s.sendto(reply, peer)
