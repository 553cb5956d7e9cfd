"""Fixtures for code that makes outbound connections: answers without DNS, and no traffic off loopback."""

import ipaddress
import socket
from types import SimpleNamespace

import pytest


@pytest.fixture
def fake_dns(monkeypatch):
    """``fake_dns.names[host] = [addresses]`` (or a callable giving them) answers ``getaddrinfo``
    without any DNS query; other names do not resolve, numeric hosts are parsed, never looked up.
    ``fake_dns.calls`` lists the names asked for."""
    real = socket.getaddrinfo
    state = SimpleNamespace(names={}, calls=[])

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host in state.names:
            state.calls.append(host)
            answer = state.names[host]
            addresses = answer() if callable(answer) else answer
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)) if ":" in a
                    else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]
        return real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return state


@pytest.fixture
def loopback_only(monkeypatch):
    """Sockets may connect to loopback addresses only; any other attempt is refused before a packet
    is sent and recorded in the returned list."""
    attempts = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def allowed(address):
        host = address[0] if isinstance(address, tuple) else address
        try:
            return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
        except ValueError:
            return False

    def connect(self, address):
        if not allowed(address):
            attempts.append(address[0])
            raise ConnectionRefusedError(f"tests connect to loopback only, not {address[0]}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if not allowed(address):
            attempts.append(address[0])
            return 111  # ECONNREFUSED
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return attempts
