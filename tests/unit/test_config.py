"""Node configuration: flags > HIVEMESH_* environment > YAML file > defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
import pytest
import yaml

from node.config import (
    DEFAULT_CONFIG_YAML,
    ControlConfig,
    HandoffConfig,
    NetworkConfig,
    NodeConfig,
    load_config,
    read_config_file,
)
from node.errors import ConfigError, NodeError
from protocols.limits import FrameLimits

BOOT_A = "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWAaaa"
BOOT_B = "/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWBbbb"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_a_file_or_environment() -> None:
    config = load_config(config_file=None, environ={})
    assert config == NodeConfig()
    assert config.tools == "all"
    assert config.network.max_frame_size == 4 * 1024 * 1024
    assert config.network.request_timeout_s == 30.0
    assert config.handoff.heartbeat_interval_s == 1.0
    assert config.handoff.heartbeat_timeout_s == 10.0
    assert config.handoff.allow == "any"
    assert config.discovery.card_ttl_s == 30.0


def test_a_missing_config_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(config_file=tmp_path / "absent.yaml", environ={}) == NodeConfig()


def test_yaml_overrides_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "tools: text\nray:\n  num_cpus: 3\nnetwork:\n  dial_timeout_s: 2\n")
    config = load_config(config_file=path, environ={})
    assert config.tools == "text"
    assert config.ray.num_cpus == 3
    assert config.network.dial_timeout_s == 2.0
    assert config.network.request_timeout_s == 30.0  # untouched siblings keep defaults


def test_environment_overrides_yaml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"tools: text\nray:\n  num_cpus: 3\nnetwork:\n  bootstrap: ['{BOOT_A}']\n",
    )
    environ = {
        "HIVEMESH_TOOLS": "text,math",
        "HIVEMESH_RAY__NUM_CPUS": "2",
        "HIVEMESH_NETWORK__BOOTSTRAP": f"{BOOT_A}, {BOOT_B}",
    }
    config = load_config(config_file=path, environ=environ)
    assert config.tools == "text,math"
    assert config.ray.num_cpus == 2
    assert config.network.bootstrap == [BOOT_A, BOOT_B]


def test_flags_override_environment_and_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "tools: text\nray:\n  num_cpus: 3\n")
    environ = {"HIVEMESH_TOOLS": "math", "HIVEMESH_RAY__NUM_CPUS": "2"}
    flags = {"tools": "util", "ray": {"num_cpus": 5}}
    config = load_config(config_file=path, flags=flags, environ=environ)
    assert config.tools == "util"
    assert config.ray.num_cpus == 5


def test_nested_layers_merge_field_by_field(tmp_path: Path) -> None:
    path = write(tmp_path, "network:\n  dial_timeout_s: 2\n  request_timeout_s: 7\n")
    environ = {"HIVEMESH_NETWORK__REQUEST_TIMEOUT_S": "8"}
    flags = {"network": {"listen": ["/ip4/0.0.0.0/tcp/4001"]}}
    config = load_config(config_file=path, flags=flags, environ=environ)
    assert config.network.dial_timeout_s == 2.0  # from YAML
    assert config.network.request_timeout_s == 8.0  # from the environment
    assert config.network.listen == ["/ip4/0.0.0.0/tcp/4001"]  # from flags


def test_environment_values_may_be_json(tmp_path: Path) -> None:
    environ = {
        "HIVEMESH_NETWORK__BOOTSTRAP": f'["{BOOT_A}"]',
        "HIVEMESH_CONTROL__ALLOW_ANY_CLIENT": "true",
        "HIVEMESH_HANDOFF__ALLOW": '["12D3KooWAaaa", "12D3KooWBbbb"]',
        "HIVEMESH_RAY__ADDRESS": "auto",
    }
    config = load_config(config_file=None, environ=environ)
    assert config.network.bootstrap == [BOOT_A]
    assert config.control.allow_any_client is True
    assert config.handoff.allow == ["12D3KooWAaaa", "12D3KooWBbbb"]
    assert config.ray.address == "auto"


def test_hivemesh_home_is_not_a_config_field() -> None:
    assert load_config(config_file=None, environ={"HIVEMESH_HOME": "/tmp/x"}) == NodeConfig()


def test_unrelated_environment_is_ignored() -> None:
    environ = {"PATH": "/bin", "RAY_ADDRESS": "auto", "HIVEMESH_RAY__NUM_CPUS": "1"}
    assert load_config(config_file=None, environ=environ).ray.address is None


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "tools: all\nlog_level: INFO\n  bad: indent\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path, environ={})
    assert str(info.value) == f"{path}:3: invalid YAML: mapping values are not allowed here"


def test_invalid_yaml_flow_collection_points_near_the_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "tools: all\nnetwork:\n  listen: [unclosed\n  bootstrap: []\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:4: invalid YAML: "):
        load_config(config_file=path, environ={})


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- tools\n- all\n")
    with pytest.raises(ConfigError, match="must be a mapping, not list"):
        load_config(config_file=path, environ={})


def test_empty_yaml_means_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing here\n")
    assert load_config(config_file=path, environ={}) == NodeConfig()


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_config_file(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour: blue\n", "colour"),
        ("network:\n  listen_on: []\n", "network.listen_on"),
        ("handoff:\n  heartbeat_s: 1\n", "handoff.heartbeat_s"),
    ],
)
def test_unknown_key_is_named(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path, environ={})
    assert key in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_nested_environment_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"network\.colour"):
        load_config(config_file=None, environ={"HIVEMESH_NETWORK__COLOUR": "blue"})


@pytest.mark.parametrize(
    ("flags", "where"),
    [
        ({"network": {"max_frame_size": 100}}, "network.max_frame_size"),
        ({"network": {"max_frame_depth": 0}}, "network.max_frame_depth"),
        ({"network": {"max_number_digits": 10}}, "network.max_number_digits"),
        ({"network": {"max_frame_containers": 4, "max_frame_depth": 8}}, "max_frame_containers"),
        ({"network": {"dial_timeout_s": 0}}, "network.dial_timeout_s"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"journal": {"synchronous": "OFF"}}, "journal.synchronous"),
        ({"ray": {"num_cpus": 0}}, "ray.num_cpus"),
    ],
)
def test_invalid_values_are_named(flags: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        load_config(config_file=None, flags=flags, environ={})


def test_config_error_is_a_node_error() -> None:
    assert issubclass(ConfigError, NodeError)


def test_default_config_yaml_validates(tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_CONFIG_YAML)
    assert isinstance(data, dict)
    config = NodeConfig.model_validate(data)
    path = write(tmp_path, DEFAULT_CONFIG_YAML)
    assert load_config(config_file=path, environ={}) == config


def test_default_config_yaml_states_the_defaults() -> None:
    assert NodeConfig.model_validate(yaml.safe_load(DEFAULT_CONFIG_YAML)) == NodeConfig()


def test_list_fields_accept_comma_separated_strings() -> None:
    assert NetworkConfig(listen="/ip4/1.1.1.1/tcp/1, /ip4/2.2.2.2/tcp/2").listen == [  # type: ignore[arg-type]
        "/ip4/1.1.1.1/tcp/1",
        "/ip4/2.2.2.2/tcp/2",
    ]
    assert ControlConfig(allowed_clients="a,b,").allowed_clients == ["a", "b"]  # type: ignore[arg-type]
    assert HandoffConfig(allow="a, b").allow == ["a", "b"]  # type: ignore[arg-type]
    assert HandoffConfig(allow="any").allow == "any"


def test_tools_given_as_a_list_become_a_selection_string() -> None:
    config = load_config(config_file=None, flags={"tools": ["text", "math"]}, environ={})
    assert config.tools == "text,math"


def test_config_is_frozen() -> None:
    config = NodeConfig()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.tools = "none"


def test_network_config_gives_the_frame_limits() -> None:
    limits = NetworkConfig(
        max_frame_size=2048,
        max_frame_depth=8,
        max_frame_members=50,
        max_frame_containers=100,
        max_number_digits=30,
    ).frame_limits()
    assert limits == FrameLimits(
        max_frame_size=2048, max_depth=8, max_members=50, max_containers=100, max_number_digits=30
    )
    assert NetworkConfig().frame_limits() == FrameLimits()


def test_the_workflows_section_bounds_resumes_and_step_products() -> None:
    config = load_config(
        config_file=None,
        environ={
            "HIVEMESH_WORKFLOWS__MAX_RESUME_ATTEMPTS": "5",
            "HIVEMESH_WORKFLOWS__MAX_STEP_OUTPUT_BYTES": "1048576",
        },
    )
    assert config.workflows.max_resume_attempts == 5
    assert config.workflows.resume_stall_s == 60
    limits = config.workflows.step_limits()
    assert (limits.max_output_bytes, limits.max_error_chars, limits.max_traceback_chars) == (
        1024 * 1024,
        4096,
        16384,
    )
    assert NodeConfig().workflows.max_step_output_bytes == 8 * 1024 * 1024
    with pytest.raises(ConfigError, match=r"workflows\.max_error_chars"):
        load_config(config_file=None, flags={"workflows": {"max_error_chars": 10}}, environ={})


def test_routing_provider_wait_defaults_to_minutes_and_layers() -> None:
    assert NodeConfig().routing.provider_wait_s == 300
    config = load_config(config_file=None, environ={"HIVEMESH_ROUTING__PROVIDER_WAIT_S": "30"})
    assert config.routing.provider_wait_s == 30
    with pytest.raises(ConfigError, match=r"routing\.provider_wait_s"):
        load_config(config_file=None, flags={"routing": {"provider_wait_s": -1}}, environ={})


def test_the_old_handoff_provider_wait_key_is_moved_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "handoff:\n  provider_wait_s: 12\n")
    with caplog.at_level("WARNING", logger="node.config"):
        config = load_config(config_file=path, environ={})
    assert config.routing.provider_wait_s == 12
    assert "handoff.provider_wait_s is deprecated; use routing.provider_wait_s" in caplog.text
    # the new key wins when both are given
    both = write(tmp_path, "handoff: {provider_wait_s: 12}\nrouting: {provider_wait_s: 7}\n")
    assert load_config(config_file=both, environ={}).routing.provider_wait_s == 7
