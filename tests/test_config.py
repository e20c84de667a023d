"""Unit tests for :mod:`dns2dot.config`: flags > environment > YAML > defaults.

``config.load`` is always given its own ``environ`` mapping, so the tests never read
(or depend on) the real environment.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
from pathlib import Path

import pytest

from dns2dot import config
from dns2dot.config import Config, ConfigError, ListenAddress, parse_listen, parse_upstream
from dns2dot.upstream.spec import UpstreamSpec

PIN_A = base64.b64encode(bytes(range(32))).decode()
PIN_B = base64.b64encode(b"\xab" * 32).decode()
CLOUDFLARE = (
    UpstreamSpec("1.1.1.1", 853, "cloudflare-dns.com"),
    UpstreamSpec("1.0.0.1", 853, "cloudflare-dns.com"),
)


def load(*argv: str, env: dict[str, str] | None = None) -> Config:
    return config.load(list(argv), {} if env is None else env)


def config_error(*argv: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(*argv, env=env)
    message = str(info.value)
    assert "\n" not in message, "one-line message (exit code 2)"
    return message


def yaml_file(tmp_path: Path, text: str, name: str = "dns2dot.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    cfg = load()
    assert cfg.listen == (ListenAddress("127.0.0.1", 53),)
    assert cfg.upstreams == CLOUDFLARE
    assert cfg.cafile is None
    assert cfg.mode == "pool"
    assert cfg.timeout == 3.0
    assert cfg.verbose is False
    assert cfg.config is None
    assert cfg.strategy == "failover"


def test_config_defaults_are_the_option_tables() -> None:
    """Every default is written once, in the option table: Config() is what loading
    nothing gives, and each Config field takes its default from its option."""
    assert Config() == load()
    fields = {f.name: f.default for f in dataclasses.fields(Config)}
    for option in config.OPTIONS:
        if option.name == "pin":
            continue  # merged into the upstreams
        name = "upstreams" if option.name == "upstream" else option.dest
        assert fields[name] == option.default, option.name
    assert set(fields) == {
        "upstreams" if o.name == "upstream" else o.dest for o in config.OPTIONS if o.name != "pin"
    }


def test_help_renders_each_default_from_the_table() -> None:
    """The help text is not a second copy of the defaults: none is written by hand, and
    each one the table holds is shown as the table says."""
    text = " ".join(config.build_parser().format_help().split())
    for option in config.OPTIONS:
        assert "default" not in option.help, option.name
        assert " ".join(option.help_text.split()) in text
    assert "--timeout SECONDS seconds before a query is answered SERVFAIL (default 3)" in text
    assert "(default 127.0.0.1:53)" in text
    assert "(default loopback and private ranges)" in text
    assert "--ratelimit QPS UDP queries per second per client /24 or /56; beyond it, TC=1 " in text
    assert "(default 1.1.1.1:853#cloudflare-dns.com, 1.0.0.1:853#cloudflare-dns.com)" in text


def test_default_listen_is_loopback() -> None:
    """DESIGN "safe defaults": listens on loopback unless told otherwise."""
    for address in load().listen:
        assert ipaddress.ip_address(address.host).is_loopback


def test_default_allow_is_local_networks() -> None:
    allow = load().allow
    assert allow
    assert any(ipaddress.ip_address("127.0.0.1") in net for net in allow)
    assert not any(ipaddress.ip_address("8.8.8.8") in net for net in allow)


def test_load_reads_os_environ_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DNS2DOT_MODE", "pipe")
    assert config.load([]).mode == "pipe"


# --------------------------------------------------------------------------- listen


def test_listen_repeatable() -> None:
    cfg = load("-l", "127.0.0.1:5353", "--listen", "[::1]:5353", "-l", "0.0.0.0:53")
    assert cfg.listen == (
        ListenAddress("127.0.0.1", 5353),
        ListenAddress("::1", 5353),
        ListenAddress("0.0.0.0", 53),
    )


def test_listen_duplicates_collapse() -> None:
    cfg = load("-l", "127.0.0.1:5353", "-l", "127.0.0.1:5353")
    assert cfg.listen == (ListenAddress("127.0.0.1", 5353),)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:5353", "127.0.0.1", 5353),
        ("127.0.0.1", "127.0.0.1", 53),
        ("[::1]:5353", "::1", 5353),
        ("[::1]", "::1", 53),
        ("::1", "::1", 53),
        ("[2001:DB8:0::1]:53", "2001:db8::1", 53),
        (" 10.0.0.1:0 ", "10.0.0.1", 0),
        ("10.0.0.1:65535", "10.0.0.1", 65535),
    ],
)
def test_parse_listen_forms(text: str, host: str, port: int) -> None:
    assert parse_listen(text) == ListenAddress(host, port)


def test_listen_str() -> None:
    assert str(ListenAddress("::1", 53)) == "[::1]:53"
    assert str(ListenAddress("127.0.0.1", 53)) == "127.0.0.1:53"


@pytest.mark.parametrize(
    "text",
    [
        "localhost:53",
        "127.0.0.1:abc",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:",
        "[::1",
        "[::1]53",
        "[::1]:x",
        "256.0.0.1:53",
        "",
    ],
)
def test_bad_listen(text: str) -> None:
    assert "--listen" in config_error("-l", text)


# --------------------------------------------------------------------------- upstream


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("9.9.9.9", UpstreamSpec("9.9.9.9", 853, None)),
        ("9.9.9.9:8853", UpstreamSpec("9.9.9.9", 8853, None)),
        ("9.9.9.9#dns.quad9.net", UpstreamSpec("9.9.9.9", 853, "dns.quad9.net")),
        ("9.9.9.9:853#DNS.Quad9.NET.", UpstreamSpec("9.9.9.9", 853, "dns.quad9.net")),
        ("2620:fe::fe", UpstreamSpec("2620:fe::fe", 853, None)),
        ("2620:00fe:0::00fe", UpstreamSpec("2620:fe::fe", 853, None)),
        ("[2620:fe::fe]", UpstreamSpec("2620:fe::fe", 853, None)),
        ("[2620:fe::fe]:8853", UpstreamSpec("2620:fe::fe", 8853, None)),
        ("[2620:fe::fe]:853#dns.quad9.net", UpstreamSpec("2620:fe::fe", 853, "dns.quad9.net")),
        ("2620:fe::fe#dns.quad9.net", UpstreamSpec("2620:fe::fe", 853, "dns.quad9.net")),
    ],
)
def test_parse_upstream_forms(text: str, spec: UpstreamSpec) -> None:
    assert parse_upstream(text) == spec


def test_upstream_verify_name_and_str() -> None:
    named = parse_upstream("[2620:fe::fe]:853#dns.quad9.net")
    assert named.verify_name == "dns.quad9.net"
    assert str(named) == "[2620:fe::fe]:853#dns.quad9.net"
    assert parse_upstream(str(named)) == named
    bare = parse_upstream("9.9.9.9")
    assert bare.verify_name == "9.9.9.9", "without #NAME the certificate must match the IP"
    assert str(bare) == "9.9.9.9:853"


def test_upstream_repeatable_in_order() -> None:
    cfg = load("-u", "9.9.9.9#dns.quad9.net", "--upstream", "[2620:fe::fe]", "-u", "8.8.8.8")
    assert [u.host for u in cfg.upstreams] == ["9.9.9.9", "2620:fe::fe", "8.8.8.8"]
    assert cfg.upstreams[0].name == "dns.quad9.net"
    assert cfg.upstreams[1].port == 853


@pytest.mark.parametrize(
    "text",
    [
        "dns.quad9.net",
        "9.9.9.9:99999",
        "9.9.9.9:",
        "9.9.9.9:dot",
        "[2620:fe::fe",
        "[2620:fe::fe]853",
        "9.9.9.9#bad name",
        "9.9.9.9#a..b",
        "9.9.9.9#" + "a" * 64 + ".com",
        "9.9.9.9#" + ("a" * 60 + ".") * 5,
    ],
)
def test_bad_upstream(text: str) -> None:
    assert "--upstream" in config_error("-u", text)


# --------------------------------------------------------------------------- other flags


def test_mode_pipe() -> None:
    assert load("--mode", "pipe").mode == "pipe"


def test_bad_mode() -> None:
    message = config_error("--mode", "socat")
    assert "--mode" in message
    assert "socat" in message


def test_cafile_existing(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    path.write_text("not checked here\n")
    assert load("--cafile", str(path)).cafile == str(path)


def test_missing_cafile(tmp_path: Path) -> None:
    message = config_error("--cafile", str(tmp_path / "nope.pem"))
    assert "--cafile" in message


def test_cafile_directory_is_not_a_file(tmp_path: Path) -> None:
    assert "--cafile" in config_error("--cafile", str(tmp_path))


def test_timeout_float() -> None:
    assert load("--timeout", "1.5").timeout == 1.5


@pytest.mark.parametrize("value", ["0", "-1", "-0.5", "abc", "", "1s"])
def test_non_positive_timeout(value: str) -> None:
    assert "--timeout" in config_error("--timeout", value)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
@pytest.mark.parametrize("flag", ["--timeout", "--idle-timeout", "--ratelimit"])
def test_non_finite_numbers_rejected(flag: str, value: str) -> None:
    """NaN is not a positive number: ``nan <= 0`` is False, so a bare ``<= 0`` check
    lets it through, and a NaN deadline compares false with every clock reading (every
    query would be timed out by the first sweep). Infinity never expires at all."""
    assert flag in config_error(flag, value)


@pytest.mark.parametrize(
    "flag",
    [
        "--idle-timeout",
        "--max-tcp-clients",
        "--max-inflight-per-client",
        "--workers",
        "--max-inflight",
        "--upstream-idle-timeout",
        "--max-queries-per-connection",
        "--ratelimit",
    ],
)
def test_other_positive_numbers(flag: str) -> None:
    assert flag in config_error(flag, "0")
    assert flag in config_error(flag, "-3")


@pytest.mark.parametrize("flag", ["--max-tcp-clients", "--workers", "--max-inflight"])
def test_integer_options_reject_fractions(flag: str) -> None:
    assert flag in config_error(flag, "1.5")


@pytest.mark.parametrize("flag", ["--cache-size", "--cache-min-ttl", "--serve-stale"])
def test_non_negative_options(flag: str) -> None:
    dest = flag[2:].replace("-", "_")
    assert getattr(load(flag, "0"), dest) == 0
    assert getattr(load(flag, "17"), dest) == 17
    assert flag in config_error(flag, "-1")
    assert flag in config_error(flag, "1.5")


@pytest.mark.parametrize("flag", ["--no-padding", "--keep-client-subnet"])
def test_switches(flag: str, tmp_path: Path) -> None:
    dest = flag[2:].replace("-", "_")
    env_name = "DNS2DOT_" + dest.upper()
    assert getattr(load(), dest) is False
    assert getattr(load(flag), dest) is True
    assert getattr(load(env={env_name: "yes"}), dest) is True
    assert getattr(load("-c", yaml_file(tmp_path, f"{flag[2:]}: true\n")), dest) is True


def test_integer_options() -> None:
    cfg = load("--max-tcp-clients", "7", "--workers", "2")
    assert cfg.max_tcp_clients == 7
    assert cfg.workers == 2


def test_verbose_flag() -> None:
    assert load("-v").verbose is True
    assert load("--verbose").verbose is True


@pytest.mark.parametrize("name", ["failover", "round-robin", "fastest", "race"])
def test_strategy(name: str) -> None:
    assert load("--strategy", name).strategy == name


def test_bad_strategy() -> None:
    assert "--strategy" in config_error("--strategy", "random")


def test_allow_repeatable() -> None:
    cfg = load("--allow", "192.0.2.0/24", "--allow", "2001:db8::/32")
    assert cfg.allow == (
        ipaddress.ip_network("192.0.2.0/24"),
        ipaddress.ip_network("2001:db8::/32"),
    )


def test_bad_allow() -> None:
    assert "--allow" in config_error("--allow", "192.0.2.0/99")


def test_global_pin_applies_to_upstreams_without_pins(tmp_path: Path) -> None:
    path = yaml_file(
        tmp_path,
        f"upstreams:\n  - address: 9.9.9.9\n    pins: ['{PIN_B}']\n  - 1.1.1.1\n",
    )
    cfg = load("-c", path, "--pin", PIN_A)
    assert cfg.upstreams[0].pins == (PIN_B,)
    assert cfg.upstreams[1].pins == (PIN_A,)


@pytest.mark.parametrize("pin", ["abc", base64.b64encode(b"x" * 31).decode(), "!!!!"])
def test_bad_pin(pin: str) -> None:
    assert "pin" in config_error("--pin", pin)


# --------------------------------------------------------------------------- argparse


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus"],
        ["-l"],
        ["--upstream"],
        ["--timeout"],
        ["extra-positional"],
        ["-x"],
    ],
)
def test_argparse_errors_are_config_errors(argv: list[str]) -> None:
    """Bad usage is exit code 2 with one line, not argparse's SystemExit and usage."""
    with pytest.raises(ConfigError):
        config.load(argv, {})


def test_argparse_errors_do_not_print(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError):
        config.load(["--bogus"], {})
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_every_option_has_an_environment_variable() -> None:
    names = {option.env for option in config.OPTIONS}
    for expected in ("DNS2DOT_LISTEN", "DNS2DOT_UPSTREAM", "DNS2DOT_CAFILE", "DNS2DOT_MODE"):
        assert expected in names
    assert "DNS2DOT_IDLE_TIMEOUT" in names
    assert "DNS2DOT_MAX_INFLIGHT_PER_CLIENT" in names


# --------------------------------------------------------------------------- environment


def test_env_listen_and_upstream_comma_separated() -> None:
    cfg = load(
        env={
            "DNS2DOT_LISTEN": "127.0.0.1:5353,[::1]:5353",
            "DNS2DOT_UPSTREAM": "9.9.9.9#dns.quad9.net, [2620:fe::fe]:853#dns.quad9.net,",
        }
    )
    assert cfg.listen == (ListenAddress("127.0.0.1", 5353), ListenAddress("::1", 5353))
    assert cfg.upstreams == (
        UpstreamSpec("9.9.9.9", 853, "dns.quad9.net"),
        UpstreamSpec("2620:fe::fe", 853, "dns.quad9.net"),
    )


def test_env_scalars() -> None:
    cfg = load(
        env={
            "DNS2DOT_MODE": "pipe",
            "DNS2DOT_TIMEOUT": "1.25",
            "DNS2DOT_IDLE_TIMEOUT": "30",
            "DNS2DOT_MAX_TCP_CLIENTS": "5",
            "DNS2DOT_STRATEGY": "race",
        }
    )
    assert cfg.mode == "pipe"
    assert cfg.timeout == 1.25
    assert cfg.idle_timeout == 30.0
    assert cfg.max_tcp_clients == 5
    assert cfg.strategy == "race"


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("true", True), ("YES", True), (" on ", True), ("0", False), ("off", False)],
)
def test_env_verbose_booleans(raw: str, value: bool) -> None:
    assert load(env={"DNS2DOT_VERBOSE": raw}).verbose is value


def test_env_bad_boolean_names_the_variable() -> None:
    assert "DNS2DOT_VERBOSE" in config_error(env={"DNS2DOT_VERBOSE": "maybe"})


def test_env_bad_values_name_the_setting(tmp_path: Path) -> None:
    assert "--mode" in config_error(env={"DNS2DOT_MODE": "fast"})
    assert "--timeout" in config_error(env={"DNS2DOT_TIMEOUT": "0"})
    assert "--upstream" in config_error(env={"DNS2DOT_UPSTREAM": "9.9.9.9,quad9"})
    assert "--cafile" in config_error(env={"DNS2DOT_CAFILE": str(tmp_path / "none")})


def test_env_unrelated_variables_ignored() -> None:
    cfg = load(env={"DNS2DOT_NOT_AN_OPTION": "x", "PATH": "/bin", "DNS2DOT": "1"})
    assert cfg.upstreams == CLOUDFLARE


def test_dnsserver_shorthand() -> None:
    """The earliest container's ``DNSSERVER=IP``: one upstream, port 853."""
    cfg = load(env={"DNSSERVER": "9.9.9.9"})
    assert cfg.upstreams == (UpstreamSpec("9.9.9.9", 853, None),)


def test_dnsserver_with_name() -> None:
    cfg = load(env={"DNSSERVER": "9.9.9.9#dns.quad9.net"})
    assert cfg.upstreams == (UpstreamSpec("9.9.9.9", 853, "dns.quad9.net"),)


def test_dnsserver_below_dns2dot_upstream() -> None:
    cfg = load(env={"DNSSERVER": "9.9.9.9", "DNS2DOT_UPSTREAM": "8.8.8.8#dns.google"})
    assert cfg.upstreams == (UpstreamSpec("8.8.8.8", 853, "dns.google"),)


def test_dnsserver_below_flags() -> None:
    cfg = load("-u", "8.8.4.4", env={"DNSSERVER": "9.9.9.9"})
    assert cfg.upstreams == (UpstreamSpec("8.8.4.4", 853, None),)


def test_dnsserver_above_yaml(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, "upstreams: ['8.8.8.8#dns.google']\n")
    cfg = load("-c", path, env={"DNSSERVER": "9.9.9.9"})
    assert cfg.upstreams == (UpstreamSpec("9.9.9.9", 853, None),)


def test_empty_dnsserver_ignored() -> None:
    assert load(env={"DNSSERVER": ""}).upstreams == CLOUDFLARE


def test_bad_dnsserver() -> None:
    assert "--upstream" in config_error(env={"DNSSERVER": "quad9"})


# --------------------------------------------------------------------------- precedence


def test_precedence_flags_over_env_over_yaml(tmp_path: Path) -> None:
    path = yaml_file(
        tmp_path,
        "timeout: 5\nmode: pipe\nupstreams: ['1.2.3.4']\nlisten: ['127.0.0.2:53']\n",
    )
    env = {"DNS2DOT_TIMEOUT": "4", "DNS2DOT_UPSTREAM": "5.6.7.8", "DNS2DOT_CONFIG": path}
    cfg = load("--timeout", "2", "-u", "9.9.9.9", env=env)
    assert cfg.timeout == 2.0
    assert cfg.upstreams == (UpstreamSpec("9.9.9.9", 853, None),), "replaced, not merged"
    assert cfg.mode == "pipe", "YAML still fills what nobody else set"
    assert cfg.listen == (ListenAddress("127.0.0.2", 53),)
    cfg = load(env=env)
    assert cfg.timeout == 4.0
    assert cfg.upstreams == (UpstreamSpec("5.6.7.8", 853, None),)
    cfg = load("-c", path)
    assert cfg.timeout == 5.0
    assert cfg.upstreams == (UpstreamSpec("1.2.3.4", 853, None),)


def test_config_flag_over_config_env(tmp_path: Path) -> None:
    flag_path = yaml_file(tmp_path, "timeout: 7\n", "flag.yaml")
    env_path = yaml_file(tmp_path, "timeout: 8\n", "env.yaml")
    cfg = load("--config", flag_path, env={"DNS2DOT_CONFIG": env_path})
    assert cfg.timeout == 7.0
    assert cfg.config == flag_path
    assert load(env={"DNS2DOT_CONFIG": env_path}).timeout == 8.0


def test_env_verbose_false_overrides_yaml_true(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, "verbose: true\n")
    assert load("-c", path).verbose is True
    assert load("-c", path, env={"DNS2DOT_VERBOSE": "0"}).verbose is False
    assert load("-c", path, "-v", env={"DNS2DOT_VERBOSE": "0"}).verbose is True


# --------------------------------------------------------------------------- YAML


def test_yaml_full(tmp_path: Path) -> None:
    cafile = tmp_path / "ca.pem"
    cafile.write_text("x")
    path = yaml_file(
        tmp_path,
        f"""
listen:
  - "127.0.0.1:5353"
  - "[::1]:5353"
upstreams:
  - address: 1.1.1.1:853
    name: cloudflare-dns.com
    pins: ["{PIN_A}"]
  - address: "[2606:4700:4700::1111]"
    name: Cloudflare-DNS.com
  - "9.9.9.9#dns.quad9.net"
cafile: {cafile}
mode: pipe
timeout: 2.5
idle-timeout: 20
max_tcp_clients: 99
verbose: true
strategy: round-robin
""",
    )
    cfg = load("-c", path)
    assert cfg.listen == (ListenAddress("127.0.0.1", 5353), ListenAddress("::1", 5353))
    assert cfg.upstreams == (
        UpstreamSpec("1.1.1.1", 853, "cloudflare-dns.com", (PIN_A,)),
        UpstreamSpec("2606:4700:4700::1111", 853, "cloudflare-dns.com"),
        UpstreamSpec("9.9.9.9", 853, "dns.quad9.net"),
    )
    assert cfg.cafile == str(cafile)
    assert cfg.mode == "pipe"
    assert cfg.timeout == 2.5
    assert cfg.idle_timeout == 20.0
    assert cfg.max_tcp_clients == 99
    assert cfg.verbose is True
    assert cfg.strategy == "round-robin"
    assert cfg.config == path


def test_yaml_single_values_for_repeatables(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, "listen: '127.0.0.1:5300'\nupstreams: 9.9.9.9\n")
    cfg = load("-c", path)
    assert cfg.listen == (ListenAddress("127.0.0.1", 5300),)
    assert cfg.upstreams == (UpstreamSpec("9.9.9.9", 853, None),)


def test_yaml_upstream_mapping_name_overrides_address_name(tmp_path: Path) -> None:
    path = yaml_file(
        tmp_path, "upstreams:\n  - address: '9.9.9.9#one.example'\n    name: two.example\n"
    )
    assert load("-c", path).upstreams[0].name == "two.example"


def test_yaml_upstream_mapping_without_name_keeps_address_name(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, "upstreams:\n  - address: '9.9.9.9:8853#one.example'\n")
    assert load("-c", path).upstreams == (UpstreamSpec("9.9.9.9", 8853, "one.example"),)


def test_yaml_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load("-c", yaml_file(tmp_path, ""))
    assert cfg.upstreams == CLOUDFLARE
    assert cfg.listen == (ListenAddress("127.0.0.1", 53),)


def test_yaml_empty_upstreams_gives_defaults(tmp_path: Path) -> None:
    assert load("-c", yaml_file(tmp_path, "upstreams: []\n")).upstreams == CLOUDFLARE


def test_yaml_unknown_key(tmp_path: Path) -> None:
    message = config_error("-c", yaml_file(tmp_path, "timeout: 2\nupstream_servers: [1.1.1.1]\n"))
    assert "upstream_servers" in message
    assert "--config" in message


def test_yaml_config_key_is_not_a_setting(tmp_path: Path) -> None:
    assert "config" in config_error("-c", yaml_file(tmp_path, "config: other.yaml\n"))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("upstreams:\n  - address: 9.9.9.9\n    port: 853\n", "port"),
        ("upstreams:\n  - name: dns.quad9.net\n", "address"),
        ("upstreams:\n  - address: 9.9.9.9\n    pins: abc\n", "pins"),
        ("upstreams:\n  - address: 9.9.9.9\n    pins: [1, 2]\n", "pins"),
        ("upstreams:\n  - address: 9.9.9.9\n    pins: ['not-a-pin']\n", "pin"),
        ("upstreams:\n  - 42\n", "upstreams"),
        ("upstreams:\n  - [9.9.9.9]\n", "upstreams"),
        ("upstreams:\n  - address: quad9\n", "--upstream"),
        ("upstreams:\n  - address: 9.9.9.9\n    name: 'bad name'\n", "name"),
        ("listen: ['localhost:53']\n", "--listen"),
        ("listen: ['127.0.0.1:70000']\n", "--listen"),
        ("mode: turbo\n", "--mode"),
        ("timeout: 0\n", "--timeout"),
        ("timeout: -2\n", "--timeout"),
        ("timeout: soon\n", "--timeout"),
        ("verbose: 'yes'\n", "verbose"),
        ("strategy: random\n", "--strategy"),
        ("- timeout: 1\n", "mapping"),
    ],
)
def test_yaml_bad_values_name_the_setting(tmp_path: Path, text: str, needle: str) -> None:
    assert needle in config_error("-c", yaml_file(tmp_path, text))


def test_yaml_missing_cafile(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, f"cafile: {tmp_path / 'missing.pem'}\n")
    assert "--cafile" in config_error("-c", path)


@pytest.mark.parametrize(
    "text",
    ["timeout: [1\n", "a: b: c\n", "upstreams:\n  - address: 1\n bad-indent: 2\n", "\t- x\n"],
)
def test_yaml_invalid(tmp_path: Path, text: str) -> None:
    message = config_error("-c", yaml_file(tmp_path, text))
    assert "--config" in message
    assert "YAML" in message


def test_yaml_missing_file(tmp_path: Path) -> None:
    message = config_error("-c", str(tmp_path / "absent.yaml"))
    assert "--config" in message
    assert "absent.yaml" in message


def test_yaml_missing_file_from_env(tmp_path: Path) -> None:
    assert "--config" in config_error(env={"DNS2DOT_CONFIG": str(tmp_path / "absent.yaml")})
