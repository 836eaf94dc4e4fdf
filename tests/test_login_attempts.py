"""Wrong logins limited per address: after MAX_FAILURES in a row an address waits LOCKOUT_S, its
password unchecked; a right login starts the count again; the log says the first and each lockout."""

import logging
import time

from edge_ad import login_attempts
from edge_ad.login_attempts import MAX_FAILURES, LoginAttempts


def test_an_address_is_refused_for_a_while_after_wrong_logins_in_a_row(monkeypatch, caplog):
    monkeypatch.setattr(login_attempts, "LOCKOUT_S", 0.6)
    attempts = LoginAttempts("output login")
    with caplog.at_level(logging.WARNING, logger="edge_ad.login_attempts"):
        for _ in range(MAX_FAILURES - 1):
            attempts.failed("10.0.7.99")
        attempts.succeeded("10.0.7.99")  # the viewer found the password: counted again from 0
        for _ in range(MAX_FAILURES - 1):
            attempts.failed("10.0.7.99")
        assert attempts.refused_for("10.0.7.99") == 0
        attempts.failed("10.0.7.99")
        assert 0 < attempts.refused_for("10.0.7.99") <= 0.6 and attempts.refused_for("10.0.7.98") == 0  # it alone
        time.sleep(0.7)
        assert attempts.refused_for("10.0.7.99") == 0
    assert caplog.text.count("output login: a wrong user or password from 10.0.7.99") == 2  # the first of each run
    assert caplog.text.count(f"output login: {MAX_FAILURES} wrong logins in a row from 10.0.7.99: refused for "
                             "1 s") == 1


def test_addresses_by_the_thousand_are_forgotten_but_those_locked_out(monkeypatch):
    monkeypatch.setattr(login_attempts, "KEPT_ADDRESSES", 100)
    attempts = LoginAttempts("output login")
    for _ in range(MAX_FAILURES):
        attempts.failed("10.0.7.99")
    for n in range(300):  # one wrong login each from many addresses (IPv6 gives an attacker plenty)
        attempts.failed(f"fd00::{n:x}")
    assert attempts.refused_for("10.0.7.99") > 0 and len(attempts._failures) <= 100


def test_refused_addresses_are_said_once_each_and_not_kept_without_end(monkeypatch, caplog):
    """--modbus-allow and --metrics-allow say a refused address once; an IPv6 network's clients,
    new addresses by the thousand, were each kept for as long as the run went on."""
    from edge_ad import allowed_clients

    monkeypatch.setattr(allowed_clients, "KEPT_ADDRESSES", 3)
    allowed = allowed_clients.AllowedClients(["10.0.7.21"], "--modbus-allow", "the PLCs", "modbus")
    with caplog.at_level(logging.WARNING, logger="edge_ad.allowed_clients"):
        assert allowed.allows("10.0.7.21")
        for address in ("fd00::1", "fd00::1", "fd00::2", "fd00::3", "fd00::4"):
            assert not allowed.allows(address)
    assert [record.getMessage().split(" refused a connection from ")[1].split(",")[0]
            for record in caplog.records] == ["fd00::1", "fd00::2", "fd00::3", "fd00::4"]
    assert len(allowed._refused) <= 3
