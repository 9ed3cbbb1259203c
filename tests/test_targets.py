"""Target profiles: the shipped ones load, and every mistake in a user's profile names its key."""

import pytest
import yaml

from edgeprune.errors import UserError
from edgeprune.targets import MeasureSpec, Profile, list_profiles, load_profile


def _shipped_dict() -> dict:
    data = load_profile("x86-cpu").to_dict()
    del data["source"]
    return data


def _write(tmp_path, data, name="custom.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_shipped_x86_cpu_loads_with_its_values():
    p = load_profile("x86-cpu")
    assert isinstance(p, Profile) and isinstance(p.measure, MeasureSpec)
    assert (p.name, p.backend, p.provider) == ("x86-cpu", "onnxruntime", "CPUExecutionProvider")
    assert (p.intra_op_threads, p.execution_mode, p.channel_step) == (1, "sequential", 16)
    assert isinstance(p.measure.max_seconds, float)
    assert p.source.endswith("x86-cpu.yaml")
    assert p.to_dict()["measure"]["min_runs"] == p.measure.min_runs


def test_list_profiles_is_sorted_and_contains_x86():
    names = [p.name for p in list_profiles()]
    assert "x86-cpu" in names and names == sorted(names)


def test_profile_by_path_roundtrips(tmp_path):
    path = _write(tmp_path, _shipped_dict())
    p = load_profile(path)
    assert p.source == path
    assert p.to_dict() == {**load_profile("x86-cpu").to_dict(), "source": path}


def test_unknown_target_lists_choices():
    with pytest.raises(UserError) as e:
        load_profile("foo")
    assert str(e.value) == "unknown target 'foo'; choose one of: x86-cpu (run `edgeprune targets`)"


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_profile(str(tmp_path / "nope.yaml"))


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, {**_shipped_dict(), "intra_op_thread": 2})
    with pytest.raises(UserError) as e:
        load_profile(path)
    assert "'intra_op_thread'" in str(e.value) and path in str(e.value)


def test_unknown_nested_key_is_named_with_its_section(tmp_path):
    data = _shipped_dict()
    data["measure"]["warmup"] = 3
    with pytest.raises(UserError, match=r"'measure\.warmup'"):
        load_profile(_write(tmp_path, data))


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("intra_op_threads", "one", "an integer"),
        ("intra_op_threads", True, "an integer"),  # YAML `yes` is a bool, not 1
        ("opset", 17.0, "an integer"),
        ("provider", 3, "a string"),
        ("measure", [1, 2], "mapping"),
    ],
)
def test_wrong_type_names_key_and_expected_type(tmp_path, key, value, expected):
    with pytest.raises(UserError) as e:
        load_profile(_write(tmp_path, {**_shipped_dict(), key: value}))
    assert f"'{key}'" in str(e.value) and expected in str(e.value)


def test_int_accepted_where_float_expected(tmp_path):
    data = _shipped_dict()
    data["measure"]["max_seconds"] = 2
    assert load_profile(_write(tmp_path, data)).measure.max_seconds == 2.0


def test_missing_key_is_named(tmp_path):
    data = _shipped_dict()
    del data["measure"]["cv_threshold"]
    with pytest.raises(UserError, match=r"lacks the key 'measure\.cv_threshold'"):
        load_profile(_write(tmp_path, data))


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("execution_mode", "async", "choose one of: sequential, parallel"),
        ("batch", 0, "below its minimum 1"),
        ("intra_op_threads", -1, "below its minimum 0"),
    ],
)
def test_out_of_range_values(tmp_path, key, value, match):
    with pytest.raises(UserError, match=match):
        load_profile(_write(tmp_path, {**_shipped_dict(), key: value}))


def test_max_runs_below_min_runs(tmp_path):
    data = _shipped_dict()
    data["measure"]["max_runs"] = 5
    with pytest.raises(UserError, match="max_runs"):
        load_profile(_write(tmp_path, data))


def test_invalid_yaml_names_the_line(tmp_path):
    path = _write(tmp_path, "name: x\nbackend: [onnxruntime\nprovider: CPU\n")
    with pytest.raises(UserError, match=r"not valid YAML at line \d+"):
        load_profile(path)


def test_non_mapping_yaml(tmp_path):
    with pytest.raises(UserError, match="top level must be a mapping"):
        load_profile(_write(tmp_path, "- just\n- a list\n"))
