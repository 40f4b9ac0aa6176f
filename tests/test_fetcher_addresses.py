"""Address classification, numeric-host parsing, allow-list matching, robots parsing, limits.

Pure unit tests: addresses outside 127.0.0.0/8 and ::1 are only classified here, no socket is
opened (the fake resolvers below never touch the network).
"""

from __future__ import annotations

import ipaddress
import random
import threading
import time

import pytest

from ie_env.engines.base import parse_retry_after
from ie_env.fetcher.addresses import AddressGuard, classify, parse_ip_host, parse_loose_ipv4
from ie_env.fetcher.config import FetchConfig, FetchError, Reason
from ie_env.fetcher.limits import HostLimiter, backoff_delay
from ie_env.fetcher.robots import blocked_by_robots, parse_x_robots
from ie_env.fetcher.transport import host_header, split_target


@pytest.mark.parametrize("ip,kind", [
    ("10.0.0.1", "private"), ("10.255.255.255", "private"), ("172.16.0.1", "private"),
    ("172.31.255.254", "private"), ("192.168.1.10", "private"), ("169.254.169.254", "link_local"),
    ("127.0.0.1", "loopback"), ("127.0.0.2", "loopback"), ("127.255.255.254", "loopback"),
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
    ("100.64.0.1", "shared"), ("::1", "loopback"), ("::", "unspecified"), ("fe80::1", "link_local"),
    ("fc00::1", "private"), ("fd12:3456::1", "private"), ("ff02::1", "multicast"),
    ("fec0::1", "site_local"),
    # IPv4 wrapped in IPv6 is judged as the IPv4 address inside
    ("::ffff:10.1.2.3", "private"), ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "link_local"), ("64:ff9b::a00:1", "private"),
    ("2002:7f00:1::", "loopback"), ("2002:c0a8:101::", "private"),
])
def test_classify_blocks_non_public_ranges(ip, kind):
    assert classify(ip) == kind


@pytest.mark.parametrize("ip", ["192.0.2.1", "198.51.100.7", "203.0.113.9", "198.18.0.1",
                                "240.0.0.1", "255.255.255.255", "2001:db8::1"])
def test_classify_blocks_documentation_benchmark_and_reserved(ip):
    assert classify(ip) is not None


def test_classify_agrees_with_the_global_unicast_definition():
    # A seeded property check instead of naming public addresses: an address is let through
    # exactly when the standard library calls it global and it is not multicast.
    rng = random.Random(7)
    passed = 0
    for _ in range(20_000):
        ip = ipaddress.IPv4Address(rng.getrandbits(32))
        expected_ok = ip.is_global and not ip.is_multicast
        assert (classify(ip) is None) == expected_ok, ip
        passed += expected_ok
    assert 0.5 * 20_000 < passed < 20_000  # both outcomes were exercised


@pytest.mark.parametrize("host,ip", [
    ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("0x7f.1", "127.0.0.1"),
    ("017700000001", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"), ("127.0.0.1.", "127.0.0.1"), ("0", "0.0.0.0"),
    ("167772161", "10.0.0.1"), ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("[::1]", "::1"), ("::ffff:127.0.0.1", "::ffff:7f00:1"),
])
def test_numeric_host_spellings_are_parsed_as_addresses(host, ip):
    assert parse_ip_host(host) == ipaddress.ip_address(ip)


@pytest.mark.parametrize("host", ["example.test", "localhost", "a1.b2", "0x.test"])
def test_names_are_not_numeric(host):
    assert parse_ip_host(host) is None


@pytest.mark.parametrize("host", ["256.1.1.1", "1.2.3.4.5", "08.0.0.1", "0x100.1.1.1", "4294967296"])
def test_invalid_numeric_hosts_raise(host):
    with pytest.raises(ValueError):
        parse_loose_ipv4(host)


class FakeResolver:
    def __init__(self, table):
        self.table = table
        self.calls = []

    def __call__(self, host, port):
        self.calls.append(host)
        if host not in self.table:
            raise OSError("name not known")
        return self.table[host]


def test_guard_rejects_names_resolving_to_private_addresses_without_connecting():
    res = FakeResolver({"intranet.test": ["10.0.0.7"], "metadata.test": ["169.254.169.254"],
                        "mixed.test": ["10.9.8.7", "192.168.0.2"], "v6.test": ["fd00::5"]})
    guard = AddressGuard([], resolver=res)
    for host in ("intranet.test", "metadata.test", "mixed.test", "v6.test"):
        with pytest.raises(FetchError) as e:
            guard.resolve(host, 80)
        assert e.value.reason == Reason.PRIVATE_ADDRESS
    with pytest.raises(FetchError) as e:
        guard.resolve("missing.test", 80)
    assert e.value.reason == Reason.DNS_ERROR


def test_numeric_hosts_never_reach_the_resolver():
    res = FakeResolver({})
    guard = AddressGuard([], resolver=res)
    for host in ("2130706433", "0x7f.1", "127.1", "10.0.0.1", "::1"):
        with pytest.raises(FetchError) as e:
            guard.resolve(host, 80)
        assert e.value.reason == Reason.PRIVATE_ADDRESS
    with pytest.raises(FetchError) as e:
        guard.resolve("999.1.1.1", 80)
    assert e.value.reason == Reason.BAD_URL
    assert res.calls == []


def test_allow_list_matches_literal_host_and_port_only():
    guard = AddressGuard(["127.0.0.1:8080", "[::1]:9000", "LocalHost"], resolver=FakeResolver(
        {"localhost": ["127.0.0.1"]}))
    assert guard.resolve("127.0.0.1", 8080).ip == "127.0.0.1"
    assert guard.resolve("::1", 9000).ip == "::1"
    assert guard.resolve("localhost", 1234).ip == "127.0.0.1"  # no port in the entry: any port
    for host, port in [("127.0.0.1", 8081), ("2130706433", 8080), ("127.1", 8080),
                       ("127.0.0.1.", 8080), ("::ffff:127.0.0.1", 8080), ("::1", 9001)]:
        with pytest.raises(FetchError) as e:
            guard.resolve(host, port)
        assert e.value.reason == Reason.PRIVATE_ADDRESS, (host, port)


def test_allowed_name_resolves_once_to_its_first_address():
    res = FakeResolver({"images.test": ["127.0.0.1", "127.0.0.3"]})
    target = AddressGuard(["images.test:443"], resolver=res).resolve("images.test", 443)
    assert (target.host, target.port, target.ip) == ("images.test", 443, "127.0.0.1")
    assert res.calls == ["images.test"]


@pytest.mark.parametrize("url,reason", [
    ("file:///etc/passwd", Reason.BAD_SCHEME), ("ftp://127.0.0.1/x", Reason.BAD_SCHEME),
    ("gopher://127.0.0.1/", Reason.BAD_SCHEME), ("http:///nohost", Reason.BAD_URL),
    ("http://127.0.0.1:99999/", Reason.BAD_URL), ("javascript:alert(1)", Reason.BAD_SCHEME),
])
def test_split_target_rejects_bad_urls(url, reason):
    with pytest.raises(FetchError) as e:
        split_target(url)
    assert e.value.reason == reason


def test_split_target_and_host_header():
    assert split_target("HTTP://Example.TEST/x") == ("http", "example.test", 80)
    assert split_target("https://[::1]:8443/a?b") == ("https", "::1", 8443)
    assert host_header("::1", 8443, "https") == "[::1]:8443"
    assert host_header("a.test", 80, "http") == "a.test"


def test_x_robots_tag_parsing_and_scoping():
    assert parse_x_robots(["googlebot: noindex, nofollow", "noai"]) == [
        ("googlebot", "noindex"), ("googlebot", "nofollow"), (None, "noai")]
    tok, bad = "ie-env", ["noai", "noimageai"]
    assert blocked_by_robots(["noai"], tok, bad) == "noai"
    assert blocked_by_robots(["NoImageAI"], tok, bad) == "noimageai"
    assert blocked_by_robots(["ie-env: noimageai"], tok, bad) == "noimageai"
    assert blocked_by_robots(["*: noai"], tok, bad) == "noai"
    assert blocked_by_robots(["otherbot: noai, noimageai"], tok, bad) is None
    assert blocked_by_robots(["otherbot: noindex, ie-env: noai"], tok, bad) == "noai"
    assert blocked_by_robots(["unavailable_after: 25 Jun 2010 15:00:00 PST, noai"], tok, bad) == "noai"
    assert blocked_by_robots(["noindex, nofollow", "max-image-preview: large"], tok, bad) is None


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_backoff_grows_exponentially_and_is_capped():
    rng = random.Random(0)
    d = [backoff_delay(a, 0.5, 4.0, rng) for a in range(6)]
    assert 0.25 <= d[0] <= 0.5 and 0.5 <= d[1] <= 1.0 and 1.0 <= d[2] <= 2.0
    assert all(x <= 4.0 for x in d) and d[5] >= 2.0


def test_host_limiter_caps_concurrency_per_host():
    lim = HostLimiter(per_host_concurrency=2, per_host_rate=0)
    active, peak, lock = {"a": 0, "b": 0}, {"a": 0, "b": 0}, threading.Lock()

    def work(host):
        with lim.slot(host, time.monotonic() + 10):
            with lock:
                active[host] += 1
                peak[host] = max(peak[host], active[host])
            time.sleep(0.02)
            with lock:
                active[host] -= 1

    threads = [threading.Thread(target=work, args=(h,)) for h in "ab" * 6]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == {"a": 2, "b": 2}


def test_host_limiter_spaces_requests_and_times_out():
    lim = HostLimiter(per_host_concurrency=8, per_host_rate=20.0)  # 50 ms apart
    starts = []
    for _ in range(4):
        with lim.slot("h", time.monotonic() + 5):
            starts.append(time.monotonic())
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.045
    lim.cooldown("h", 30)
    with pytest.raises(FetchError) as e:
        with lim.slot("h", time.monotonic() + 0.05):
            pass
    assert e.value.reason == Reason.TIMEOUT


def test_fetch_config_validation():
    with pytest.raises(ValueError):
        FetchConfig(max_redirects=50).validate()
    with pytest.raises(ValueError):
        FetchConfig(formats=["JPEG", "EPS"]).validate()
    cfg = FetchConfig(formats=["jpeg", "png"])
    cfg.validate()
    assert cfg.formats == ["JPEG", "PNG"]
